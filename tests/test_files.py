"""clinical_r1.files: the one place that writes files (atomically) and hashes them; clinical_r1.records: provenance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clinical_r1 import files, records
from clinical_r1.errors import ClinicalR1Error, DataError

PACKAGE = Path(files.__file__).parent


@pytest.mark.parametrize("write,payload,read", [
    (files.write_text, "héllo\n", lambda p: p.read_text(encoding="utf-8")),
    (files.write_json, {"a": [1, 2], "é": None}, lambda p: json.loads(p.read_text(encoding="utf-8"))),
    (files.write_jsonl, [{"a": 1}, {"b": "ü"}], files.read_jsonl),
    (files.write_yaml, {"a": {"b": 1}}, lambda p: files.read_yaml(p)),
])
def test_writers_round_trip_and_leave_no_temporary_file(tmp_path: Path, write, payload, read) -> None:
    out = tmp_path / "sub" / "x.out"
    write(payload, out)
    assert read(out) == payload
    assert [p.name for p in out.parent.iterdir()] == ["x.out"]
    assert out.stat().st_mode & 0o777 == 0o644


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = files.write_text("old\n", tmp_path / "x.txt")

    def rows():
        yield {"a": 1}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        files.write_jsonl(rows(), out)
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_csv_and_figure_writers_are_atomic_too(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    files.write_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"
    fig, _ = plt.subplots()
    files.save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "t.csv"]


def test_only_files_py_renames_temporary_files_over_outputs() -> None:
    """Every other module writes through clinical_r1.files: no second temp-then-rename writer."""
    offenders = [p.name for p in PACKAGE.glob("*.py") if p.name != "files.py"
                 and re.search(r"os\.replace\(|mkstemp\(", p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_a_bad_jsonl_row_names_file_and_row(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError) as e:
        files.read_jsonl(p)
    assert e.value.file == str(p) and e.value.row == 2 and str(e.value).startswith(f"{p}: row 2: invalid JSON")


def test_read_yaml_names_the_file_and_raises_the_callers_error(tmp_path: Path) -> None:
    from clinical_r1.config import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match=re.escape(f"{p}: a config must be a YAML mapping")):
        files.read_yaml(p, "config", ConfigError)
    with pytest.raises(ClinicalR1Error, match="does not exist"):
        files.read_yaml(tmp_path / "missing.yaml")


def test_sha256_json_ignores_key_order_and_keeps_the_api_cache_keys() -> None:
    assert files.sha256_json({"a": 1, "b": "é"}) == files.sha256_json({"b": "é", "a": 1})
    # the API cache's key of this request before files.py existed (api.sha256): a new form would pay twice
    assert files.sha256_json({"messages": [{"role": "user", "content": "hi"}], "params": {"n": 1}}) == (
        "694b0309f25a0dad0397614c773b3a3ce0e0cdddce5928eee41c27a4c09ca7cd")


def test_provenance_is_one_schema() -> None:
    import torch  # a training or generation process: the device record says what torch sees

    p = records.provenance()
    assert set(p) == {"commit", "dirty", "versions", "device"}
    assert re.fullmatch(r"[0-9a-f]{40}", p["commit"] or "0" * 40) and p["versions"]["python"]
    assert p["device"]["cpu_count"] >= 1 and p["device"]["cuda"] == torch.cuda.is_available()


def test_provenance_does_not_make_a_process_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, clinical_r1.records as r; p = r.provenance(); assert 'torch' not in sys.modules; "
            "print(p['device'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "cpu_count" in r.stdout, r.stderr
