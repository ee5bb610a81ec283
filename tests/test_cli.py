"""One command line (``python -m clinical_r1 <stage>``), one error base, one path from a notebook parameter to TRL."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clinical_r1 import cli
from clinical_r1.errors import ClinicalR1Error

PACKAGE = Path(cli.__file__).parent
REPO = PACKAGE.parent
STAGES = ["split", "distill", "traces", "sft", "crpo", "merge", "generate", "evaluate", "judge", "textmetrics", "pipeline",
          "figures", "verl-export", "check-config"]


def test_every_stage_is_a_subcommand() -> None:
    parser, handlers = cli.build_parser()
    assert set(STAGES) <= set(handlers)
    for name in handlers:  # every subcommand parses its --help (its argument definitions are valid)
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0


def test_no_module_has_a_command_line_of_its_own() -> None:
    """argparse and logging setup live in cli.py only; a module's ``__main__`` block is at most the alias of its
    earlier entry point (``python -m clinical_r1.pipeline`` = ``python -m clinical_r1 pipeline``)."""
    alias = re.compile(r'if __name__ == "__main__":[^\n]*\n    from clinical_r1.cli import alias\n\n    alias\("[\w-]+"\)\n$')
    own = []
    for p in PACKAGE.glob("*.py"):
        text = p.read_text(encoding="utf-8")
        if p.name in ("cli.py", "__main__.py"):
            continue
        main_block = text[text.find('if __name__ == "__main__"'):] if "__main__" in text else ""
        if re.search(r"ArgumentParser\(|logging\.basicConfig", text) or (main_block and not alias.fullmatch(main_block)):
            own.append(p.name)
    assert own == []


def test_every_package_error_derives_from_the_one_base() -> None:
    found = []
    for p in sorted(PACKAGE.glob("*.py")):
        mod = importlib.import_module(f"clinical_r1.{p.stem}") if p.stem != "__main__" else None
        for _, obj in inspect.getmembers(mod, inspect.isclass) if mod else ():
            if obj.__module__ == mod.__name__ and issubclass(obj, BaseException):
                found.append(obj)
    assert len(found) >= 15
    assert [c.__qualname__ for c in found if not issubclass(c, ClinicalR1Error)] == []


def test_an_error_names_its_file_row_and_field() -> None:
    e = ClinicalR1Error("missing field", file="a.jsonl", row=3, field="answer")
    assert str(e) == "a.jsonl: row 3: field 'answer': missing field" and (e.file, e.row, e.field) == ("a.jsonl", 3, "answer")


@pytest.mark.parametrize("argv", [
    ["evaluate", "/nonexistent/gen.jsonl", "--benchmark", "sample"],
    ["textmetrics", "/nonexistent/gen.jsonl", "--benchmark", "sample"],
    ["verl-export", "/nonexistent/rl.jsonl", "out.parquet"],
    ["judge", "--generations", "/nonexistent/g.jsonl", "--items", "/nonexistent/i.jsonl", "--config",
     "/nonexistent/j.yaml", "--cache", "c.jsonl", "--out", "o.jsonl"],
    ["distill", "--items", "/nonexistent/i.jsonl", "--config", "/nonexistent/t.yaml", "--out", "o.jsonl",
     "--cache", "c.jsonl"],
    ["sft", "--config", "/nonexistent/sft.yaml"],
    ["check-config", "/nonexistent/crpo.yaml"],
    ["summary", "/nonexistent/study"],
    ["pipeline", "--recipe", "/nonexistent/recipe.yaml"],
])
def test_a_missing_input_is_exit_2_with_one_line_naming_it(argv: list[str], tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    assert cli.main(argv) == 2
    last = caplog.records[-1]
    assert last.levelno == logging.ERROR and "/nonexistent/" in last.getMessage() and "\n" not in last.getMessage()
    assert not last.exc_info  # the traceback only with -v


@pytest.mark.parametrize("argv,says", [
    (["evaluate", "g.jsonl", "--benchmark", "medqa2"], "unknown benchmark 'medqa2'"),
    (["textmetrics", "g.jsonl", "--benchmark", "jsonl"], "benchmark 'jsonl' needs a path"),
    (["generate", "--model", "m", "--benchmark", "sample", "--out", "g.jsonl", "--n", "2"], "would be identical"),
])
def test_a_bad_option_is_exit_2_naming_it(argv: list[str], says: str, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2 and says in caplog.records[-1].getMessage()


@pytest.mark.parametrize("entry", [["clinical_r1", "verl-export"], ["clinical_r1.verl_reward"]])
def test_the_command_line_shows_the_traceback_only_with_v(entry: list[str], tmp_path: Path) -> None:
    """``python -m clinical_r1 <stage>`` and the alias kept for the old ``python -m clinical_r1.<module>``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", *entry, "/nonexistent/rl.jsonl", "out.parquet"]
    r = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "/nonexistent/" in r.stderr and "Traceback" not in r.stderr
    v = subprocess.run([*args, "-v"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert v.returncode == 2 and "Traceback" in v.stderr


# ---------------------------------------------------------------------------------------------------
# One name per setting: notebook parameter -> training-config key -> TRL
# ---------------------------------------------------------------------------------------------------


def test_notebook_parameters_reach_trl_through_one_table(caplog) -> None:
    from clinical_r1.config import PARAMETER_KEYS, load_config, parameter_overrides, trainer_args

    caplog.set_level(logging.INFO, logger="clinical_r1.config")
    over = parameter_overrides({"out_dir": Path("/tmp/study"), "train_run": "arm", "seed": 3, "preset": "grpo",
                                "k": 4, "multi_objective_aggregation": "normalize_then_sum"},
                               {"trainer.max_steps": 1})
    assert set(over) == {PARAMETER_KEYS[n] for n in ("out_dir", "train_run", "seed", "preset", "k",
                                                      "multi_objective_aggregation")} | {"trainer.max_steps"}
    cfg = load_config(REPO / "configs" / "cpu_demo_crpo.yaml", over)
    args = trainer_args(cfg)
    assert cfg["output_root"] == "/tmp/study" and cfg["run_name"] == "arm" and args.seed == 3
    assert list(args.reward_weights) == [4.0, 1.0, 0.0]  # grpo: accuracy (k), format, completion_length
    assert args.multi_objective_aggregation == "normalize_then_sum"
    replaced = [r.getMessage() for r in caplog.records if "replaced by the override" in r.getMessage()]
    assert any(m.endswith("trainer.max_steps=8 replaced by the override 1") for m in replaced), replaced
    with pytest.raises(ClinicalR1Error, match=r"\['kk'\] have no training-config key"):
        parameter_overrides({"kk": 5})


def test_k_is_the_weight_of_the_presets_first_reward() -> None:
    from clinical_r1.rewards import PRESETS, get_preset

    for name, p in PRESETS.items():
        assert "accuracy" in p.accuracy_reward, name
        assert get_preset(name).with_weights(k=3).weights[p.accuracy_reward] == 3.0


def test_the_readme_lists_the_parameter_table() -> None:
    from clinical_r1.config import PARAMETER_KEYS

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `([\w.]+)` \|", readme, flags=re.M))
    assert {k: rows.get(k) for k in PARAMETER_KEYS} == PARAMETER_KEYS
