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

from clinical_r1 import plots, results  # noqa: E402
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
    paper = results.paper_table(REF, "accuracy")
    assert set(paper["method"]) == set(METHODS) and len(paper) == 15
    fig = plots.plot_accuracy(accuracy_table(), paper, order=METHODS, labels=REF["method_labels"])
    assert [ax.get_title() for ax in fig.axes] == ["MedQA (5 options)", "MedMCQA", "MedXpertQA"]  # the paper's variant
    hatched = [p for ax in fig.axes for p in ax.patches if p.get_hatch() == plots.PAPER_HATCH]
    assert len(hatched) == 15  # one white hatched bar per paper number: readable in greyscale
    assert all(p.get_facecolor()[:3] == (1.0, 1.0, 1.0) for p in hatched)
    medqa = fig.axes[0]
    assert medqa.get_yticklabels()[0].get_text() == REF["method_labels"]["baseline_cot"]  # paper order, top down
    not_run = lambda ax: [t.get_text() for t in ax.texts if t.get_text() == "not run"]  # noqa: E731
    assert not_run(fig.axes[2]) == ["not run"] * 5  # MedXpertQA: only the paper's bars
    assert not_run(fig.axes[0]) == ["not run"] * 2  # crpo, cold_start_grpo not run
    assert "40.0 [37.0, 42.5]" in [t.get_text() for t in fig.axes[0].texts]  # reproduced: value and 95% CI
    assert "41.95" in [t.get_text() for t in fig.axes[0].texts]  # the paper's number as reported, beside it
    assert "10.51" in [t.get_text() for t in fig.axes[2].texts]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["reproduced (95% CI)", "paper"]
    check_labelled(fig)
    check_saved(fig, tmp_path, "accuracy")


