"""The papermill runner and the ablation grid, on tiny notebooks executed for real (kernel python3).

    .venv/bin/pytest tests/test_pipeline.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from clinical_r1.cli import main as cli_main
from clinical_r1.grid import expand_grid, gather, run_grid
from clinical_r1.pipeline import (PipelineError, SecretParameterError, StageError, check_secrets, load_recipe,
                                  plan_recipe, run_recipe, summary_table)

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "configs" / "ablations.yaml"


# ---------------------------------------------------------------------------------------------------
# Tiny notebooks
# ---------------------------------------------------------------------------------------------------


def make_notebook(path: Path, parameters: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


COUNT = """
import json, os
from pathlib import Path
out = Path(out_dir); out.mkdir(parents=True, exist_ok=True)
with open(out / "calls.txt", "a") as f:
    f.write(Path.cwd().name + "\\n")
"""


def calls(out: Path) -> int:
    p = out / "calls.txt"
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture()
def notebooks(tmp_path: Path) -> Path:
    d = tmp_path / "notebooks"
    make_notebook(d / "01_write.ipynb", 'out_dir = ""\nvalue = 1\nseed = 0',
                  COUNT + 'Path(out / "stage01.json").write_text(json.dumps({"value": value, "seed": seed, "cwd": os.getcwd()}))')
    make_notebook(d / "02_maybe_fail.ipynb", 'out_dir = ""\nfail = False',
                  COUNT + 'if fail:\n    raise ValueError("boom from 02")\nPath(out / "stage02.json").write_text("{}")')
    make_notebook(d / "03_after.ipynb", 'out_dir = ""', COUNT + 'Path(out / "stage03.json").write_text("{}")')
    return d


def write_recipe(tmp_path: Path, name: str, stages: dict, common: dict | None = None) -> Path:
    path = tmp_path / "recipes" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": name, "out": str(tmp_path / "results" / name),
                                    "common": common if common is not None else {"out_dir": "{out}", "seed": 3},
                                    "stages": stages}))
    return path


# ---------------------------------------------------------------------------------------------------
# Recipes: run, skip, rerun, fail
# ---------------------------------------------------------------------------------------------------


def test_recipe_runs_in_order_then_skips_what_is_done(tmp_path: Path, notebooks: Path) -> None:
    recipe = write_recipe(tmp_path, "tiny", {"01": {"value": 7}, "02_maybe_fail": {"fail": False}})
    out = tmp_path / "results" / "tiny"
    status = run_recipe(recipe, notebooks_dir=notebooks, progress=False)

    got = json.loads((out / "stage01.json").read_text())
    assert got["value"] == 7 and got["seed"] == 3  # stage and common parameters reached the notebook
    assert Path(got["cwd"]) == notebooks  # notebooks run in their own folder, as in Jupyter
    assert (out / "notebooks" / "01_write.ipynb").exists() and (out / "notebooks" / "02_maybe_fail.ipynb").exists()
    saved = json.loads((out / "pipeline.json").read_text())
    assert saved == status
    for name in ("01_write", "02_maybe_fail"):
        s = saved["stages"][name]
        assert s["status"] == "done" and s["duration_s"] > 0 and s["error"] is None
    assert saved["stages"]["01_write"]["parameters"] == {"out_dir": str(out), "value": 7, "seed": 3}
    assert saved["stages"]["02_maybe_fail"]["parameters"] == {"out_dir": str(out), "fail": False}
    assert calls(out) == 2

    run_recipe(recipe, notebooks_dir=notebooks, progress=False)  # everything done: nothing executes
    assert calls(out) == 2

    run_recipe(recipe, only=["02"], force=True, notebooks_dir=notebooks, progress=False)
    assert calls(out) == 3  # only the forced stage

    text = summary_table(out)
    assert "01_write" in text and "02_maybe_fail" in text and "done" in text
    assert "no evaluation results" in text


def test_failed_stage_stops_the_run_and_names_notebook_cell_and_error(tmp_path: Path, notebooks: Path) -> None:
    recipe = write_recipe(tmp_path, "failing", {"02": {"fail": True}, "03": {}}, common={"out_dir": "{out}"})
    out = tmp_path / "results" / "failing"
    with pytest.raises(StageError) as err:
        run_recipe(recipe, notebooks_dir=notebooks, progress=False)
    msg = str(err.value)
    assert "02_maybe_fail" in msg and "ValueError" in msg and "boom from 02" in msg and "cell In [" in msg
    assert str(out / "notebooks" / "02_maybe_fail.ipynb") in msg  # where the full traceback is
    status = json.loads((out / "pipeline.json").read_text())
    assert status["stages"]["02_maybe_fail"]["status"] == "failed"
    assert "boom from 02" in status["stages"]["02_maybe_fail"]["error"]
    assert "03_after" not in status["stages"] and not (out / "stage03.json").exists()
    assert calls(out) == 1
    assert cli_main(["pipeline", "--recipe", str(recipe), "--notebooks", str(notebooks), "--no-progress"]) == 1


def test_parameters_must_be_declared_by_the_notebooks(tmp_path: Path, notebooks: Path) -> None:
    typo = write_recipe(tmp_path, "typo", {"01": {"valeu": 7}})
    with pytest.raises(PipelineError, match=r"\['valeu'\] are not declared.*01_write"):
        plan_recipe(load_recipe(typo), notebooks_dir=notebooks)
    unused = write_recipe(tmp_path, "unused", {"01": {}}, common={"out_dir": "{out}", "seeed": 1})
    with pytest.raises(PipelineError, match=r"\['seeed'\] are declared by none"):
        plan_recipe(load_recipe(unused), notebooks_dir=notebooks)
    missing = write_recipe(tmp_path, "missing", {"09": {}})
    with pytest.raises(PipelineError, match=r"stage 09: no notebook"):
        plan_recipe(load_recipe(missing), notebooks_dir=notebooks)
    untagged = notebooks / "04_untagged.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, str(untagged))
    with pytest.raises(PipelineError, match="no cell tagged 'parameters'"):
        plan_recipe(load_recipe(write_recipe(tmp_path, "untagged", {"04": {}})), notebooks_dir=notebooks)


# ---------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"api_key": "abc"},
    {"openai_api_key": None},
    {"hf_token": "x"},
    {"judge": {"password": "x"}},
    {"clientSecret": "x"},
    {"note": "sk-abcdefghijklmnopqrstuvwxyz012345"},
    {"urls": ["https://x", "hf_ABCDEFGHIJKLMNOPQRSTUVWXYZ"]},
    {"api_key_env": "sk-abcdefghijklmnopqrstuvwxyz012345"},  # a key where the variable name should be
])
def test_secrets_are_refused_without_echoing_them(params: dict) -> None:
    with pytest.raises(SecretParameterError) as err:
        check_secrets(params, "recipe x")
    for v in ("sk-abcdefghijklmnopqrstuvwxyz012345", "hf_ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        assert v not in str(err.value)


@pytest.mark.parametrize("params", [
    {"api_key_env": "DEEPSEEK_API_KEY"},
    {"judge": {"model": "deepseek-chat", "api_key_env": "DEEPSEEK_API_KEY", "max_tokens": 512}},
    {"max_new_tokens": 64, "max_completion_length": 96, "tokenizer": "x"},
    {"keys": ["a"], "sort_key": "id", "token_budget": 100, "hf_token_env": "HF_TOKEN"},
])
def test_ordinary_parameters_pass(params: dict) -> None:
    check_secrets(params, "recipe x")


def test_recipe_with_a_secret_is_refused_at_load(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, "leaky", {"02": {"teacher": {"model": "m", "api_key": "sk-live-0123456789abcdefghij"}}})
    with pytest.raises(SecretParameterError, match=r"stage 02.*'teacher.api_key' looks like a credential"):
        load_recipe(path)


# ---------------------------------------------------------------------------------------------------
# The project's recipes and grid
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "paper", "t4"])
def test_project_recipes_load(name: str) -> None:
    r = load_recipe(name)
    assert r.name == name and r.out == f"results/{name}"
    assert list(r.stages) == [f"{i:02d}" for i in range(1, 9)]
    assert r.common["out_dir"] == "{out}"
    assert r.stages["04"]["multi_objective_aggregation"] == "sum_then_normalize"


def test_project_grid_expands_to_stable_unique_runs() -> None:
    runs = expand_grid(GRID)
    assert len(runs) == 11 * 3  # 11 variants (4 of the 2x2, 3 more k, 3 reward, 1 aggregation) x 3 seeds
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)
    assert ids == [r.run_id for r in expand_grid(GRID)]  # stable
    by = {(r.variant, r.seed): r for r in runs}
    assert {v for v, _ in by} >= {"grpo", "crpo", "cold_start_grpo", "cold_start_crpo", "crpo-no-xref",
                                  "crpo-no-consistency", "normalize_then_sum"}
    two_by_two = {(r.settings["cold_start"], r.settings["preset"]) for r in runs if "2x2" in r.groups}
    assert two_by_two == {(False, "grpo"), (False, "crpo"), (True, "grpo"), (True, "crpo")}
    assert sorted({r.settings["k"] for r in runs if "k" in r.groups}) == [1, 2, 5, 20]
    assert {r.settings["multi_objective_aggregation"] for r in runs if "aggregation" in r.groups} == {
        "sum_then_normalize", "normalize_then_sum"}
    assert by[("crpo-no-xref", 1)].settings["seed"] == 1
    assert by[("crpo-no-xref", 1)].settings["model"] == "embedded:smollm2-135m-instruct"  # from base_recipe demo
    assert len(expand_grid(GRID, seeds=[0])) == 11
    assert len(expand_grid(GRID, groups=["2x2"])) == 12
    assert [r.variant for r in expand_grid(GRID, variants=["grpo"], seeds=[5])] == ["grpo"]


def test_run_ids_depend_only_on_own_overrides_and_seed(tmp_path: Path) -> None:
    data = yaml.safe_load(GRID.read_text())
    before = {(r.variant, r.seed): r.run_id for r in expand_grid(GRID)}
    data["variants"] = list(reversed(data["variants"]))
    data["variants"][0]["overrides"] = {"multi_objective_aggregation": "normalize_then_sum", "k": 5}
    edited = tmp_path / "grid.yaml"
    edited.write_text(yaml.safe_dump(data))
    after = {(r.variant, r.seed): r.run_id for r in expand_grid(edited)}
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {("normalize_then_sum", s) for s in (0, 1, 2)}

    data["variants"].append({"name": "copy", "overrides": {"preset": "grpo", "cold_start": False}})
    edited.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineError, match="same overrides"):
        expand_grid(edited)


# ---------------------------------------------------------------------------------------------------
# Running a grid for real: resume, stale runs, failures, gather
# ---------------------------------------------------------------------------------------------------

TRAIN = COUNT + """
if fail:
    raise RuntimeError(f"training diverged for k={k}")
