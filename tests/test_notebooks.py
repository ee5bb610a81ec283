"""Every numbered notebook executes under papermill, in order, with tiny parameters (configs/recipes/smoke.yaml),
and produces its declared outputs; a rerun skips the finished stages.

This is the CI form of `make demo`: the same notebooks and code paths, a handful of items, one step each.
"""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from clinical_r1.pipeline import load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("name", ["demo", "smoke", "paper", "t4"])
def test_project_recipes_match_the_notebooks(name, tmp_path):
    """Every stage parameter of every recipe is declared by its notebook (checked without running anything)."""
    from clinical_r1.pipeline import plan_recipe

    assert len(plan_recipe(load_recipe(name), tmp_path)) == 8


@pytest.mark.parametrize("recipe", ["demo", "paper"])
def test_project_grid_matches_the_notebooks(recipe, tmp_path):
    from clinical_r1.grid import run_grid

    assert len(run_grid(REPO / "configs" / "ablations.yaml", out=tmp_path, recipe=recipe, dry_run=True,
                        progress=False)) == 33


def test_every_notebook_is_thin_and_parameterised():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.name[:2]} ")
        assert "**Inputs**" in nb.cells[0].source and "**Outputs**" in nb.cells[0].source
        assert "**Time**" in nb.cells[0].source
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, path.name
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert not any(line.lstrip().startswith(("def ", "class ")) for src in code for line in src.splitlines()), \
            f"{path.name} defines logic; it belongs in clinical_r1"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has saved outputs"


def test_one_out_dir_parameter_moves_a_whole_study():
    """Every path a notebook reads or writes derives from ``out_dir`` unless given (``papermill -p out_dir X``
    moves the study), and the logging setup is the package's own."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assert [ln.split("=")[0].strip() for ln in params.splitlines() if "results/demo" in ln] == ["out_dir"], path.name
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "basicConfig" not in code and "setup_logging(force=True)" in code, path.name


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    status = run_recipe(load_recipe("smoke"), out=out, progress=False)
    return out, status


@pytest.mark.slow
def test_smoke_recipe_runs_every_stage(smoke_run):
    out, status = smoke_run
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    assert [s[:2] for s in stages] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    assert all(s["status"] == "done" for s in stages.values()), stages
    for name in stages:
        assert (out / "notebooks" / f"{name}.ipynb").is_file()


@pytest.mark.slow
def test_smoke_outputs(smoke_run):
    out, _ = smoke_run
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["files"]["sft"]["count"] == 4 and manifest["decontamination"]["overlap"] == 0
    assert (out / "data" / "traces_sft.jsonl").read_text().count("\n") == 4
    assert (out / "sft" / "adapter" / "adapter_config.json").is_file()
    log = pd.read_json(out / "cold_start_crpo" / "metrics.jsonl", lines=True)
    for key in ("rewards/accuracy/mean", "rewards/clinical_reasoning/mean", "rewards/consistency/mean", "kl"):
        assert key in log.columns
    for method in ("baseline_cot", "cold_start_crpo"):
        res = json.loads((out / method / "sample.metrics.json").read_text())
        assert res["overall"]["n_questions"] == 2 and 0.0 <= res["overall"]["accuracy"] <= 1.0
        assert res["prompt_kind"] == ("cot" if method == "baseline_cot" else "crpo")
        assert (out / method / "sample.judge.jsonl").is_file()
    assert (out / "judge_reliability.csv").is_file()
    summary = pd.read_csv(out / "ablations" / "summary.csv")
    assert set(summary["variant"]) == {"grpo"} and "accuracy" in set(summary["metric"])
    for fig in ("accuracy", "training_curves", "response_length"):
        assert (out / "figures" / f"{fig}.png").is_file() and (out / "figures" / f"{fig}.pdf").is_file()


@pytest.mark.slow
def test_rerun_skips_finished_stages(smoke_run):
    out, _ = smoke_run
    before = (out / "pipeline.json").read_text()
    run_recipe(load_recipe("smoke"), out=out, progress=False)
    after = json.loads((out / "pipeline.json").read_text())["stages"]
    assert all(s["status"] == "done" for s in after.values())
    assert {k: v["finished"] for k, v in json.loads(before)["stages"].items()} == {k: v["finished"] for k, v in after.items()}


# ---------------------------------------------------------------------------------------------------
# Progress a notebook user sees: tqdm.auto draws an ipywidgets bar, never "IProgress not found"
# ---------------------------------------------------------------------------------------------------

NO_WIDGETS = "IProgress not found"  # tqdm.notebook's warning when ipywidgets is missing: a text bar, or none
DEMO_NOTEBOOKS = sorted((REPO / "results" / "demo").glob("**/notebooks/*.ipynb"))  # `make demo`'s executed copies


def cells_warning_of_no_widgets(nb) -> list[int]:
    """Indexes of the code cells whose outputs carry tqdm's ``IProgress not found`` warning."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(NO_WIDGETS in json.dumps(o) for o in c.get("outputs", []))]


def test_the_warning_check_finds_the_warning() -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("run()")])
    assert cells_warning_of_no_widgets(nb) == []
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stderr", text=(
        "/venv/lib/python3.12/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update "
        "jupyter and ipywidgets."))]
    assert cells_warning_of_no_widgets(nb) == [1]


def test_tqdm_auto_draws_a_widget_in_a_kernel(tmp_path: Path) -> None:
    """What the notebooks' progress (generation, judge and teacher requests) goes through: tqdm.auto in an
    ipykernel kernel, executed by papermill as the pipeline does."""
    import papermill as pm

    src = tmp_path / "progress.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='answers'):\n    pass")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        cwd=str(tmp_path))
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert cells_warning_of_no_widgets(out) == []
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in out.cells[0].outputs)


@pytest.mark.skipif(not DEMO_NOTEBOOKS, reason="no executed demo notebooks under results/demo (make demo)")
@pytest.mark.parametrize("path", DEMO_NOTEBOOKS, ids=lambda p: str(p.relative_to(REPO / "results" / "demo")))
def test_the_executed_demo_notebooks_have_progress_widgets(path: Path) -> None:
    assert cells_warning_of_no_widgets(nbformat.read(path, as_version=4)) == [], path


@pytest.mark.slow
def test_the_smoke_notebooks_have_progress_widgets(smoke_run):
    out, _ = smoke_run
    executed = sorted(out.glob("**/notebooks/*.ipynb"))
    assert len(executed) >= 8
    assert {p.name: cells_warning_of_no_widgets(nbformat.read(p, as_version=4)) for p in executed} == {
        p.name: [] for p in executed}