def test_cognitive_and_faithfulness_panels_in_the_paper_layout(tmp_path: Path) -> None:
    df = judge_table()
    fig = plots.plot_cognitive_behaviours(df, results.paper_table(REF, "cognitive_behaviours"), order=METHODS)
    assert len(fig.axes) == 4
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == METHODS  # rows = methods, paper order
    check_labelled(fig)
    check_saved(fig, tmp_path, "cognitive_behaviours")

    fig = plots.plot_faithfulness(df, results.paper_table(REF, "faithfulness"), order=METHODS,
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
        frames.append(results.load_training_log(d))
    df = pd.concat(frames)
    assert set(df["run"]) == {"grpo", "crpo"} and "time" not in set(df["metric"]) and "loss" not in set(df["metric"])
    names = results.training_metrics(df)
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
    with pytest.raises(results.PlotDataError, match=r"line 1 has no numeric 'step'"):
        results.load_training_log(bad.parent)


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
    demo = tmp_path / "results" / "demo"
    write_run(demo, "baseline_cot", 2)
    write_run(demo, "cold_start_crpo", 4)
    train = demo / "cold_start_crpo"
    (train / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": s / 2, "kl": 0.01 * s,
                                                             "rewards/accuracy/mean": s / 10}) + "\n" for s in (1, 2, 3)))
    (demo / "ablations" / "x" / "crpo").mkdir(parents=True)  # grid runs are gathered separately, not here
    (demo / "ablations" / "x" / "crpo" / "medqa.metrics.json").write_text("{}")

    acc = results.collect_eval_results(demo).set_index("method")
    assert acc.loc["baseline_cot", "accuracy"] == pytest.approx(100 * 2 / 6)  # fractions become percent
    assert acc.loc["cold_start_crpo", "benchmark"] == "medmcqa"
    assert acc.loc["cold_start_crpo", "ci_low"] <= acc.loc["cold_start_crpo", "accuracy"] <= acc.loc["cold_start_crpo", "ci_high"]

    judged = results.collect_judge_results(demo)
    row = judged[(judged["method"] == "baseline_cot") & (judged["metric"] == "cecd")].iloc[0]
    assert row["table"] == "faithfulness" and row["n"] == 5 and row["n_not_ok"] == 1  # unparseable: counted, not averaged
    assert row["value"] == pytest.approx(np.mean([1, 2, 0, 1, 2]))
    assert set(judged.loc[judged["metric"] == "verification", "table"]) == {"cognitive_behaviours"}

    lengths = results.collect_lengths(demo)
    assert len(lengths) == 12 and set(lengths["method"]) == {"baseline_cot", "cold_start_crpo"}

    summary = pd.DataFrame([
        {"run_id": f"{v}-s{s}", "variant": v, "seed": s, "groups": g, "k": k, "table": t, "benchmark": "medmcqa",
         "metric": m, "value": val + s, "ci_low": val - 5, "ci_high": val + 5}
        for v, g, k in (("grpo", "2x2", 10), ("cold_start_crpo", "2x2;k", 10), ("cold_start_crpo-k1", "k", 1))
        for s in (0, 1)
        for t, m, val in (("accuracy", "accuracy", 50.0 + k), ("faithfulness", "hallucination", 0.5 + k / 100))])
    summary_csv = tmp_path / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    grid_acc = results.from_summary(summary, "accuracy", group="2x2").set_index("method")
    assert grid_acc.loc["grpo", "accuracy"] == pytest.approx(60.5) and grid_acc.loc["grpo", "n_seeds"] == 2
    assert grid_acc.loc["grpo", "ci_low"] < 60.5 < grid_acc.loc["grpo", "ci_high"]  # t-interval over seeds

    written = plots.make_all(demo, tmp_path / "figures", paper_reference=REF, ablation_summary=summary_csv)
    assert set(written) == {"accuracy", "cognitive_behaviours", "faithfulness", "training_curves",
                            "response_length", "k_tradeoff", "crpo_rewards"}  # no text metrics: no format figure
    for paths in written.values():
        assert all(p.exists() and p.stat().st_size > 0 for p in paths)

    (demo / "bad").mkdir()
    (demo / "bad" / "medqa.metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(results.PlotDataError, match=r"bad/medqa.metrics.json: not an evaluation result"):
        results.collect_eval_results(demo)


# ---------------------------------------------------------------------------------------------------
# A demo-like study folder: every figure make_all writes, as a reader sees it
# ---------------------------------------------------------------------------------------------------

CASES = [{"id": f"q{i}", "question": f"A 34-year-old with fever {38 + i % 3} C and neck stiffness. Diagnosis?",
          "options": ["bacterial meningitis", "migraine", "tension headache", "sinusitis"], "answer": "A",
          "subgroup": "", "source": "s", "explanation": "", "meta": "{}"} for i in range(8)]
BENCHES = ("medqa", "medmcqa", "medxpertqa")
CRPO_REWARDS = ("accuracy", "clinical_reasoning", "crpo_format", "cross_reference", "consistency", "completion_length")


def _response(style: str, letter: str, i: int) -> str:
    if style == "cot":
        return f"Fever and neck stiffness. The answer is \\boxed{{{letter}}}."
    if style == "grpo":
        return f"<think>fever and neck stiffness</think><answer>\\boxed{{{letter}}}</answer>"
    cites = style == "crpo" and i % 4 != 3  # 6 of 8 conclusions cite a finding of <dx>
    conclusion = ("Fever with neck stiffness points to meningitis, so " if cites else "So ") + f"\\boxed{{{letter}}}"
    return f"<dx>Fever with neck stiffness points to meningeal irritation; photophobia absent.</dx>" \
           f"<conclusion>{conclusion}</conclusion>"


def write_eval(d: Path, bench: str, n_right: int, style: str, prompt_kind: str) -> None:
    """What the evaluation stage writes per method and benchmark (study.evaluate_methods)."""
    from clinical_r1.textmetrics import summarize_generations

    d.mkdir(parents=True, exist_ok=True)
    gen = d / f"{bench}.jsonl"
    gen.write_text("".join(json.dumps({"id": c["id"], "sample": 0, "n_tokens": 40 + 7 * i, "finish_reason": "stop",
                                       "text": _response(style, "A" if i < n_right else "B", i), "dataset": bench,
                                       "model": "m", "prompt_kind": prompt_kind}) + "\n" for i, c in enumerate(CASES)))
    (d / f"{bench}.jsonl.meta.json").write_text(json.dumps({"dataset": bench, "n": 1, "model": "m",
                                                            "prompt_kind": prompt_kind}))
    evaluate(gen, CASES, out_path=d / f"{bench}.metrics.json", n_boot=200, dataset_name=bench)
    (d / f"{bench}.textmetrics.json").write_text(json.dumps({"method": d.name, "benchmark": bench,
                                                             **summarize_generations(gen, CASES)}))


def write_rl_log(path: Path, components: tuple[str, ...], steps: int = 2) -> None:
    """TRL GRPO log lines (runs.MetricsLogger): the accuracy reward stays 0 (a constant panel), the rest move."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "epoch": s / steps, "time": 1.7e9 + s, "loss": 0.01 * s, "kl": 1e-3 * (s - 1),
               "reward": 1.0 + 0.2 * s, "frac_reward_zero_std": 0.5 / s, "completions/mean_length": 60.0 - s}
        for j, c in enumerate(components):
            stuck = c == "accuracy" and "clinical_reasoning" in components  # CRPO's accuracy: 0 at every step
            row[f"rewards/{c}/mean"] = 0.0 if stuck else 0.2 + 0.1 * s + 0.01 * j
            row[f"rewards/{c}/std"] = 0.1
        rows.append(row)
    rows.append({"step": steps, "time": 1.7e9, "train_runtime": 88.0, "train_loss": 0.01})  # TRL's closing line
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_sft_log(path: Path, steps: int = 4) -> None:
    """TRL SFT log lines: train loss every step, dev loss (eval_loss) every second step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "epoch": s / steps, "time": 1.7e9 + s, "loss": 2.6 - 0.3 * s, "grad_norm": 1.1})
        if s % 2 == 0:
            rows.append({"step": s, "epoch": s / steps, "time": 1.7e9 + s, "eval_loss": 2.0 - 0.15 * s})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_grid_run(grid: Path, variant: str, seed: int, groups: list[str], n_right: tuple[int, ...],
                   overrides: dict) -> None:
    """A finished grid run: train/metrics.jsonl, policy/<benchmark>.*, done.json last (grid.run_grid)."""
    rid = f"{variant}-s{seed}-0000000{seed}"
    for bench, r in zip(BENCHES, n_right):
        write_eval(grid / rid / "policy", bench, r, "grpo", "grpo")
    write_rl_log(grid / rid / "train" / "metrics.jsonl", ("accuracy", "format", "completion_length"))
    (grid / rid / "done.json").write_text(json.dumps({"run_id": rid, "variant": variant, "seed": seed,
                                                      "groups": groups, "overrides": overrides,
                                                      "settings": {"preset": "crpo", "k": 10, **overrides}}))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/demo as the demo recipe leaves it: three evaluated methods (cold_start_crpo scores 0 on
    MedXpertQA), the SFT and CRPO training logs, and a gathered grid with two seeds of the 2x2's
    cold_start_grpo plus one run of another group."""
    from clinical_r1.grid import gather

    root = tmp_path_factory.mktemp("study") / "results" / "demo"
    for method, rights, style, kind in (("baseline_cot", (3, 4, 1), "cot", "cot"),
                                        ("sft", (3, 5, 1), "crpo-no-xref", "crpo"),
                                        ("cold_start_crpo", (4, 5, 0), "crpo", "crpo")):
        for bench, r in zip(BENCHES, rights):
            write_eval(root / method, bench, r, style, kind)
    write_sft_log(root / "sft" / "metrics.jsonl")
    write_rl_log(root / "cold_start_crpo" / "metrics.jsonl", CRPO_REWARDS)
    grid = root / "ablations"
    write_grid_run(grid, "cold_start_grpo", 0, ["2x2"], (3, 4, 1), {"preset": "grpo"})
    write_grid_run(grid, "cold_start_grpo", 1, ["2x2"], (5, 4, 2), {"preset": "grpo"})
    write_grid_run(grid, "cold_start_crpo-k1", 0, ["k"], (1, 1, 1), {"k": 1})
    gather(grid)
    return root


@pytest.fixture(scope="module")
def figures(study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """make_all on the study folder: name -> (the Figure it saved, [png, pdf])."""
    shown = {}
    save = plots.save

    def keep(fig, out_dir, name):
        shown[name] = fig
        return save(fig, out_dir, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save", keep)
        written = plots.make_all(study, tmp_path_factory.mktemp("figures"), paper_reference=REF,
                                 ablation_summary=study / "ablations" / "summary.csv")
    return {name: (shown[name], paths) for name, paths in written.items()}


def drawn_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and (ax.lines or ax.patches or ax.collections)]


def check_readable(fig) -> None:
    """What a reader checks: titled panels, tick labels that do not overlap, value labels inside their panel,
    a legend that covers no panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()  # make_all closed the figure: draw it on a fresh canvas
    fig.draw(r)
    suptitle = fig._suptitle.get_text() if fig._suptitle else ""
    for ax in drawn_axes(fig):
        assert ax.get_title() or suptitle, "a panel without a title"
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            boxes = [t.get_window_extent(r) for t, loc in zip(axis.get_ticklabels(), axis.get_ticklocs())
                     if t.get_visible() and t.get_text() and lo <= loc <= hi]
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b), f"{ax.get_title()!r}: overlapping tick labels"
        box = ax.get_window_extent(r)
        for t in ax.texts:
            tb = t.get_window_extent(r)
            assert box.x0 - 1 <= tb.x0 and tb.x1 <= box.x1 + 1, f"{ax.get_title()!r}: {t.get_text()!r} leaves its panel"
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        lb = legend.get_window_extent(r)
        for ax in drawn_axes(fig):
            assert not lb.overlaps(ax.get_window_extent(r)), f"the legend covers {ax.get_title()!r}"


