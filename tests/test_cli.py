"""One command line (``python -m clinical_r1 <stage>``), one error base, one path from a notebook parameter to TRL."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import shutil
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
    """argparse and logging setup live in cli.py only, and no module has a ``__main__`` block: one command line,
    ``python -m clinical_r1 <stage>`` (a block importing cli would also make every module import every other)."""
    own = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("cli.py", "__main__.py")
           and re.search(r"ArgumentParser\(|logging\.basicConfig|__name__ == .__main__.", p.read_text(encoding="utf-8"))]
    assert own == []


# every registered subcommand, read from the parser: a new one is covered without editing this test
HELPS = [[]] + [[name] for name in cli.build_parser()[1]]


@pytest.mark.parametrize("stage", HELPS, ids=lambda s: " ".join(s) or "top-level")
def test_every_help_prints_its_usage(stage: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([*stage, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: python -m clinical_r1 {' '.join(stage)}".rstrip())
    assert "options:" in out


def test_the_top_level_help_runs_as_a_newcomer_types_it(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "clinical_r1", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m clinical_r1"), r.stderr
    assert all(name in r.stdout for name in cli.SUBCOMMANDS) and "95% bootstrap" in r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_help_lists_every_target_once() -> None:
    r = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M).group(1).split()
    listed = [ln.split()[1] for ln in r.stdout.splitlines()]
    assert sorted(listed) == sorted(phony) and all(len(ln.split()) > 2 for ln in r.stdout.splitlines())


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
    ["rl-effect", "/nonexistent/run", "--splits", "/nonexistent/splits"],
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
    (["rl-effect", "run", "--splits", "s", "--n", "0"], "--n 0"),
])
def test_a_bad_option_is_exit_2_naming_it(argv: list[str], says: str, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2 and says in caplog.records[-1].getMessage()


def test_the_command_line_shows_the_traceback_only_with_v(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "clinical_r1", "verl-export", "/nonexistent/rl.jsonl", "out.parquet"]
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
