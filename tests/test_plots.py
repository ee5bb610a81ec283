"""Figures from small hand-made tables and from real results files (evaluate, judge records, metrics.jsonl).

    .venv/bin/pytest tests/test_plots.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clinical_r1 import plots  # noqa: E402
from clinical_r1.evaluate import evaluate, load_paper_reference  # noqa: E402

REF = load_paper_reference()
METHODS = REF["methods"]


@pytest.fixture(autouse=True)
def _style_and_close():
    plots.use_style()
    yield
    plt.close("all")


def check_saved(fig, tmp_path: Path, name: str) -> None:
    paths = plots.save(fig, tmp_path / "figs", name)
    assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    assert not [p for p in (tmp_path / "figs").iterdir() if p.name.startswith(".")]  # no temp files left


def check_labelled(fig) -> None:
    """Every panel has an x label; every panel that shows y tick labels (not a shared inner one) a y label."""
    drawn = [ax for ax in fig.axes if ax.get_visible() and (ax.lines or ax.patches or ax.collections)]
    assert drawn
    for ax in drawn:
        assert ax.get_xlabel(), f"no x label: {ax.get_title()!r}"
        siblings = ax.get_shared_y_axes().get_siblings(ax)
        first_of_row = next(a for a in fig.axes if any(a is b for b in siblings))
        if first_of_row is ax:
            assert ax.get_ylabel(), f"no y label: {ax.get_title()!r}"


def accuracy_table() -> pd.DataFrame:
    rows = []
    for i, m in enumerate(["baseline_cot", "grpo", "cold_start_crpo"]):
        for j, b in enumerate(["medqa", "medmcqa"]):
            a = 40.0 + 5 * i + j
            rows.append({"method": m, "benchmark": b, "accuracy": a, "ci_low": a - 3, "ci_high": a + 2.5})
    return pd.DataFrame(rows)


def judge_table() -> pd.DataFrame:
    rows = []
    for table, metrics in (("cognitive_behaviours", ["backtracking", "backward_chaining", "subgoal_setting", "verification"]),
                           ("faithfulness", ["faithfulness", "cecd", "drc", "hallucination"])):
        for i, m in enumerate(["baseline_cot", "cold_start_crpo"]):
            for j, metric in enumerate(metrics):
                v = 1.0 + i + 0.2 * j
                rows.append({"table": table, "method": m, "metric": metric, "value": v, "ci_low": v - 0.1,
                             "ci_high": v + 0.1})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# Figures from tidy tables
# ---------------------------------------------------------------------------------------------------


def test_accuracy_beside_the_paper(tmp_path: Path) -> None:
    paper = plots.paper_table(REF, "accuracy")
    assert set(paper["method"]) == set(METHODS) and len(paper) == 15
    fig = plots.plot_accuracy(accuracy_table(), paper, order=METHODS, labels=REF["method_labels"])
    assert [ax.get_title() for ax in fig.axes] == ["MedQA", "MedMCQA", "MedXpertQA"]
    hatched = [p for ax in fig.axes for p in ax.patches if p.get_hatch() == plots.PAPER_HATCH]
    assert len(hatched) == 15  # one white hatched bar per paper number: readable in greyscale
    assert all(p.get_facecolor()[:3] == (1.0, 1.0, 1.0) for p in hatched)
    medqa = fig.axes[0]
    assert medqa.get_yticklabels()[0].get_text() == REF["method_labels"]["baseline_cot"]  # paper order, top down
    assert [t.get_text() for t in fig.axes[2].texts] == ["n/a"] * 5  # MedXpertQA: only the paper's bars
    assert [t.get_text() for t in fig.axes[0].texts] == ["n/a"] * 2  # crpo, cold_start_grpo not run
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["reproduced (95% CI)", "paper"]
    check_labelled(fig)
    check_saved(fig, tmp_path, "accuracy")


def test_cognitive_and_faithfulness_panels_in_the_paper_layout(tmp_path: Path) -> None:
    df = judge_table()
    fig = plots.plot_cognitive_behaviours(df, plots.paper_table(REF, "cognitive_behaviours"), order=METHODS)
    assert len(fig.axes) == 4
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == METHODS  # rows = methods, paper order
    check_labelled(fig)
    check_saved(fig, tmp_path, "cognitive_behaviours")

    fig = plots.plot_faithfulness(df, plots.paper_table(REF, "faithfulness"), order=METHODS,
                                  metric_labels=REF["faithfulness"]["labels"])
    titles = {ax.get_title() for ax in fig.axes}
    assert "hallucination\n↓ lower is better" in titles and "CECD\n↑ higher is better" in titles
    check_labelled(fig)
    check_saved(fig, tmp_path, "faithfulness")


def test_training_curves_from_metrics_jsonl(tmp_path: Path) -> None:
    frames = []
    for name, scale in (("grpo", 1.0), ("crpo", 1.5)):
        d = tmp_path / name
        d.mkdir()
        with open(d / "metrics.jsonl", "w") as f:  # the lines runs.MetricsLogger writes
            for step in range(1, 11):
                f.write(json.dumps({"step": step, "epoch": step / 10, "time": 1.7e9 + step, "loss": "nan",
                                    "reward": scale * step, "rewards/accuracy/mean": 0.05 * step,
                                    "rewards/clinical_reasoning/mean": 0.1, "rewards/consistency/mean": 0.9,
                                    "kl": 1e-3 * step, "completions/mean_length": 100 - step,
                                    "format_rate": 0.5}) + "\n")
        frames.append(plots.load_training_log(d))
    df = pd.concat(frames)
    assert set(df["run"]) == {"grpo", "crpo"} and "time" not in set(df["metric"]) and "loss" not in set(df["metric"])
    names = plots.training_metrics(df)
    assert names == ["rewards/accuracy/mean", "rewards/clinical_reasoning/mean", "rewards/consistency/mean",
                     "reward", "kl", "completions/mean_length"]
    fig = plots.plot_training_curves(df, smooth=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 6 and all(len(ax.lines) == 2 for ax in visible)
    assert {ln.get_marker() for ln in visible[0].lines} == {"o", "s"}  # runs differ without colour
    check_labelled(fig)
    check_saved(fig, tmp_path, "training_curves")

    bad = tmp_path / "bad" / "metrics.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"reward": 1.0}\n')
    with pytest.raises(plots.PlotDataError, match=r"line 1 has no numeric 'step'"):
        plots.load_training_log(bad.parent)


def test_k_tradeoff_averages_seeds_and_annotates_each_k(tmp_path: Path) -> None:
    rows = [{"k": k, "seed": s, "accuracy": 40 + k + s, "hallucination": 0.3 + 0.02 * k + 0.01 * s}
            for k in (1, 5, 10, 20) for s in (0, 1)]
    fig = plots.plot_k_tradeoff(pd.DataFrame(rows), x="hallucination")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["k=1", "k=5", "k=10", "k=20"]
    assert "lower is better" in ax.get_xlabel() and ax.get_ylabel() == "accuracy (%)"
    assert ax.texts[0].xy == pytest.approx((0.325, 41.5))  # mean over the two seeds
    check_saved(fig, tmp_path, "k_tradeoff")


@pytest.mark.parametrize("kind", ["box", "violin"])
def test_response_length(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame([{"method": m, "benchmark": b, "n_tokens": float(x)}
                       for m, mu in (("grpo", 200), ("cold_start_crpo", 350)) for b in ("medqa", "medmcqa")
                       for x in rng.normal(mu, 40, 30)])
    fig = plots.plot_response_length(df, kind=kind, order=["grpo", "cold_start_crpo"])
    shapes = fig.axes[0].patches if kind == "box" else fig.axes[0].collections
    assert [s.get_hatch() or "" for s in shapes[:2]] == list(plots.METHOD_HATCHES[:2])  # texture per method
    check_labelled(fig)
    check_saved(fig, tmp_path, f"length_{kind}")


def test_bad_tables_are_refused_with_the_missing_columns() -> None:
    with pytest.raises(plots.PlotDataError, match=r"lacks column\(s\) \['accuracy'\]"):
        plots.plot_accuracy(pd.DataFrame({"method": ["a"], "benchmark": ["b"]}))
    with pytest.raises(plots.PlotDataError, match="empty"):
        plots.plot_metric_panel(pd.DataFrame(columns=["method", "metric", "value"]))
    twice = pd.DataFrame({"method": ["a", "a"], "benchmark": ["b", "b"], "accuracy": [1.0, 2.0]})
    with pytest.raises(plots.PlotDataError, match=r"several rows for \['method', 'benchmark'\]"):
        plots.plot_accuracy(twice)
    with pytest.raises(ValueError, match="figure name"):
        plots.save(plt.figure(), "/tmp", "../escape")


# ---------------------------------------------------------------------------------------------------
# Loaders on real results files, and make_all
# ---------------------------------------------------------------------------------------------------

ITEMS = [{"id": f"q{i}", "question": f"Question {i}?", "options": ["alpha", "beta", "gamma"], "answer": "A",
          "subgroup": "", "source": "s", "explanation": "", "meta": "{}"} for i in range(6)]


def write_run(root: Path, method: str, n_right: int) -> None:
    """A method folder as the evaluation notebook leaves it: generations + sidecar, metrics, judge records."""
    d = root / method
    d.mkdir(parents=True)
    gen = d / "medmcqa.jsonl"
    with open(gen, "w") as f:
        for i, it in enumerate(ITEMS):
            letter = "A" if i < n_right else "B"
            f.write(json.dumps({"id": it["id"], "sample": 0, "text": f"<dx>x</dx><conclusion>\\boxed{{{letter}}}</conclusion>",
                                "n_tokens": 50 + 10 * i, "finish_reason": "stop", "dataset": "medmcqa",
                                "model": method, "prompt_kind": "crpo"}) + "\n")
    (d / "medmcqa.jsonl.meta.json").write_text(json.dumps({"dataset": "medmcqa", "n": 1, "model": method}))
    evaluate(gen, ITEMS, out_path=d / "medmcqa.metrics.json", n_boot=200, dataset_name="medmcqa")
    with open(d / "medmcqa.judge.jsonl", "w") as f:
        for i, it in enumerate(ITEMS):
            for metric in ("verification", "backtracking", "hallucination", "cecd"):
                status = "unparseable" if (i == 0 and metric == "cecd") else "ok"
                f.write(json.dumps({"id": it["id"], "model": method, "sample": 0, "metric": metric,
                                    "value": None if status != "ok" else float(i % 3), "status": status}) + "\n")


def test_loaders_and_make_all_on_results_files(tmp_path: Path) -> None:
    results = tmp_path / "results" / "demo"
    write_run(results, "baseline_cot", 2)
    write_run(results, "cold_start_crpo", 4)
    train = results / "cold_start_crpo"
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s / 2, "kl": 0.01 * s,
                                                             "rewards/accuracy/mean": s / 10}) + "\n" for s in (1, 2, 3)))
    (results / "ablations" / "x" / "crpo").mkdir(parents=True)  # grid runs are gathered separately, not here
    (results / "ablations" / "x" / "crpo" / "medqa.metrics.json").write_text("{}")

    acc = plots.collect_eval_results(results).set_index("method")
    assert acc.loc["baseline_cot", "accuracy"] == pytest.approx(100 * 2 / 6)  # fractions become percent
    assert acc.loc["cold_start_crpo", "benchmark"] == "medmcqa"
    assert acc.loc["cold_start_crpo", "ci_low"] <= acc.loc["cold_start_crpo", "accuracy"] <= acc.loc["cold_start_crpo", "ci_high"]

    judged = plots.collect_judge_results(results)
    row = judged[(judged["method"] == "baseline_cot") & (judged["metric"] == "cecd")].iloc[0]
    assert row["table"] == "faithfulness" and row["n"] == 5 and row["n_not_ok"] == 1  # unparseable: counted, not averaged
    assert row["value"] == pytest.approx(np.mean([1, 2, 0, 1, 2]))
    assert set(judged.loc[judged["metric"] == "verification", "table"]) == {"cognitive_behaviours"}

    lengths = plots.collect_lengths(results)
    assert len(lengths) == 12 and set(lengths["method"]) == {"baseline_cot", "cold_start_crpo"}

    summary = pd.DataFrame([
        {"run_id": f"{v}-s{s}", "variant": v, "seed": s, "groups": g, "k": k, "table": t, "benchmark": "medmcqa",
         "metric": m, "value": val + s, "ci_low": val - 5, "ci_high": val + 5}
        for v, g, k in (("grpo", "2x2", 10), ("cold_start_crpo", "2x2;k", 10), ("cold_start_crpo-k1", "k", 1))
        for s in (0, 1)
        for t, m, val in (("accuracy", "accuracy", 50.0 + k), ("faithfulness", "hallucination", 0.5 + k / 100))])
    summary_csv = tmp_path / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    grid_acc = plots.from_summary(summary, "accuracy", group="2x2").set_index("method")
    assert grid_acc.loc["grpo", "accuracy"] == pytest.approx(60.5) and grid_acc.loc["grpo", "n_seeds"] == 2
    assert grid_acc.loc["grpo", "ci_low"] < 60.5 < grid_acc.loc["grpo", "ci_high"]  # t-interval over seeds

    written = plots.make_all(results, tmp_path / "figures", paper_reference=REF, ablation_summary=summary_csv)
    assert set(written) == {"accuracy", "cognitive_behaviours", "faithfulness", "training_curves",
                            "response_length", "k_tradeoff"}
    for paths in written.values():
        assert all(p.exists() and p.stat().st_size > 0 for p in paths)

    (results / "bad").mkdir()
    (results / "bad" / "medqa.metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(plots.PlotDataError, match=r"bad/medqa.metrics.json: not an evaluation result"):
        plots.collect_eval_results(results)
