"""Figures: reproduced numbers beside the paper's, answer format, training curves, the k trade-off, lengths.

    from clinical_r1 import plots, results
    from clinical_r1.evaluate import load_paper_reference
    plots.use_style()
    acc = results.collect_eval_results("results/demo")               # tidy accuracy table (percent)
    paper = results.paper_table(load_paper_reference(), "accuracy")
    fig = plots.plot_accuracy(acc, paper)
    plots.save(fig, "figures", "accuracy")                           # figures/accuracy.png + .pdf
    plots.make_all("results/demo", "figures")                        # every figure whose inputs exist

    python -m clinical_r1 figures results/demo --out figures [--paper results/paper_reference.json]

This module only draws. Every plot function takes a tidy ``pandas.DataFrame`` and returns the ``Figure``; the
readers in :mod:`clinical_r1.results` build those tables from ``results/`` files (never from notebook
outputs), and :func:`make_all` joins the two. Figures stay readable in greyscale: the
paper's numbers are hatched, white-filled bars; runs in line plots differ by marker and line style. Every bar
carries its number (a measured 0 a diamond too, a method without a result "not run"), step axes show whole
steps, and a panel whose values are all equal is drawn on a sensible range and marked "constant".

Tidy tables (columns; extra columns are ignored; the readers are in :mod:`clinical_r1.results`):

- accuracy (``collect_eval_results``): ``method, benchmark, accuracy, ci_low, ci_high`` in percent
  (``ci_*`` may be NaN), plus ``majority_accuracy, valid_ratio, mean_tokens, n_questions, path``.
- paper (``paper_table``): ``method, benchmark, accuracy`` for ``"accuracy"``; ``table, method, metric,
  value`` for ``"cognitive_behaviours"`` and ``"faithfulness"``.
- metric panels (``collect_judge_results``): ``table, method, metric, value, ci_low, ci_high``
  (``table`` optional when the frame holds one table only).
- format (``collect_format_results``): ``method, benchmark, format, metric, value`` in percent for
  ``format_compliance``, ``cross_reference`` (text metrics) and ``valid_ratio`` (evaluation).
- training (``load_training_log``): ``run, step, metric, value``; metric names are TRL's log keys
  (``rewards/<fn>/mean``, ``reward``, ``kl``, ``completions/mean_length``, ``frac_reward_zero_std``; SFT:
  ``loss``, ``eval_loss``); :func:`plot_crpo_rewards` and :func:`plot_sft_loss` draw the same table.
- k trade-off: one row per run with ``k`` and the two metric columns (``accuracy`` and, e.g., ``hallucination``);
  several rows per k (seeds) are averaged, their standard deviation drawn as error bars (``k_table``).
- lengths (``collect_lengths``): ``method, n_tokens`` and optionally ``benchmark``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Annotation
from matplotlib.ticker import MaxNLocator

from clinical_r1 import results
from clinical_r1.files import save_figure
from clinical_r1.results import K_STAND_IN, PlotDataError, training_metrics

log = logging.getLogger(__name__)

PAPER_HATCH = "///"  # the paper's numbers: white bars with this hatch
PAPER_DIGITS = 2  # the paper's tables report two decimals; its numbers are labelled as reported
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
METHOD_HATCHES = ("", "..", "xx", "\\\\", "oo", "++", "--", "||")  # per-method texture in box/violin plots
DPI = 200  # PNG resolution
BENCHMARK_NAMES = {"medqa": "MedQA (5 options)", "medqa4": "MedQA (4 options)", "medmcqa": "MedMCQA", "medxpertqa": "MedXpertQA", "pubmedqa": "PubMedQA",
                   "sample": "bundled sample"}
LOWER_IS_BETTER = ("halluc",)  # metric names containing one of these are marked "lower is better"
METRIC_LABELS = {
    K_STAND_IN: "cross-reference reward",
    "reward": "total reward",
    "kl": "KL to reference",
    "completions/mean_length": "completion length (tokens)",
    "accuracy": "accuracy (%)",
    "n_tokens": "response length (tokens)",
    "rewards/completion_length/mean": "completion length (words, weight 0)",
    "frac_reward_zero_std": "share of groups with zero reward std",
    "loss": "train loss",
    "eval_loss": "dev loss",
    "format_compliance": "format compliance (%)",
    "cross_reference": "cross-reference rate (%)",
    "valid_ratio": "valid answers (%)",
}
# Per-step panels: the title names the metric, the y label says what the numbers are, in a word or two (a long
# y label on a 2.6-inch panel runs into the panel below it).
Y_LABELS = {"frac_reward_zero_std": "share of groups", "reward": "weighted sum", "kl": "KL",
            "completions/mean_length": "tokens", "rewards/completion_length/mean": "words", "loss": "loss",
            "eval_loss": "loss"}
K_AXIS_LABELS = {K_STAND_IN: "cross-reference rate at the end of training (judge-free)"}  # the k trade-off's x
TITLE_CHARS = 40  # a panel title longer than this wraps (a 3.4-inch panel at 9 pt)
# Natural range of bounded metrics: a panel whose values are all equal is drawn on this range. Rewards are
# TRL's unweighted per-function means (clinical_r1.rewards: 0/1 scores, clinical_reasoning in {0, 1, 1.5}).
REWARD_RANGES = {"accuracy": (0.0, 1.0), "crpo_format": (0.0, 1.0), "cross_reference": (0.0, 1.0),
                 "consistency": (0.0, 1.0), "format": (0.0, 1.0), "english": (0.0, 1.0),
                 "clinical_reasoning": (0.0, 1.5), "r1_format": (0.0, 1.5)}
METRIC_RANGES = {"frac_reward_zero_std": (0.0, 1.0), "format_rate": (0.0, 1.0), "cross_reference_rate": (0.0, 1.0)}
NON_NEGATIVE = ("kl", "completions/", "length", "n_tokens", "eval_loss")  # a constant panel of these starts at 0
FORMAT_METRICS = ("format_compliance", "cross_reference", "valid_ratio")  # the format_by_method panels


# ---------------------------------------------------------------------------------------------------
# Style and saving
# ---------------------------------------------------------------------------------------------------


def use_style(context: str = "paper", font_scale: float = 1.1) -> None:
    """One look for every figure: seaborn whitegrid, the colour-blind palette, print-sized fonts."""
    import seaborn as sns

    sns.set_theme(context=context, style="whitegrid", palette="colorblind", font_scale=font_scale)
    plt.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": DPI,
        "savefig.bbox": "tight",
        "hatch.linewidth": 0.8,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    })


def _palette(n: int) -> list[tuple[float, float, float]]:
    import seaborn as sns

    return list(sns.color_palette("colorblind", max(n, 1)))


def save(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf`` (atomically: :func:`clinical_r1.files.save_figure`)."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"figure name {name!r}: use letters, digits, '_', '-' and '.' only")
    paths = [save_figure(fig, Path(out_dir) / f"{name}.{ext}", dpi=DPI, bbox_inches="tight") for ext in ("png", "pdf")]
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PlotDataError(f"{what}: the table lacks column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise PlotDataError(f"{what}: the table is empty")


def _unique(df: pd.DataFrame, keys: Sequence[str], what: str) -> None:
    dup = df[df.duplicated(list(keys), keep=False)]
    if not dup.empty:
        pairs = sorted({tuple(r) for r in dup[list(keys)].itertuples(index=False)})
        raise PlotDataError(f"{what}: several rows for {list(keys)} = {pairs[:5]}; one value per bar "
                            f"(average seeds first, e.g. with from_summary)")


def _ordered(values: Iterable[Any], order: Sequence[Any] | None = None) -> list[Any]:
    """Unique values in ``order`` first, then in order of first appearance."""
    seen = list(dict.fromkeys(v for v in values if not (isinstance(v, float) and math.isnan(v))))
    head = [v for v in (order or []) if v in seen]
    return head + [v for v in seen if v not in head]


def _bench_order(values: Iterable[Any], order: Sequence[str] | None = None) -> list[Any]:
    """Benchmarks in ``order``, else the paper's order (MedQA, MedMCQA, MedXpertQA), then the rest as found."""
    return _ordered(values, order or list(BENCHMARK_NAMES))