def annotations(ax) -> dict[str, tuple[float, float]]:
    return {t.get_text(): t.xy for t in ax.texts if isinstance(t, matplotlib.text.Annotation)}


def test_accuracy_writes_every_number_and_draws_a_zero(study: Path, figures: dict) -> None:
    fig = figures["accuracy"][0]
    acc = results.collect_eval_results(study)
    grid = results.from_summary(pd.read_csv(study / "ablations" / "summary.csv"), "accuracy", "2x2")
    assert len(fig.axes) == 3
    for ax, bench in zip(fig.axes, BENCHES):
        texts = annotations(ax)
        rows = pd.concat([acc, grid])
        for _, row in rows[rows["benchmark"] == bench].iterrows():  # reproduced: value [CI], grid arms included
            lo, hi = max(row["ci_low"], 0.0), min(row["ci_high"], 100.0)
            assert f"{row['accuracy']:.1f} [{lo:.1f}, {hi:.1f}]" in texts
        for v in REF["accuracy"]["values"][bench].values():  # the paper's numbers, as reported
            assert f"{v:.2f}" in texts
        assert sum(t.get_text() == "not run" for t in ax.texts) == 2  # grpo and crpo were never run
    medxpert = fig.axes[2]
    zero = next(t for t in medxpert.texts if t.get_text().startswith("0.0 ["))  # cold_start_crpo: 0 of 8
    diamonds = [ln for ln in medxpert.lines if ln.get_marker() == "D"]
    assert [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in diamonds] == [pytest.approx(zero.xy)]
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # the grid's 2x2 arm beside the run's own methods
    assert "Cold Start + GRPO (grid, 2 seeds)" in ticks and plots.OWN_METHOD_LABELS["sft"] in ticks
    assert all(0 <= t <= 100 for t in medxpert.get_xticks())
    check_readable(fig)