run = out / train_run; run.mkdir(exist_ok=True)
with open(run / "metrics.jsonl", "w") as f:
    for step in (1, 2, 3):
        f.write(json.dumps({"step": step, "epoch": step / 3, "time": 1e9, "reward": k * step / 10,
                            "rewards/accuracy/mean": 0.1 * step, "rewards/consistency/mean": 0.5,
                            "kl": 0.001 * step, "completions/mean_length": 40 + step, "loss": "nan"}) + "\\n")
"""

EVAL = COUNT + """
from clinical_r1.evaluate import evaluate
items = [{"id": f"q{i}", "question": "?", "options": ["yes", "no"], "answer": "A", "subgroup": "", "source": "s"}
         for i in range(4)]
method = out / "policy"; method.mkdir(exist_ok=True)
n_right = 1 + (k > 5)
with open(method / "sample.jsonl", "w") as f:
    for i, it in enumerate(items):
        letter = "A" if i < n_right else "B"
        f.write(json.dumps({"id": it["id"], "sample": 0, "text": f"so \\\\boxed{{{letter}}}", "n_tokens": 10 + i}) + "\\n")
evaluate(method / "sample.jsonl", items, out_path=method / "sample.metrics.json", n_boot=200, dataset_name="sample")
with open(method / "sample.judge.jsonl", "w") as f:
    for i, it in enumerate(items):
        f.write(json.dumps({"id": it["id"], "model": "policy", "sample": 0, "metric": "hallucination",
                            "value": float(i % 2) * k / 10, "status": "ok"}) + "\\n")