def _labels(methods: Sequence[str], labels: Mapping[str, str] | None) -> list[str]:
    return [str((labels or {}).get(m, m)) for m in methods]


def pretty_benchmark(name: str) -> str:
    return BENCHMARK_NAMES.get(str(name).lower(), str(name))


def pretty_metric(name: str) -> str:
    """Readable axis label for a metric name (TRL log keys included)."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    m = re.fullmatch(r"rewards/(.+)/mean", name)
    if m:
        return f"{m.group(1).replace('_', ' ')} reward"
    label = name.replace("_", " ")
    return label + " (lower is better)" if is_lower_better(name) else label


def y_label(metric: str) -> str:
    """The short y label of a per-step panel: a reward's panel shows TRL's unweighted mean score."""
    return Y_LABELS.get(metric) or ("mean score" if re.fullmatch(r"rewards/.+/mean", metric) else pretty_metric(metric))


def wrap(text: str, chars: int = TITLE_CHARS) -> str:
    """``text`` broken into lines of at most ``chars`` characters, at spaces."""
    return textwrap.fill(text, chars, break_long_words=False, break_on_hyphens=False)


def is_lower_better(metric: str, extra: Iterable[str] = ()) -> bool:
    m = metric.lower()
    return any(s in m for s in LOWER_IS_BETTER) or metric in set(extra)



def judge_lower_is_better() -> list[str]:
    """Judge metrics where lower is better (``higher_is_better=False`` in :data:`clinical_r1.judge.JUDGE_METRICS`)."""
    from clinical_r1.judge import JUDGE_METRICS

    return [m.name for m in JUDGE_METRICS.values() if not m.higher_is_better]


def _err(df: pd.DataFrame, value: str = "value") -> np.ndarray | None:
    """Asymmetric error bars from ``ci_low``/``ci_high`` (None when the table has none)."""
    if "ci_low" not in df.columns or "ci_high" not in df.columns:
        return None
    lo = (df[value] - df["ci_low"]).to_numpy(dtype=float)
    hi = (df["ci_high"] - df[value]).to_numpy(dtype=float)
    if np.all(np.isnan(lo)) and np.all(np.isnan(hi)):
        return None
    return np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)])


def _source_legend(has_paper: bool, ci: bool = True) -> list[Patch]:
    handles = [Patch(facecolor="0.45", edgecolor="black", label="reproduced" + (" (95% CI)" if ci else ""))]
    if has_paper:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=PAPER_HATCH, label="paper"))
    return handles


def _bars(ax, positions: np.ndarray, values: np.ndarray, height: float, colors: Sequence[Any], *,
          paper: bool, err: np.ndarray | None = None, hatches: Sequence[str] | None = None) -> None:
    """Horizontal bars; missing values (NaN) draw nothing. Reproduced: filled, black edge, CI whiskers.
    Paper: white, hatched in the method's colour. ``hatches``: one per bar (a texture per benchmark)."""
    keep = ~np.isnan(values)
    if not keep.any():
        return
    kw: dict[str, Any] = {"linewidth": 0.8}
    cols = [c for c, k in zip(colors, keep) if k]
    if paper:
        kw.update(color="white", edgecolor=cols, hatch=PAPER_HATCH)
    else:
        kw.update(color=cols, edgecolor="black")
        if err is not None:
            kw.update(xerr=err[:, keep], capsize=3, error_kw={"elinewidth": 0.9, "ecolor": "black"})
    bars = ax.barh(positions[keep], values[keep], height, **kw)
    for bar, h in zip(bars, [h for h, k in zip(hatches or [], keep) if k]):
        bar.set_hatch(h)


def _fmt(v: float, digits: int) -> str:
    return f"{v:.{digits}f}"


def _value_labels(ax, positions: np.ndarray, values: np.ndarray, digits: int, *, lo: np.ndarray | None = None,
                  hi: np.ndarray | None = None, missing: str | None = "n/a", colors: Sequence[Any] | None = None,
                  fontsize: float = 6.5, italic: bool = False) -> None:
    """Each bar's value right of its end (right of its CI whisker when it has one), with ``[lo, hi]`` when
    given; ``missing`` at 0 for a NaN. A value too short to see as a bar (e.g. an accuracy of 0) also gets a
    diamond marker at its value, so a measured 0 never looks like a method that was not run."""
    lim = ax.dataLim
    scale = max(abs(lim.x0), abs(lim.x1)) if np.isfinite([lim.x0, lim.x1]).all() else 0.0
    scale = scale or 1.0  # nothing drawn yet, or only zeros
    for i, (y, v) in enumerate(zip(positions, values)):
        if np.isnan(v):
            if missing:
                ax.annotate(missing, (0, y), xytext=(3, 0), textcoords="offset points", va="center", ha="left",
                            fontsize=fontsize, color="0.35", style="italic")
            continue
        text, end = _fmt(v, digits), v
        if lo is not None and hi is not None and not (np.isnan(lo[i]) or np.isnan(hi[i])):
            text += f" [{_fmt(lo[i], digits)}, {_fmt(hi[i], digits)}]"
            end = max(v, hi[i])
        if abs(v) < 0.01 * scale:
            ax.plot([v], [y], marker="D", markersize=4.5, linestyle="none", markeredgecolor="black",
                    markerfacecolor=colors[i] if colors is not None else "0.45", zorder=4, clip_on=False)
        ax.annotate(text, (end, y), xytext=(4, 0), textcoords="offset points", va="center", ha="left",
                    fontsize=fontsize, color="0.35" if italic else "black", style="italic" if italic else "normal")


def _percent_ticks(ax) -> None:
    """Ticks only on 0-100: the x range may run past 100 to make room for value labels."""
    x0, x1 = ax.get_xlim()
    ax.set_xticks([t for t in ax.get_xticks() if max(0.0, x0) <= t <= min(100.0, x1)])