def test_step_axes_show_integers_only(figures: dict) -> None:
    for name in ("training_curves", "crpo_rewards", "sft_loss"):
        fig = figures[name][0]
        for ax in drawn_axes(fig):
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), f"{name}: {ax.get_title()!r} ticks {ticks}"
            assert ax.get_xlabel() == "step"
    for steps in ([1], list(range(0, 2001, 20))):  # a one-step smoke run, a long run: integers, no crowding
        df = pd.DataFrame({"run": "r", "step": steps, "metric": "kl", "value": np.linspace(0, 1, len(steps))})
        fig = plots.plot_training_curves(df)
        lo, hi = fig.axes[0].get_xlim()
        ticks = [t for t in fig.axes[0].get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        check_readable(fig)


def test_constant_panels_get_a_sensible_range_and_a_note(figures: dict) -> None:
    fig = figures["training_curves"][0]
    panel = {ax.get_title(): ax for ax in drawn_axes(fig)}
    acc = panel["accuracy reward"]  # 0 at every step: a rate, drawn on [0, 1]
    assert acc.get_ylim() == pytest.approx((-0.04, 1.04))
    assert [t.get_text() for t in acc.texts] == ["constant = 0"]
    assert not panel["total reward"].texts  # a moving curve gets no note
    assert plots.constant_limits(2.5, "loss") == pytest.approx((2.25 - 0.02, 2.75 + 0.02))  # ±10%, not ±0.05
    assert plots.constant_limits(0.0, "kl")[0] > -0.01 and plots.constant_limits(0.0, "kl")[1] > 0.09
    assert plots.constant_limits(1.5, "rewards/clinical_reasoning/mean") == pytest.approx((-0.06, 1.56))
    df = pd.DataFrame({"run": "r", "step": [1, 2, 3], "metric": "completions/mean_length", "value": 58.0})
    ax = plots.plot_training_curves(df).axes[0]
    assert ax.get_ylim() == pytest.approx((58 - 5.8 - 0.464, 58 + 5.8 + 0.464))  # ±10%, padded
    assert ax.texts[0].get_text() == "constant = 58"


def test_format_rewards_and_sft_loss_figures(study: Path, figures: dict) -> None:
    for name in ("format_by_method", "crpo_rewards", "sft_loss"):
        png, pdf = figures[name][1]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.stat().st_size > 0

    fig = figures["format_by_method"][0]
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["format compliance", "cross-reference rate",
                                                                   "valid answers"]
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["Base model + CoT [cot]", "Cold Start + GRPO (grid, 2 seeds) [grpo]",  # paper order;
                     "Cold Start + CRPO (Clinical-R1) [crpo]",  # k-group run left out
                     f"{plots.OWN_METHOD_LABELS['sft']} [crpo]"]
    text = json.loads((study / "cold_start_crpo" / "medqa.textmetrics.json").read_text())
    xref = fig.axes[1]
    widths = sorted(round(p.get_width(), 6) for p in xref.patches)
    assert 100 * text["cross_reference"]["mean"] == pytest.approx(75.0) and widths.count(75.0) == 3
    assert sum(t.get_text() == "n/a" for t in xref.texts) == 3  # untagged cot answers: no cross-reference
    assert "75" in annotations(xref)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["MedQA (5 options)", "MedMCQA", "MedXpertQA"]

    fig = figures["crpo_rewards"][0]
    titles = [ax.get_title() for ax in drawn_axes(fig)]
    assert titles == [plots.pretty_metric(f"rewards/{c}/mean") for c in CRPO_REWARDS] + [
        "format reward", plots.pretty_metric("frac_reward_zero_std")]
    runs = [t.get_text() for t in fig.legends[0].get_texts()]
    assert runs == ["cold_start_crpo", "cold_start_grpo (grid, mean of 2 seeds)"]  # the k-group run is not in the 2x2
    frac = drawn_axes(fig)[-1]
    assert [list(ln.get_ydata()) for ln in frac.lines] == [[0.5, 0.25], [0.5, 0.25]]

    fig = figures["sft_loss"][0]
    ax = fig.axes[0]
    assert [list(ln.get_ydata()) for ln in ax.lines] == [pytest.approx([2.3, 2.0, 1.7, 1.4]), pytest.approx([1.7, 1.4])]
    assert [list(ln.get_xdata()) for ln in ax.lines] == [[1, 2, 3, 4], [2, 4]]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "dev"]
    assert ax.get_ylabel() and ax.get_title()