"""


@pytest.fixture()
def grid_setup(tmp_path: Path) -> tuple[Path, Path]:
    nbs = tmp_path / "notebooks"
    make_notebook(nbs / "04_train.ipynb", 'out_dir = ""\ntrain_run = "train"\nk = 10\nseed = 0\nfail = False', TRAIN)
    make_notebook(nbs / "05_eval.ipynb", 'out_dir = ""\nk = 10', EVAL)
    grid = {
        "name": "tiny", "out": str(tmp_path / "ablations"), "notebooks": ["04", "05"],
        "base": {"out_dir": "{out}", "k": 10, "fail": False}, "seeds": [0],
        "variants": [{"name": "ref", "groups": ["k"], "overrides": {}},
                     {"name": "k{k}", "groups": ["k"], "sweep": {"k": [1]}},
                     {"name": "broken", "groups": ["other"], "overrides": {"fail": True}}],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path, nbs


def test_grid_runs_resumes_reports_failures_and_gathers(grid_setup: tuple[Path, Path], tmp_path: Path) -> None:
    grid, nbs = grid_setup
    out = tmp_path / "ablations"
    runs = {r.variant: r for r in expand_grid(grid)}
    assert set(runs) == {"ref", "k1", "broken"}

    with pytest.raises(StageError) as err:
        run_grid(grid, notebooks_dir=nbs, progress=False, keep_going=True)
    assert "broken" in str(err.value) and "training diverged for k=10" in str(err.value)
    for v in ("ref", "k1"):
        done = json.loads((out / runs[v].run_id / "done.json").read_text())
        assert done["run_id"] == runs[v].run_id and set(done["parameters"]) == {"04_train", "05_eval"}
        assert calls(out / runs[v].run_id) == 2
    assert not (out / runs["broken"].run_id / "done.json").exists()
    assert json.loads((out / runs["broken"].run_id / "pipeline.json").read_text())["stages"]["04_train"]["status"] == "failed"

    # finished runs are skipped; the broken one is retried (and fails again, alone)
    with pytest.raises(StageError, match="grid run broken"):
        run_grid(grid, notebooks_dir=nbs, progress=False)
    for v in ("ref", "k1"):
        assert calls(out / runs[v].run_id) == 2
    report = run_grid(grid, notebooks_dir=nbs, progress=False, variants=["ref", "k1"])
    assert [r["status"] for r in report] == ["done", "done"]

    df = pd.read_csv(out / "summary.csv")
    assert set(df["run_id"]) == {runs["ref"].run_id, runs["k1"].run_id}
    assert list(df.columns[:5]) == ["run_id", "variant", "seed", "groups", "k"]
    acc = df[(df["table"] == "accuracy") & (df["metric"] == "accuracy")].set_index("variant")
    assert acc.loc["ref", "value"] == pytest.approx(50.0) and acc.loc["k1", "value"] == pytest.approx(25.0)
    assert acc.loc["k1", "k"] == 1 and acc.loc["ref", "k"] == 10
    assert acc.loc["ref", "ci_low"] <= 50.0 <= acc.loc["ref", "ci_high"]
    hall = df[df["metric"] == "hallucination"].set_index("variant")
    assert hall.loc["ref", "table"] == "faithfulness" and hall.loc["ref", "value"] == pytest.approx(0.5)
    train = df[(df["table"] == "training") & (df["variant"] == "ref")].set_index("metric")["value"]
    assert train["reward"] == pytest.approx(3.0) and train["kl"] == pytest.approx(0.003)
    assert "loss" not in train.index  # "nan" strings are not numbers
    assert gather(out).shape == df.shape

    # a finished run whose parameters changed is refused, not silently reused
    data = yaml.safe_load(grid.read_text())
    data["base"]["k"] = 3
    grid.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PipelineError, match="finished with other parameters.*--force"):
        run_grid(grid, notebooks_dir=nbs, progress=False, variants=["ref"])
    dry = run_grid(grid, notebooks_dir=nbs, progress=False, variants=["k1"], dry_run=True)
    assert [r["status"] for r in dry] == ["done"]  # k1 overrides k itself: still current


def test_cli_dry_run_lists_the_project_grid(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["pipeline", "--grid", str(GRID), "--dry-run", "--seeds", "0", "--groups", "2x2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("pending" in ln or "done" in ln for ln in lines)
    assert cli_main(["pipeline", "--recipe", "no-such-recipe"]) == 2  # a user error: one line, exit 2


def test_grid_summary_rows_carry_advantage_shares_and_alarms(tmp_path: Path) -> None:
    """Each grid run's summary rows gain its mean advantage shares and its monitor alarms (issue 13)."""
    from clinical_r1.grid import _inside_rows

    train = tmp_path / "run" / "train"
    train.mkdir(parents=True)
    rows = [{"step": s, "reward": 1.0, "advantage_share/accuracy": a, "advantage_share/format": 1 - a,
             "reward_varies/accuracy": 0.5} for s, a in ((1, 0.6), (2, 1.0))]
    (train / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (train / "metrics.json").write_text(json.dumps({"alarms": [{"monitor": "box_outside_rate", "step": 2},
                                                               {"monitor": "box_outside_rate", "step": 5}]}))
    got = {(r["table"], r["metric"]): r for r in _inside_rows(tmp_path / "run")}
    assert got[("advantage", "advantage_share/accuracy")]["value"] == pytest.approx(0.8)
    assert got[("advantage", "advantage_share/format")]["value"] == pytest.approx(0.2)
    assert got[("advantage", "reward_varies/accuracy")]["value"] == pytest.approx(0.5)
    alarm = got[("alarms", "box_outside_rate")]
    assert alarm["value"] == 2 and alarm["benchmark"] == "steps 2,5"


def test_gather_needs_no_matplotlib(tmp_path: Path) -> None:
    """The pipeline reads results without the plotting stack: gathering a finished grid run (evaluation, judge
    records, a monitored training log) in a fresh interpreter imports neither matplotlib nor seaborn."""
    import subprocess
    import sys

    from clinical_r1.evaluate import evaluate

    run = tmp_path / "ablations" / "crpo-s0-00000000"
    items = [{"id": f"q{i}", "question": "?", "options": ["yes", "no"], "answer": "A", "subgroup": "", "source": "s"}
             for i in range(4)]
    policy = run / "policy"
    policy.mkdir(parents=True)
    (policy / "sample.jsonl").write_text("".join(
        json.dumps({"id": it["id"], "sample": 0, "text": f"so \\boxed{{{'A' if i < 3 else 'B'}}}", "n_tokens": 10})
        + "\n" for i, it in enumerate(items)))
    evaluate(policy / "sample.jsonl", items, out_path=policy / "sample.metrics.json", n_boot=50, dataset_name="sample")
    (policy / "sample.judge.jsonl").write_text("".join(
        json.dumps({"id": it["id"], "sample": 0, "metric": "hallucination", "value": 0.0, "status": "ok"}) + "\n"
        for it in items))
    (run / "train").mkdir()
    (run / "train" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward": s / 2, "rewards/accuracy/mean": s / 4, "advantage_share/accuracy": 1.0})
        + "\n" for s in (1, 2)))
    (run / "train" / "metrics.json").write_text(json.dumps({"alarms": [{"monitor": "repetition", "step": 2}]}))
    (run / "done.json").write_text(json.dumps({"run_id": run.name, "variant": "crpo", "seed": 0, "groups": ["2x2"],
                                               "overrides": {"k": 5}, "settings": {"k": 5}}))
    code = ("import sys\n"
            "from clinical_r1.grid import gather\n"
            "df = gather(sys.argv[1])\n"
            "print(','.join(sorted(set(df['table']))))\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'seaborn'))))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ablations")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    tables, plotting = done.stdout.splitlines()
    assert tables == "accuracy,advantage,alarms,faithfulness,training"  # every reader ran
    assert plotting == ""
    assert (tmp_path / "ablations" / "summary.csv").is_file()