def _fit_texts(fig: Figure, axes: Iterable[Any], margin: float = 0.02) -> None:
    """Widen each panel's x range (to the right) until its value labels fit inside it; the left edge moves a
    little below 0 so a bar or marker at 0 stands clear of the axis line."""
    for ax in axes:
        x0, x1 = ax.get_xlim()
        if x0 == 0:
            x0 = -0.02 * (x1 - x0)
        width = ax.get_window_extent().width
        need = x1 - x0
        for t in ax.texts:
            if not isinstance(t, Annotation) or t.xycoords != "data":
                continue
            room = width * (1 - margin) - t.xyann[0] * fig.dpi / 72 - t.get_window_extent().width
            if room > 0:
                need = max(need, (t.xy[0] - x0) * width / room)
        ax.set_xlim(x0, x0 + need)


def metric_range(metric: str) -> tuple[float, float] | None:
    """The natural range of a bounded metric (a reward function's scores, a rate), else None."""
    m = re.fullmatch(r"rewards/(.+)/mean", metric)
    if m:
        return REWARD_RANGES.get(m.group(1))
    return METRIC_RANGES.get(metric)


def constant_limits(value: float, metric: str = "") -> tuple[float, float]:
    """Axis limits for a panel whose values all equal ``value``: the metric's natural range when it is
    bounded (a rate in [0, 1], a reward), else ``value ± max(10% of |value|, 0.1)``, kept >= 0 for
    metrics that cannot be negative. Never matplotlib's meaningless ``value ± 0.05``."""
    rng = metric_range(metric)
    if rng is not None and rng[0] <= value <= rng[1]:
        lo, hi = rng
    else:
        half = max(abs(value) * 0.1, 0.1)
        lo, hi = value - half, value + half
        if value >= 0 and lo < 0 and any(s in metric for s in NON_NEGATIVE):
            lo = 0.0
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def _mark_constant(ax, values: Iterable[float], metric: str = "") -> bool:
    """When every value drawn in ``ax`` is equal: sensible y limits (:func:`constant_limits`) and a
    "constant = v" note on the side of the panel away from the line. Returns whether it was constant."""
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=float)
    if v.size == 0 or np.ptp(v) > 1e-9 * max(1.0, float(np.max(np.abs(v)))):
        return False
    c = float(v[0])
    lo, hi = constant_limits(c, metric)
    ax.set_ylim(lo, hi)
    top = (c - lo) / (hi - lo) < 0.5
    ax.text(0.97, 0.94 if top else 0.06, f"constant = {c:.3g}", transform=ax.transAxes, ha="right",
            va="top" if top else "bottom", fontsize=7, color="0.3", style="italic")
    return True