def test_every_figure_is_readable(figures: dict) -> None:
    assert set(figures) == {"accuracy", "format_by_method", "training_curves", "crpo_rewards", "sft_loss",
                            "response_length"}
    for name, (fig, _) in figures.items():
        check_labelled(fig)
        check_readable(fig)


def test_text_metrics_loader_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "medqa.textmetrics.json").write_text(json.dumps({"format_compliance": 0.5}))
    with pytest.raises(results.PlotDataError, match=r"m/medqa.textmetrics.json: not a text-metrics result"):
        results.collect_text_metrics(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Inside a multi-objective run (clinical_r1.monitors): advantage shares, monitors, the Pareto-optimal k
# ---------------------------------------------------------------------------------------------------


def write_monitored_run(d: Path) -> None:
    """The lines runs.MetricsLogger writes for a CRPO run with the step monitor; step 3 had no varying group."""
    d.mkdir(parents=True)
    rows = []
    for s in (1, 2, 3, 4):
        r = {"step": s, "reward": 1.0 * s, "rewards/accuracy/mean": 0.1 * s, "monitor/truncation_rate": 0.1 * s,
             "monitor/repetition": 0.02, "reward_varies/accuracy": 0.5}
        if s != 3:
            r.update({"advantage_share/accuracy": 0.9, "advantage_share/clinical_reasoning": 0.2,
                      "advantage_share/consistency": -0.1})
        rows.append(r)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "metrics.json").write_text(json.dumps({"alarm_thresholds": {"truncation_rate": 0.25, "repetition": 0.2},
                                                "alarms": [{"monitor": "truncation_rate", "step": 3}]}))