def test_executed_notebooks_keep_their_figures_small():
    """``shrink_images``: a large inline plot is scaled to at most 1,400 pixels and stored as a palette PNG (smaller,
    still a PNG of the same picture); small images and text outputs stay exactly as they were."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from clinical_r1.pipeline import shrink_images

    def png(size, dpi):
        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        ax.plot(range(50), [i % 7 for i in range(50)], marker="o")
        ax.set_title("reward per step")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    big, small = png((24, 10), 150), png((2, 1), 50)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("plot()", outputs=[
        nbformat.v4.new_output("display_data", data={"image/png": big, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"image/png": small}),
        nbformat.v4.new_output("stream", name="stdout", text="step 1/8\n")])]
    out = json.loads(shrink_images(nbformat.writes(nb)))
    o1, o2, o3 = out["cells"][0]["outputs"]
    shrunk = Image.open(io.BytesIO(base64.b64decode(o1["data"]["image/png"])))
    assert shrunk.format == "PNG" and shrunk.width == 1400 and shrunk.height == round(1500 * 1400 / 3600)
    assert len(o1["data"]["image/png"]) < len(big) / 3 and "".join(o1["data"]["text/plain"]) == "<Figure>"
    assert o2["data"]["image/png"] == small and "".join(o3["text"]) == "step 1/8\n"
    text = nbformat.writes(nbformat.v4.new_notebook())
    assert shrink_images(text) == text