def _panels(df: pd.DataFrame, paper: pd.DataFrame | None, panel: str, value: str, panels: list[Any],
            methods: list[str], titles: Sequence[str], xlabels: Sequence[str], labels: Mapping[str, str] | None,
            title: str | None, digits: int = 2, missing: str = "n/a") -> Figure:
    """One panel per ``panel`` value (columns), one row per method (paper order, top down): a reproduced bar
    (value and 95% CI written beside it) above a paper bar (its value beside it). The layout of the paper's
    tables, readable in greyscale; ``missing`` marks a method without a reproduced number."""
    colors = dict(zip(methods, _palette(len(methods))))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 2.4, 0.5 * len(methods) + 1.8),
                             sharey=True, squeeze=False)
    height = 0.4 if paper is not None else 0.7
    shift = -height / 2 if paper is not None else 0.0
    y = np.arange(len(methods), dtype=float)
    cols = [colors[m] for m in methods]
    for ax, key, t, xl in zip(axes[0], panels, titles, xlabels):
        rep = df[df[panel] == key].set_index("method").reindex(methods)
        vals = rep[value].to_numpy(dtype=float)
        _bars(ax, y + shift, vals, height, cols, paper=False, err=_err(rep.reset_index(), value))
        if paper is not None:  # both sets of bars first: a value is "too short to see" against the whole panel
            ref = paper[paper[panel] == key].set_index("method").reindex(methods)[value].to_numpy(dtype=float)
            _bars(ax, y + height / 2, ref, height, cols, paper=True)
            _value_labels(ax, y + height / 2, ref, PAPER_DIGITS, missing=None, italic=True)
        ci = ("ci_low" in rep.columns and "ci_high" in rep.columns)
        _value_labels(ax, y + shift, vals, digits, lo=rep["ci_low"].to_numpy(dtype=float) if ci else None,
                      hi=rep["ci_high"].to_numpy(dtype=float) if ci else None, missing=missing, colors=cols)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel(xl)
        ax.set_yticks(y, _labels(methods, labels))
    axes[0][0].set_ylabel("method")
    axes[0][0].invert_yaxis()  # shared y: the first method on top, as in the paper's tables
    fig.legend(handles=_source_legend(paper is not None), loc="lower center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.55 / fig.get_figheight(), 1, 1))
    _fit_texts(fig, axes[0])
    return fig


# ---------------------------------------------------------------------------------------------------
# Accuracy per benchmark and method
# ---------------------------------------------------------------------------------------------------


def plot_accuracy(df: pd.DataFrame, paper: pd.DataFrame | None = None, order: Sequence[str] | None = None,
                  benchmarks: Sequence[str] | None = None, xlabel: str = "accuracy (%)",
                  labels: Mapping[str, str] | None = None, title: str | None = None) -> Figure:
    """One panel per benchmark, one row per method: a filled bar (reproduced, with its 95% CI) above a
    white hatched bar (the paper's reported number, no interval); every number is written beside its bar
    (reproduced: ``value [low, high]``, paper: in italics). A reproduced 0 gets a diamond at 0 and its label;
    "not run" marks a method without a result. Intervals are clipped to [0, 100].

    ``df``: ``method, benchmark, accuracy`` (+ ``ci_low, ci_high``), percent. ``paper``: ``method,
    benchmark, accuracy`` (:func:`results.paper_table` of ``"accuracy"``), or None. ``order``: method order (e.g.
    :func:`results.paper_methods`); ``labels``: method name → tick label (e.g. the reference's ``method_labels``).
    """
    _require(df, ("method", "benchmark", "accuracy"), "plot_accuracy")
    _unique(df, ("method", "benchmark"), "plot_accuracy")
    if paper is not None:
        _require(paper, ("method", "benchmark", "accuracy"), "plot_accuracy paper table")
        _unique(paper, ("method", "benchmark"), "plot_accuracy paper table")
    both = pd.concat([paper, df]) if paper is not None else df
    methods = _ordered(both["method"], order)
    benches = _bench_order(both["benchmark"], benchmarks)
    df = df.copy()
    for c in ("ci_low", "ci_high"):  # a t-interval over a few seeds can leave [0, 100]; accuracy cannot
        if c in df.columns:
            df[c] = df[c].astype(float).clip(0.0, 100.0)
    fig = _panels(df, paper, "benchmark", "accuracy", benches, methods, [pretty_benchmark(b) for b in benches],
                  [xlabel] * len(benches), labels, title, digits=1, missing="not run")
    for ax in fig.axes:
        _percent_ticks(ax)
    return fig


# ---------------------------------------------------------------------------------------------------
# Methods × metrics panels (the paper's tables)
# ---------------------------------------------------------------------------------------------------


def plot_metric_panel(df: pd.DataFrame, paper: pd.DataFrame | None = None, metrics: Sequence[str] | None = None,
                      order: Sequence[str] | None = None, lower_is_better: Iterable[str] = (),
                      title: str | None = None, xlabel: str = "score", labels: Mapping[str, str] | None = None,
                      metric_labels: Mapping[str, str] | None = None) -> Figure:
    """The layout of a paper table: one panel per metric (columns, the paper's order), one row per method
    (rows, top down). Reproduced bars are filled with their CI; paper bars white and hatched. A metric that
    is better when lower gets "↓ lower is better" in its title, the others "↑ higher is better".

    ``df``: ``method, metric, value`` (+ ``ci_low, ci_high``). ``paper``: ``method, metric, value``.
    ``labels`` / ``metric_labels``: display names of methods / metrics.
    """
    _require(df, ("method", "metric", "value"), "plot_metric_panel")
    _unique(df, ("method", "metric"), "plot_metric_panel")
    if paper is not None:
        _require(paper, ("method", "metric", "value"), "plot_metric_panel paper table")
        _unique(paper, ("method", "metric"), "plot_metric_panel paper table")
    both = pd.concat([paper, df]) if paper is not None else df
    methods = _ordered(both["method"], order)
    names = _ordered(both["metric"], metrics)
    lower = set(lower_is_better)
    titles = []
    for metric in names:
        name = (metric_labels or {}).get(metric, metric.replace("_", " ")).replace(" (lower is better)", "")
        titles.append(name + ("\n↓ lower is better" if is_lower_better(metric, lower) else "\n↑ higher is better"))
    return _panels(df, paper, "metric", "value", names, methods, titles, [xlabel] * len(names), labels, title)


def _table_rows(df: pd.DataFrame | None, table: str) -> pd.DataFrame | None:
    if df is None or "table" not in df.columns:
        return df
    return df[df["table"] == table]


def plot_cognitive_behaviours(df: pd.DataFrame, paper: pd.DataFrame | None = None, **kw: Any) -> Figure:
    """The four cognitive behaviours (verification, backtracking, subgoal setting, backward chaining), in
    mean count per response, reproduced vs paper. Rows of a ``table`` column other than
    ``cognitive_behaviours`` are left out."""
    kw.setdefault("title", "Cognitive behaviours")
    kw.setdefault("xlabel", "mean count per response")
    return plot_metric_panel(_table_rows(df, "cognitive_behaviours"), _table_rows(paper, "cognitive_behaviours"), **kw)


def plot_faithfulness(df: pd.DataFrame, paper: pd.DataFrame | None = None, **kw: Any) -> Figure:
    """The four faithfulness metrics, reproduced vs paper; hallucination (and any metric the judge marks
    ``higher_is_better=False``) is marked lower-is-better."""
    kw["lower_is_better"] = set(kw.get("lower_is_better", ())) | set(judge_lower_is_better())
    kw.setdefault("title", "Medical faithfulness")
    kw.setdefault("xlabel", "score")
    return plot_metric_panel(_table_rows(df, "faithfulness"), _table_rows(paper, "faithfulness"), **kw)


# ---------------------------------------------------------------------------------------------------
# Answer format per method
# ---------------------------------------------------------------------------------------------------


def plot_format_by_method(df: pd.DataFrame, order: Sequence[str] | None = None,
                          benchmarks: Sequence[str] | None = None, metrics: Sequence[str] = FORMAT_METRICS,
                          labels: Mapping[str, str] | None = None,
                          title: str | None = "Answer format per method") -> Figure:
    """One panel per metric (format compliance, cross-reference rate, valid answers; percent on a fixed
    0-100 axis), one row per method, one bar per benchmark (colour and hatch per benchmark), each value
    written beside its bar; "n/a" where a metric is undefined (no cross-reference in an untagged format)
    or was not measured. With a ``format`` column each method's tick label names the answer format its
    compliance was checked against (each method's own prompt format).

    ``df``: ``method, benchmark, metric, value`` (+ ``format``), :func:`results.collect_format_results`.
    """
    _require(df, ("method", "benchmark", "metric", "value"), "plot_format_by_method")
    _unique(df, ("method", "benchmark", "metric"), "plot_format_by_method")
    methods = _ordered(df["method"], order)
    benches = _bench_order(df["benchmark"], benchmarks)
    names = [m for m in metrics if m in set(df["metric"])]
    if not names:
        raise PlotDataError(f"plot_format_by_method: none of {list(metrics)} among {sorted(set(df['metric']))}")
    ticks = _labels(methods, labels)
    if "format" in df.columns:
        fmts = df.dropna(subset=["format"]).groupby("method")["format"].agg(lambda f: "/".join(dict.fromkeys(f)))
        ticks = [f"{t} [{fmts[m]}]" if m in fmts.index else t for t, m in zip(ticks, methods)]
    colors = _palette(len(benches))
    hatches = [METHOD_HATCHES[j % len(METHOD_HATCHES)] for j in range(len(benches))]
    nb = len(benches)
    row = 0.2 * nb + 0.3  # inches per method
    legend_h = _legend_height(nb, min(4, nb))
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names) + 2.6, row * len(methods) + 1.4 + legend_h),
                             sharey=True, squeeze=False)
    y = np.arange(len(methods), dtype=float)
    h = 0.84 / nb
    for ax, metric in zip(axes[0], names):
        for j, bench in enumerate(benches):
            vals = (df[(df["metric"] == metric) & (df["benchmark"] == bench)].set_index("method").reindex(methods)
                    ["value"].to_numpy(dtype=float))
            pos = y - 0.42 + h * (j + 0.5)
            _bars(ax, pos, vals, h * 0.92, [colors[j]] * len(methods), paper=False, hatches=[hatches[j]] * len(methods))
            _value_labels(ax, pos, vals, 0, missing="n/a", colors=[colors[j]] * len(methods), fontsize=6)
        ax.set_xlim(0, 100)
        ax.grid(axis="y", visible=False)  # a grid line would cut through each method's group of bars
        note = ""
        if metric == "cross_reference" and df.loc[df["metric"] == metric, "value"].isna().any():
            note = "\n(n/a: untagged answer format)"
        elif metric == "format_compliance" and "format" in df.columns:
            note = "\n(to the answer format in [ ])"
        ax.set_title(pretty_metric(metric).replace(" (%)", "") + note, fontsize=9)
        ax.set_xlabel("% of responses" if metric != "valid_ratio" else "% of answers")
        ax.set_yticks(y, ticks)
    axes[0][0].set_ylabel("method")
    axes[0][0].invert_yaxis()
    handles = [Patch(facecolor=c, edgecolor="black", hatch=hh, label=pretty_benchmark(b))
               for b, c, hh in zip(benches, colors, hatches)]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, nb), bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    _fit_texts(fig, axes[0])
    for ax in axes[0]:
        _percent_ticks(ax)
    return fig


# ---------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------


def reward_components(df: pd.DataFrame) -> list[str]:
    """The ``rewards/<fn>/mean`` metrics logged (TRL's unweighted per-function means), in order of appearance."""
    return [m for m in dict.fromkeys(df["metric"]) if re.fullmatch(r"rewards/.+/mean", m)]


def rl_runs(df: pd.DataFrame) -> list[str]:
    """Runs that logged reward components (GRPO/CRPO training)."""
    return _ordered(df.loc[df["metric"].str.fullmatch(r"rewards/.+/mean"), "run"])