def test_advantage_shares_stack_to_one_and_monitors_mark_their_thresholds(tmp_path: Path) -> None:
    write_monitored_run(tmp_path / "run")
    df = results.load_training_log(tmp_path / "run")
    fig = plots.plot_advantage_shares(df)
    ax = fig.axes[0]
    blocks = [(b.get_x() + b.get_width() / 2, b.get_y(), b.get_y() + b.get_height()) for b in ax.patches
              if b.get_height() != 0 and b.get_zorder() > 0]  # the gaps are zorder-0 spans
    assert sorted({round(x) for x, _, _ in blocks}) == [1, 2, 4]  # step 3 had no varying group: a gap
    assert max(max(lo, hi) for _, lo, hi in blocks) == pytest.approx(1.1)  # 0.9 + 0.2 above 0 ...
    assert min(min(lo, hi) for _, lo, hi in blocks) == pytest.approx(-0.1)  # ... -0.1 below: together 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["accuracy", "clinical_reasoning", "consistency",
                                                                  "no varying group"]
    check_saved(fig, tmp_path, "advantage_shares")
    fig = plots.plot_monitors(df, results.load_alarm_thresholds(tmp_path / "run"))
    trunc = next(a for a in fig.axes if a.get_title() == "truncation rate")
    crosses = [o for c in trunc.collections for o in c.get_offsets()]
    assert [tuple(np.round(o, 6)) for o in crosses] == [(3, 0.3), (4, 0.4)]  # the steps above 0.25
    assert any(ln.get_ydata()[0] == 0.25 for ln in trunc.get_lines())  # the threshold line
    check_saved(fig, tmp_path, "monitors")
    written = plots.make_all(tmp_path, tmp_path / "figures", paper_reference=REF)
    assert {"advantage_shares", "monitors"} <= set(written)


def test_pareto_front_and_the_judge_free_k_axis() -> None:
    assert plots.pareto_front([1, 2, 3, 2], [3, 2, 1, 1]).tolist() == [True, True, True, False]
    assert plots.pareto_front([1, 2, 3], [1, 2, 3], x_lower_is_better=True).tolist() == [True, True, True]
    assert plots.pareto_front([1, 2, 3], [3, 2, 1], x_lower_is_better=True).tolist() == [True, False, False]
    summary = pd.DataFrame([
        {"run_id": f"k{k}", "variant": f"k{k}", "groups": "k", "k": k, "table": t, "benchmark": b, "metric": m,
         "value": v}
        for k, acc, xref in ((1, 40.0, 0.9), (5, 50.0, 0.8), (10, 45.0, 0.5))
        for t, b, m, v in (("accuracy", "medqa", "accuracy", acc), ("training", "train", results.K_STAND_IN, xref))])
    wide = results.k_table(summary)
    assert wide.attrs["x"] == results.K_STAND_IN
    fig = plots.plot_k_tradeoff(wide, x=wide.attrs["x"])
    ringed = fig.axes[0].collections[-1].get_offsets()
    assert sorted(map(tuple, np.round(ringed, 6))) == [(0.8, 50.0), (0.9, 40.0)]  # k=10 is dominated by k=5
    assert "judge-free" in fig.axes[0].get_xlabel()


def test_a_run_without_any_varying_group_is_drawn_as_gaps() -> None:
    """A step monitor that never saw a varying group still gets its panel: all grey, no learning signal."""
    df = pd.DataFrame([{"run": "flat", "step": s, "metric": f"reward_varies/{r}", "value": 0.0}
                       for s in (1, 2) for r in ("accuracy", "consistency")])
    fig = plots.plot_advantage_shares(df)
    ax = fig.axes[0]
    assert not [p for p in ax.patches if p.get_zorder() > 0 and p.get_height() != 0]
    assert len([p for p in ax.patches if p.get_zorder() == 0]) == 2  # two grey steps
    assert fig.legends[0].get_texts()[-1].get_text() == "no varying group"


# ---------------------------------------------------------------------------------------------------
# No two labels overlap (matplotlib's renderer measures every text as drawn)
# ---------------------------------------------------------------------------------------------------


def label_overlaps(fig) -> list[str]:
    """Pairs of texts that overlap as drawn: axis labels, titles, the suptitle and legends with each other and
    with any panel's tick labels, and tick labels within one axis. Boxes touching by under a pixel do not count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()
    fig.draw(r)

    def box(artist):
        b = artist.get_window_extent(r)
        return b.expanded((b.width - 1) / max(b.width, 1e-9), (b.height - 1) / max(b.height, 1e-9))

    def shown(t) -> bool:
        return t.get_visible() and bool(t.get_text().strip())

    labels, ticks = [], []  # (name, box); tick labels grouped per axis
    for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
        name = ax.get_title() or f"panel {i}"
        for what, t in (("x label", ax.xaxis.label), ("y label", ax.yaxis.label), ("title", ax.title),
                        ("left title", ax._left_title), ("right title", ax._right_title)):
            if shown(t):
                labels.append((f"{name!r} {what} {t.get_text()!r}", box(t)))
        if ax.get_legend():
            labels.append((f"{name!r} legend", box(ax.get_legend())))
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            ticks.append([(f"{name!r} tick {t.get_text()!r}", box(t)) for t, loc in
                          zip(axis.get_ticklabels(), axis.get_ticklocs()) if shown(t) and lo <= loc <= hi])
    if fig._suptitle is not None and shown(fig._suptitle):
        labels.append((f"suptitle {fig._suptitle.get_text()!r}", box(fig._suptitle)))
    labels += [(f"figure legend {j}", box(lg)) for j, lg in enumerate(fig.legends)]
    out = [f"{a} / {b}" for i, (a, ba) in enumerate(labels) for b, bb in labels[i + 1:] if ba.overlaps(bb)]
    out += [f"{a} / {b}" for a, ba in labels for group in ticks for b, bb in group if ba.overlaps(bb)]
    out += [f"{a} / {b}" for group in ticks for i, (a, ba) in enumerate(group) for b, bb in group[i + 1:]
            if ba.overlaps(bb)]
    return out


def test_the_overlap_check_sees_two_labels_collide() -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(3, 3))
    top.set_ylabel("a y label far too long for a panel this short, running into the next one")
    bottom.set_ylabel("share")
    assert any("y label" in o and "'share'" in o for o in label_overlaps(fig))
    top.set_ylabel("rate")
    fig.tight_layout()
    assert label_overlaps(fig) == []


def extra_figures(tmp_path: Path) -> dict:
    """The figures the demo-like study does not draw: judge panels, the k trade-off, advantage shares, monitors."""
    write_monitored_run(tmp_path / "run")
    log = results.load_training_log(tmp_path / "run")
    k = pd.DataFrame([{"k": kv, "seed": s, "accuracy": 40 + kv + s, results.K_STAND_IN: 0.9 - 0.02 * kv + 0.01 * s}
                      for kv in (1, 5, 10, 20) for s in (0, 1)])
    judge, paper = judge_table(), results.paper_table(REF, "cognitive_behaviours")
    return {"cognitive_behaviours": plots.plot_cognitive_behaviours(judge, paper),
            "faithfulness": plots.plot_faithfulness(judge, results.paper_table(REF, "faithfulness")),
            "k_tradeoff": plots.plot_k_tradeoff(k, x=results.K_STAND_IN),
            "advantage_shares": plots.plot_advantage_shares(log),
            "monitors": plots.plot_monitors(log, results.load_alarm_thresholds(tmp_path / "run")),
            "accuracy_with_paper": plots.plot_accuracy(accuracy_table(), results.paper_table(REF, "accuracy"))}


def test_no_two_labels_overlap_in_any_figure(figures: dict, tmp_path: Path) -> None:
    drawn = {name: fig for name, (fig, _) in figures.items()} | extra_figures(tmp_path)
    assert {name: label_overlaps(fig) for name, fig in drawn.items()} == {name: [] for name in drawn}


def test_the_studys_own_methods_get_readable_names(figures: dict) -> None:
    """The SFT cold start is not a method of the paper's reference, so its label comes from the plots' own map,
    never the folder name."""
    fig, _ = figures["format_by_method"]
    ticks = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
    assert f"{plots.OWN_METHOD_LABELS['sft']} [crpo]" in ticks and "sft [crpo]" not in ticks