def sft_runs(df: pd.DataFrame) -> list[str]:
    """Runs that logged a train or dev loss but no reward (SFT)."""
    rl = set(rl_runs(df))
    return [r for r in _ordered(df.loc[df["metric"].isin(["loss", "eval_loss"]), "run"]) if r not in rl]


def _step_axis(ax) -> None:
    """Optimizer steps are whole numbers: integer ticks only (never 1.2, 1.4, ...)."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, min_n_ticks=1))
    ax.set_xlabel("step")


def _run_style(i: int) -> dict[str, Any]:
    """Run ``i``'s line: its own style and marker, drawn a little thinner and smaller than the runs before it,
    so a run whose curve coincides with an earlier one still shows both."""
    return {"linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)],
            "markersize": max(3.0, 6.0 - 1.2 * i), "linewidth": max(0.9, 2.0 - 0.5 * i)}


def _legend_height(n: int, ncol: int) -> float:
    """Inches a figure legend of ``n`` entries in ``ncol`` columns needs below the panels."""
    return 0.3 + 0.22 * math.ceil(n / ncol) if n else 0.0


def plot_training_curves(df: pd.DataFrame, metrics: Sequence[str] | None = None, smooth: int = 1,
                         ncols: int = 3, title: str | None = None) -> Figure:
    """One panel per reward component, then total reward, KL and completion length; one line per run
    (distinct line style and marker). ``smooth`` > 1 draws a centred rolling mean of that many steps.
    Steps are integer ticks; a panel whose values are all equal gets a sensible range and "constant = v".

    ``df``: ``run, step, metric, value`` (:func:`results.load_training_log`, several runs concatenated).
    """
    _require(df, ("run", "step", "metric", "value"), "plot_training_curves")
    names = list(metrics) if metrics is not None else training_metrics(df)
    if not names:
        raise PlotDataError(f"plot_training_curves: no reward, KL or length metrics among {sorted(set(df['metric']))}")
    runs = _ordered(df.loc[df["metric"].isin(names), "run"])
    if not runs:
        raise PlotDataError(f"plot_training_curves: no run logged any of {names}")
    colors = dict(zip(runs, _palette(len(runs))))
    nrows = math.ceil(len(names) / ncols)
    width = 3.4 * min(ncols, len(names))
    legend_h = _legend_height(len(runs), 3) if len(runs) > 1 else 0.0
    top_h = 0.4 if title else 0.0
    fig, axes = plt.subplots(nrows, min(ncols, len(names)), figsize=(width, 2.6 * nrows + legend_h + top_h),
                             squeeze=False)
    flat = axes.ravel()
    for ax, metric in zip(flat, names):
        drawn: list[float] = []
        for i, run in enumerate(runs):
            d = df[(df["run"] == run) & (df["metric"] == metric)].sort_values("step")
            if d.empty:
                continue
            v = d["value"].astype(float)
            if smooth > 1:
                v = v.rolling(smooth, center=True, min_periods=1).mean()
            ax.plot(d["step"], v, markevery=max(1, len(d) // 8), color=colors[run], label=str(run),
                    **_run_style(i))
            drawn += list(v)
        _mark_constant(ax, drawn, metric)
        ax.set_title(wrap(pretty_metric(metric)), fontsize=9)
        ax.set_ylabel(y_label(metric))
        _step_axis(ax)
    for ax in flat[len(names):]:
        ax.set_visible(False)
    if len(runs) > 1:  # below the panels, never over the data
        handles = [Line2D([], [], color=colors[r], label=str(r), **_run_style(i)) for i, r in enumerate(runs)]
        fig.legend(handles=handles, loc="lower center", ncol=min(3, len(runs)), bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title)
    h = fig.get_figheight()
    fig.tight_layout(rect=(0, legend_h / h, 1, 1))
    return fig


def plot_crpo_rewards(df: pd.DataFrame, smooth: int = 1, ncols: int = 3) -> Figure:
    """CRPO's reward components per step, one panel each (TRL's unweighted per-function means, so a 0/1
    score reads as a rate), then ``frac_reward_zero_std`` (the share of prompt groups whose completions all
    scored alike: no learning signal); one line per RL run. ``df`` as for :func:`plot_training_curves`."""
    _require(df, ("run", "step", "metric", "value"), "plot_crpo_rewards")
    names = reward_components(df) + [m for m in ("frac_reward_zero_std",) if m in set(df["metric"])]
    if not reward_components(df):
        raise PlotDataError(f"plot_crpo_rewards: no rewards/<fn>/mean among {sorted(set(df['metric']))}")
    return plot_training_curves(df, names, smooth=smooth, ncols=ncols,
                                title="Reward components per step (unweighted means)")


def plot_sft_loss(df: pd.DataFrame, runs: Sequence[str] | None = None) -> Figure:
    """SFT train loss (``loss``, solid) and dev loss (``eval_loss``, dashed, square markers) per step; one
    colour per run. ``df``: ``run, step, metric, value`` (:func:`results.load_training_log`)."""
    _require(df, ("run", "step", "metric", "value"), "plot_sft_loss")
    runs = list(runs) if runs is not None else sft_runs(df)
    if not runs:
        raise PlotDataError("plot_sft_loss: no run logged 'loss' or 'eval_loss' without rewards")
    colors = dict(zip(runs, _palette(len(runs))))
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    handles, drawn = [], []
    for run in runs:
        for metric, ls, mk, split in (("loss", "-", "o", "train"), ("eval_loss", "--", "s", "dev")):
            d = df[(df["run"] == run) & (df["metric"] == metric)].sort_values("step")
            if d.empty:
                continue
            label = split if len(runs) == 1 else f"{run}: {split}"
            ax.plot(d["step"], d["value"], linestyle=ls, marker=mk, markersize=4, markevery=max(1, len(d) // 12),
                    color=colors[run])
            handles.append(Line2D([], [], color=colors[run], linestyle=ls, marker=mk, label=label))
            drawn += list(d["value"].astype(float))
    _mark_constant(ax, drawn, "loss")
    _step_axis(ax)
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("SFT cold start: train and dev loss" + (f" ({runs[0]})" if len(runs) == 1 else ""), fontsize=10)
    ncol = min(4, len(handles))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, bbox_to_anchor=(0.5, 0.0))
    legend_h = _legend_height(len(handles), ncol)
    fig.set_figheight(fig.get_figheight() + legend_h)
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    return fig


# ---------------------------------------------------------------------------------------------------
# Inside a multi-objective run: advantage shares and reward-hacking monitors (clinical_r1.monitors)
# ---------------------------------------------------------------------------------------------------


def share_runs(df: pd.DataFrame) -> list[str]:
    """Runs with the step monitor (GRPO/CRPO): they log ``reward_varies/<reward>`` every step, and
    ``advantage_share/<reward>`` on the steps where some group varied."""
    return _ordered(df.loc[df["metric"].str.startswith(("advantage_share/", "reward_varies/")), "run"])


def plot_advantage_shares(df: pd.DataFrame, runs: Sequence[str] | None = None, ncols: int = 2) -> Figure:
    """Which reward drives the advantage: per run, each weighted reward's share of the advantage variance
    (``advantage_share/<r>``, mean over prompt groups of Cov(part, A) / Var(A)) stacked over steps (a stepped
    area: one block per step). Shares sum to
    1; a reward that pulls against the total has a negative share, stacked below 0. A step with no varying group
    logs no shares and shows as a gap. ``df``: ``run, step, metric, value`` (:func:`results.load_training_log`)."""
    _require(df, ("run", "step", "metric", "value"), "plot_advantage_shares")
    runs = list(runs) if runs is not None else share_runs(df)
    if not runs:
        raise PlotDataError("plot_advantage_shares: no run logged advantage_share/<reward> or reward_varies/<reward>")
    names = list(dict.fromkeys(m.split("/", 1)[1] for m in df["metric"]
                               if m.startswith(("advantage_share/", "reward_varies/"))))
    colors = dict(zip(names, _palette(len(names))))
    hatches = dict(zip(names, METHOD_HATCHES))
    cols = min(ncols, len(runs))
    nrows = math.ceil(len(runs) / cols)
    legend_h = _legend_height(len(names), 4)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.2 * nrows + legend_h), squeeze=False)
    for ax, run in zip(axes.ravel(), runs):
        d = df[(df["run"] == run) & df["metric"].str.startswith("advantage_share/")]
        wide = d.pivot_table(index="step", columns="metric", values="value", aggfunc="mean")
        steps = np.arange(int(df.loc[df["run"] == run, "step"].min()), int(df.loc[df["run"] == run, "step"].max()) + 1)
        wide = wide.reindex(steps)
        gaps = wide.isna().all(axis=1).to_numpy()
        pos_base, neg_base = np.zeros(len(steps)), np.zeros(len(steps))
        for name in names:
            v = wide.get(f"advantage_share/{name}", pd.Series(np.nan, index=steps)).fillna(0.0).to_numpy()
            v = np.where(gaps, np.nan, v)  # a step without shares is a gap, not a zero
            for part, base in ((np.clip(v, 0, None), pos_base), (np.clip(v, None, 0), neg_base)):
                if not np.nan_to_num(part).any():
                    continue
                ok = ~np.isnan(part)  # a stepped stacked area: one full-width block per step
                ax.bar(steps[ok], part[ok], bottom=base[ok], width=1.0, color=colors[name], hatch=hatches[name],
                       edgecolor="white", linewidth=0.4)
                base[:] = base + part
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.axhline(0.0, color="0.4", linewidth=0.6)
        for x in steps[gaps]:
            ax.axvspan(x - 0.5, x + 0.5, color="0.92", zorder=0)
        ax.set_xlim(steps[0] - 0.5, steps[-1] + 0.5)
        ax.set_ylabel("share of advantage variance")
        ax.set_title(str(run), fontsize=9)
        _step_axis(ax)
    for ax in axes.ravel()[len(runs):]:
        ax.set_visible(False)
    handles = [Patch(facecolor=colors[n], hatch=hatches[n], edgecolor="white", label=n) for n in names]
    handles.append(Patch(facecolor="0.92", label="no varying group"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Which reward drives the advantage (shares sum to 1)")
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    return fig


def monitor_metrics(df: pd.DataFrame) -> list[str]:
    """The ``monitor/*`` metrics logged, in :data:`clinical_r1.monitors.MONITORS` order."""
    from clinical_r1.monitors import MONITORS, PREFIX

    present = set(df["metric"])
    return [PREFIX + m for m in MONITORS if PREFIX + m in present]


def plot_monitors(df: pd.DataFrame, thresholds: Mapping[str, Any] | None = None, ncols: int = 4) -> Figure:
    """The reward-hacking monitors per step, one panel each (one line per run), the training config's threshold as a
    dashed red line and every step above it as a red cross (an upward crossing is an alarm in ``metrics.json``).
    ``df``: ``run, step, metric, value``; ``thresholds``: monitor name -> value
    (:func:`results.load_alarm_thresholds`)."""
    from clinical_r1.monitors import PREFIX

    _require(df, ("run", "step", "metric", "value"), "plot_monitors")
    names = monitor_metrics(df)
    if not names:
        raise PlotDataError("plot_monitors: no monitor/<name> metrics logged")
    thresholds = dict(thresholds or {})
    runs = _ordered(df.loc[df["metric"].isin(names), "run"])
    colors = dict(zip(runs, _palette(len(runs))))
    cols = min(ncols, len(names))
    nrows = math.ceil(len(names) / cols)
    legend_h = _legend_height(len(runs) + 1, 3)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows + legend_h), squeeze=False)
    for ax, metric in zip(axes.ravel(), names):
        t = thresholds.get(metric[len(PREFIX):])
        for i, run in enumerate(runs):
            d = df[(df["run"] == run) & (df["metric"] == metric)].sort_values("step")
            if d.empty:
                continue
            ax.plot(d["step"], d["value"], color=colors[run], **_run_style(i))
            if t is not None:
                hot = d[d["value"] > t]
                ax.scatter(hot["step"], hot["value"], marker="x", s=60, color="tab:red", zorder=4)
        if t is not None:
            ax.axhline(t, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(metric[len(PREFIX):].replace("_", " "), fontsize=9)
        _step_axis(ax)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[r], label=str(r), **_run_style(i)) for i, r in enumerate(runs)]
    handles.append(Line2D([], [], color="tab:red", linestyle="--", marker="x", label="threshold / above it"))
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("Reward-hacking monitors (definitions: clinical_r1.monitors.MONITORS)")
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    return fig


def pareto_front(x: Sequence[float], y: Sequence[float], x_lower_is_better: bool = False) -> np.ndarray:
    """Boolean mask of the points no other point beats on both axes (higher y, and higher x unless
    ``x_lower_is_better``): the Pareto-optimal choices."""
    xs = -np.asarray(x, float) if x_lower_is_better else np.asarray(x, float)
    ys = np.asarray(y, float)
    return np.array([not any((xs[j] >= xs[i]) and (ys[j] >= ys[i]) and ((xs[j] > xs[i]) or (ys[j] > ys[i]))
                             for j in range(len(xs))) for i in range(len(xs))])


# ---------------------------------------------------------------------------------------------------
# The k trade-off
# ---------------------------------------------------------------------------------------------------


def plot_k_tradeoff(df: pd.DataFrame, x: str, y: str = "accuracy", k: str = "k",
                    lower_is_better: Iterable[str] = ()) -> Figure:
    """Accuracy against a faithfulness metric, one point per accuracy weight k (mean over seeds, error
    bars ±1 standard deviation when a k has several runs), joined in k order and annotated ``k=…``; the
    Pareto-optimal k (no other k has both higher accuracy and better faithfulness) are ringed in red.

    ``df``: one row per run with columns ``k``, ``x`` and ``y`` (e.g. a pivot of the ablation summary).
    """
    _require(df, (k, x, y), "plot_k_tradeoff")
    d = df[[k, x, y]].dropna()
    if d.empty:
        raise PlotDataError(f"plot_k_tradeoff: no row has all of {k}, {x}, {y}")
    g = d.groupby(k).agg(xm=(x, "mean"), xs=(x, "std"), ym=(y, "mean"), ys=(y, "std"), n=(y, "size")).sort_index()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.plot(g["xm"], g["ym"], linestyle="--", color="0.5", linewidth=1, zorder=1)
    has_sd = (g["n"] > 1).any()
    ax.errorbar(g["xm"], g["ym"], xerr=g["xs"].fillna(0) if has_sd else None, yerr=g["ys"].fillna(0) if has_sd else None,
                fmt="none", ecolor="black", elinewidth=0.8, capsize=3, zorder=2)
    for i, (kv, row) in enumerate(g.iterrows()):
        ax.scatter(row["xm"], row["ym"], marker=MARKERS[i % len(MARKERS)], s=55, color=_palette(len(g))[i],
                   edgecolor="black", zorder=3)
        label = f"k={kv:g}" if isinstance(kv, (int, float, np.number)) else f"k={kv}"
        ax.annotate(label, (row["xm"], row["ym"]), xytext=(6, 5), textcoords="offset points", fontsize=8)
    front = pareto_front(g["xm"], g["ym"], is_lower_better(x, lower_is_better))
    ax.scatter(g["xm"][front], g["ym"][front], s=190, facecolors="none", edgecolors="tab:red", linewidths=1.5,
               zorder=4, label="Pareto-optimal k")
    ax.legend(loc="best", fontsize=7, frameon=False)
    xl = K_AXIS_LABELS.get(x) or pretty_metric(x)
    if is_lower_better(x, lower_is_better) and "lower is better" not in xl:
        xl += " (lower is better)"
    ax.set_xlabel(wrap(xl, 48))
    ax.set_ylabel(pretty_metric(y))
    ax.set_title("accuracy weight k" + (" (mean ± sd over seeds)" if has_sd else ""), fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------
# Response length
# ---------------------------------------------------------------------------------------------------


def plot_response_length(df: pd.DataFrame, kind: str = "box", order: Sequence[str] | None = None,
                         value: str = "n_tokens", labels: Mapping[str, str] | None = None) -> Figure:
    """Distribution of response length per method (horizontal box or violin, one row per method), one panel
    per benchmark when the table has a ``benchmark`` column; each method also gets its own hatch, so
    greyscale prints stay readable.

    ``df``: ``method, n_tokens`` (+ ``benchmark``), one row per response (:func:`results.collect_lengths`).
    """
    import seaborn as sns

    if kind not in ("box", "violin"):
        raise ValueError(f"kind must be 'box' or 'violin', got {kind!r}")
    _require(df, ("method", value), "plot_response_length")
    methods = _ordered(df["method"], order)
    benches = _bench_order(df["benchmark"]) if "benchmark" in df.columns else [None]
    colors = _palette(len(methods))
    fig, axes = plt.subplots(1, len(benches), figsize=(3.0 * len(benches) + 2.4, 0.45 * len(methods) + 1.5),
                             sharey=True, squeeze=False)
    for ax, bench in zip(axes[0], benches):
        d = df if bench is None else df[df["benchmark"] == bench]
        draw = sns.boxplot if kind == "box" else sns.violinplot
        extra = {"fliersize": 2} if kind == "box" else {"cut": 0, "inner": "quartile"}
        draw(data=d, y="method", x=value, hue="method", order=methods, hue_order=methods, palette=colors,
             legend=False, ax=ax, linewidth=0.8, orient="h", **extra)
        shapes = ax.patches if kind == "box" else ax.collections
        present = [m for m in methods if m in set(d["method"])]
        for shape, m in zip(shapes, present):
            shape.set_hatch(METHOD_HATCHES[methods.index(m) % len(METHOD_HATCHES)])
            shape.set_edgecolor("black")
        ax.set_title(pretty_benchmark(bench) if bench is not None else "", fontsize=9)
        ax.set_yticks(range(len(methods)), _labels(methods, labels))  # horizontal: long names stay readable
        ax.set_ylabel("method" if ax is axes[0][0] else "")
        ax.set_xlabel(pretty_metric(value))
    fig.tight_layout()
    return fig

# ---------------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------------


# tick labels of the recipes' own methods, which the paper's reference (``method_labels``) does not name
OWN_METHOD_LABELS = {"sft": "Cold start (SFT) alone", "baseline_crpo_prompt": "Base model + crpo prompt (control)"}

EFFECT_LABELS = {"reward_without_accuracy": "reward without accuracy\n(what RL can teach here)",
                 "reward": "total reward", "valid": "valid answers"}


def plot_rl_effect(effects: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None) -> Figure:
    """The held-out RL effect of each arm (:mod:`clinical_r1.rleffect`): one panel per arm, one row per reward
    component of that arm's own preset (plus the total, the total without accuracy and the valid ratio), the
    paired difference trained policy minus cold start with its 95% bootstrap CI; the before → after means are
    written beside each row. A difference whose CI lies above 0 is drawn filled, one that crosses 0 hollow."""
    table = results.effect_table(effects)
    if table.empty:
        raise PlotDataError("no held-out RL effects to plot (run notebook 05 with probe_runs)")
    arms = list(dict.fromkeys(table["arm"]))
    rows = max(table.groupby("arm").size())
    fig, axes = plt.subplots(1, len(arms), figsize=(6.2 * len(arms), 0.62 * rows + 1.6), squeeze=False)
    colors = _palette(len(arms))
    for ax, arm, color in zip(axes[0], arms, colors):
        t = table[table["arm"] == arm].reset_index(drop=True)
        y = np.arange(len(t))[::-1]
        for yi, r in zip(y, t.itertuples()):
            above = r.ci_low > 0
            ax.errorbar(r.diff, yi, xerr=[[r.diff - r.ci_low], [r.ci_high - r.diff]], fmt="o", ms=7, capsize=4,
                        color=color, mfc=color if above else "white", mew=1.6)
        ax.axvline(0, color="0.3", lw=1, ls="--")
        names = []
        for r in t.itertuples():
            w = "" if r.weight is None or (isinstance(r.weight, float) and math.isnan(r.weight)) else f" (×{r.weight:g})"
            names.append(f"{EFFECT_LABELS.get(r.component, r.component.replace('_', ' '))}{w}\n"
                         f"{r.before:.2f} → {r.after:.2f}")
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=9)
        ax.set_ylim(-0.6, len(t) - 0.4)
        ax.set_xlabel("trained − cold start (paired, 95% CI)")
        e = effects[arm]
        n_q, n_s = int(t["n_questions"].iloc[0]), int(t["n_samples"].iloc[0])
        ax.set_title(f"{(labels or {}).get(arm, arm)}\n{n_q} held-out questions × {n_s} samples, "
                     f"T = {e['temperature']:g}", fontsize=10)
    from matplotlib.lines import Line2D

    key = [Line2D([], [], marker="o", ls="", ms=7, color="0.3", mfc="0.3", label="95% CI above 0"),
           Line2D([], [], marker="o", ls="", ms=7, color="0.3", mfc="white", mew=1.6, label="95% CI not above 0")]
    axes[0][-1].legend(handles=key, loc="lower right", fontsize=8, frameon=True)
    fig.suptitle("Held-out effect of RL: does each arm move toward its own reward?", y=1.0)
    fig.tight_layout()
    return fig


def make_all(results_dir: str | os.PathLike, out_dir: str | os.PathLike,
             paper_reference: str | os.PathLike | Mapping[str, Any] | None = None,
             method_map: Mapping[str, str] | None = None, ablation_summary: str | os.PathLike | None = None,
             comparison_group: str | None = "2x2", k_metric: str | None = None,
             judge_benchmark: str | None = None) -> dict[str, list[Path]]:
    """Every figure whose inputs exist, saved under ``out_dir``; returns name → [png, pdf].

    The judged panels show one benchmark (as the paper's tables): ``judge_benchmark``, else MedMCQA when
    judged (the paper's choice), else the first judged benchmark by name.

    Figures: ``accuracy``, ``cognitive_behaviours``, ``faithfulness``, ``format_by_method`` (format
    compliance, cross-reference rate, valid answers), ``training_curves``, ``crpo_rewards`` (reward components
    and ``frac_reward_zero_std`` of every RL run), ``advantage_shares`` (which reward drives the advantage, per
    RL run), ``monitors`` (reward-hacking monitors with the training config's thresholds), ``sft_loss``,
    ``response_length``, ``rl_effect`` (each RL arm's held-out effect on its own reward components),
    ``k_tradeoff`` (Pareto-optimal k ringed).

    Inputs: the evaluation, text-metric, judge, training and generation files under ``results_dir`` (a recipe
    run), and optionally the grid's ``summary.csv`` (``ablation_summary``): its ``comparison_group`` variants
    (the paper's 2×2, seed-averaged, labelled "(grid, n seeds)") join the accuracy, judge and format figures as
    methods (a method the run evaluated itself keeps the run's numbers), their training logs (read from the
    grid folder beside ``summary.csv``) join ``crpo_rewards``, and its ``k`` group gives the k trade-off
    (x axis ``k_metric``, default the first faithfulness metric). ``paper_reference``: a path, a loaded
    dict, or None for ``results/paper_reference.json`` when it exists.
    """
    use_style()
    ref = results.resolve_paper_reference(paper_reference)
    order = results.paper_methods(ref, method_map) if ref else None
    rename = dict(method_map or {})
    labels = {**OWN_METHOD_LABELS,
              **{rename.get(m, m): v for m, v in (ref or {}).get("method_labels", {}).items()}}
    summary = results.read_grid_summary(ablation_summary) if ablation_summary is not None else None
    grid_dir = Path(ablation_summary).parent if summary is not None else None
    written: dict[str, list[Path]] = {}
    from_grid: dict[str, int] = {}  # grid variant shown as a method -> its number of seeds

    def emit(name: str, fig: Figure) -> None:
        written[name] = save(fig, out_dir, name)
        plt.close(fig)

    def join_grid(df: pd.DataFrame, extra: pd.DataFrame, table: str) -> pd.DataFrame:
        """Add the grid's variants; a method the recipe run has itself keeps the run's own numbers."""
        same = sorted(set(extra["method"]) & set(df["method"]))
        if same:
            log.info("%s: %s evaluated by the run itself; the grid's runs of the same name are left out", table, same)
            extra = extra[~extra["method"].isin(same)]
        for m, n in extra.groupby("method")["n_seeds"].max().items() if "n_seeds" in extra else ():
            from_grid[m] = max(from_grid.get(m, 0), int(n))
        return pd.concat([df, extra], ignore_index=True) if not df.empty else extra

    def with_grid(df: pd.DataFrame, table: str) -> pd.DataFrame:
        if summary is None or comparison_group is None:
            return df
        return join_grid(df, results.from_summary(summary, table, comparison_group), table)

    def grid_labels() -> dict[str, str]:
        """Tick labels that say which methods are the grid's seed-averaged arms."""
        out = dict(labels)
        for m, n in from_grid.items():
            out[m] = f"{labels.get(m, m)} (grid, {n} seed{'s' if n != 1 else ''})"
        return out

    acc = with_grid(results.collect_eval_results(results_dir), "accuracy")
    if not acc.empty:
        paper = results.paper_table(ref, "accuracy", method_map) if ref else None
        emit("accuracy", plot_accuracy(acc, paper, order=order, labels=grid_labels()))
    judged = results.collect_judge_results(results_dir)
    for table, fn in (("cognitive_behaviours", plot_cognitive_behaviours), ("faithfulness", plot_faithfulness)):
        mine = with_grid(judged[judged["table"] == table], table)
        if not mine.empty and "benchmark" in mine:
            benches = sorted(mine["benchmark"].dropna().unique())
            pick = judge_benchmark or ("medmcqa" if "medmcqa" in benches else benches[0] if benches else None)
            mine = mine[mine["benchmark"] == pick] if pick is not None else mine
        if not mine.empty:
            paper = results.paper_table(ref, table, method_map) if ref and table in ref else None
            emit(table, fn(mine, paper, order=order, labels=grid_labels(),
                           metric_labels=(ref or {}).get(table, {}).get("labels"),
                           lower_is_better=results.paper_lower_is_better(ref, table) if ref else ()))
    fmt = results.collect_format_results(results_dir)
    if grid_dir is not None and comparison_group is not None:
        fmt = join_grid(fmt, results.grid_format_results(grid_dir, comparison_group), "format")
    if not fmt.empty and "format_compliance" in set(fmt["metric"]):  # valid answers alone: see accuracy
        emit("format_by_method", plot_format_by_method(fmt, order=order, labels=grid_labels()))
    logs = results.collect_training_logs(results_dir)
    if not logs.empty and training_metrics(logs):
        emit("training_curves", plot_training_curves(logs))
    rl = logs[logs["run"].isin(rl_runs(logs))] if not logs.empty else logs
    if grid_dir is not None and comparison_group is not None:
        rl = pd.concat([rl, results.grid_training_logs(grid_dir, comparison_group)], ignore_index=True)
    if not rl.empty and reward_components(rl):
        emit("crpo_rewards", plot_crpo_rewards(rl))
    if not rl.empty and share_runs(rl):
        emit("advantage_shares", plot_advantage_shares(rl))
    if not rl.empty and monitor_metrics(rl):
        first = next((p.parent for p in results.result_files(Path(results_dir), "**/metrics.json")
                      if results.load_alarm_thresholds(p.parent)), None)
        emit("monitors", plot_monitors(rl, results.load_alarm_thresholds(first) if first else None))
    if not logs.empty and sft_runs(logs):
        emit("sft_loss", plot_sft_loss(logs))
    lengths = results.collect_lengths(results_dir)
    if not lengths.empty:
        emit("response_length", plot_response_length(lengths, order=order, labels=labels))
    effects = results.collect_rl_effects(Path(results_dir))
    if effects:
        emit("rl_effect", plot_rl_effect(effects, labels=labels))
    if summary is not None:
        wide = results.k_table(summary, k_metric)
        if wide is not None:
            emit("k_tradeoff", plot_k_tradeoff(wide, x=wide.attrs["x"]))
    skipped = {"accuracy", "cognitive_behaviours", "faithfulness", "format_by_method", "training_curves",
               "crpo_rewards", "advantage_shares", "monitors", "sft_loss", "response_length", "rl_effect",
               "k_tradeoff"} - set(written)
    if skipped:
        log.info("no inputs for: %s", ", ".join(sorted(skipped)))
    return written
