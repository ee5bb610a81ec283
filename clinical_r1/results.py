"""Results files -> tidy tables: the one reader of evaluation, judge, text-metric, training and grid results.

    from clinical_r1 import results
    acc = results.collect_eval_results("results/demo")             # accuracy per method x benchmark (percent)
    judged = results.collect_judge_results("results/demo")          # judge metric means with bootstrap CIs
    logs = results.collect_training_logs("results/demo")            # run, step, metric, value (TRL's log keys)
    runs = results.grid_runs("results/demo/ablations", "2x2")       # finished grid runs: (folder, done.json)
    paper = results.paper_table(load_paper_reference(), "accuracy") # the paper's numbers, same shape

Every function here reads files (or a loaded table) and returns data; none draws, and nothing here imports
matplotlib, so the pipeline (``clinical_r1.grid.gather``), the study summary (:mod:`clinical_r1.summary`) and
the figures (:mod:`clinical_r1.plots`) read results the same way. Files are ``results/`` files, never notebook
outputs; a file that is not what its name says raises :class:`PlotDataError` naming it (invalid JSON: its parent
:class:`~clinical_r1.errors.DataError`).

Tidy tables (columns; extra columns are ignored by the plots):

- accuracy (:func:`collect_eval_results`): ``method, benchmark, accuracy, ci_low, ci_high`` in percent
  (``ci_*`` may be NaN), plus ``majority_accuracy, valid_ratio, mean_tokens, n_questions, path``.
- paper (:func:`paper_table`): ``method, benchmark, accuracy`` for ``"accuracy"``; ``table, method, metric,
  value`` for ``"cognitive_behaviours"`` and ``"faithfulness"``.
- metric panels (:func:`collect_judge_results`): ``table, method, benchmark, metric, value, ci_low, ci_high,
  n, n_not_ok``.
- format (:func:`collect_format_results`): ``method, benchmark, format, metric, value`` in percent for
  ``format_compliance``, ``cross_reference`` (text metrics) and ``valid_ratio`` (evaluation).
- training (:func:`load_training_log`): ``run, step, metric, value``; metric names are TRL's log keys
  (``rewards/<fn>/mean``, ``reward``, ``kl``, ``completions/mean_length``, ``frac_reward_zero_std``; SFT:
  ``loss``, ``eval_loss``).
- ablation grid (:func:`from_summary`, :func:`k_table`): rows of ``summary.csv`` (:func:`clinical_r1.grid.gather`)
  averaged over seeds, or one row per run of the k sweep.
- lengths (:func:`collect_lengths`): ``method, benchmark, n_tokens``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from clinical_r1.errors import DataError
from clinical_r1.evaluate import load_paper_reference
from clinical_r1.files import read_json, read_jsonl, read_yaml

log = logging.getLogger(__name__)

GRID_DIR = "ablations"  # a study's ablation grid folder (results/<study>/ablations/<run_id>/)
EFFECT_DIR = "rl_effect"  # <RL run>/rl_effect/: the held-out probe's answers and effect.json (clinical_r1.rleffect)
EXCLUDE = (GRID_DIR, "notebooks", ".ipynb_checkpoints", EFFECT_DIR)  # folders the loaders do not descend into
SKIP_DIRS = {"data", "notebooks", GRID_DIR, "figures"}  # top-level study folders that hold no method
TRAINING_EXTRA = ("reward", "kl", "completions/mean_length")  # panels after the reward components
K_STAND_IN = "rewards/cross_reference/mean"  # the k trade-off's judge-free faithfulness axis


class PlotDataError(DataError):
    """A results file or table that cannot be plotted; the message names the file or the missing columns."""


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def read_grid_summary(path: str | os.PathLike) -> pd.DataFrame | None:
    """An ablation grid's ``summary.csv`` (:func:`clinical_r1.grid.gather`), or ``None`` when it does not exist."""
    return pd.read_csv(path) if Path(path).is_file() else None


def result_files(root: Path, pattern: str, exclude: Iterable[str] = EXCLUDE) -> list[Path]:
    """``root.glob(pattern)``, sorted, leaving out files under a folder named in ``exclude`` (the grid's runs
    are gathered separately) and checkpoint folders."""
    skip = set(exclude)
    out = []
    for p in sorted(root.glob(pattern)):
        parts = p.relative_to(root).parts[:-1]
        if not any(x in skip or x.startswith("checkpoint-") for x in parts):
            out.append(p)
    return out


def _method_of(path: Path, root: Path, obj: Mapping[str, Any], default: str | None = None) -> str:
    """A result's method: its own ``method`` field, else ``default``, else its folder relative to ``root``."""
    if obj.get("method"):
        return str(obj["method"])
    if default is not None:
        return default
    rel = path.parent.relative_to(root).as_posix()
    if rel in ("", "."):
        raise PlotDataError(f"{path}: no 'method' field and the file lies directly in {root}; put each method's "
                            f"results in its own folder (results/<run>/<method>/...) or record 'method'")
    return rel


# ---------------------------------------------------------------------------------------------------
# A study's results: evaluation, judge, text metrics, training logs, lengths
# ---------------------------------------------------------------------------------------------------


def collect_eval_results(results_dir: str | os.PathLike, pattern: str = "**/*.metrics.json",
                         default_method: str | None = None) -> pd.DataFrame:
    """Every :func:`clinical_r1.evaluate.evaluate` result under ``results_dir`` as the tidy accuracy table.

    Method: the result's ``method`` field, else ``default_method``, else its folder relative to
    ``results_dir`` (``results/demo/crpo/medqa.metrics.json`` → ``crpo``). Benchmark: the result's ``dataset``, else the
    file name before ``.metrics.json``. Values are converted from fractions to percent.
    """
    root = Path(results_dir)
    rows = []
    for path in result_files(root, pattern):
        res = read_json(path)
        overall = res.get("overall") if isinstance(res, dict) else None
        if not isinstance(overall, dict) or "accuracy" not in overall:
            raise PlotDataError(f"{path}: not an evaluation result (no 'overall.accuracy'); "
                                f"write it with clinical_r1.evaluate.evaluate")
        scale = 100.0 if res.get("scale", "fraction") == "fraction" else 1.0
        lo, hi = overall.get("accuracy_ci") or (None, None)
        pct = lambda v: float(v) * scale if v is not None else np.nan  # noqa: E731
        rows.append({
            "method": _method_of(path, root, res, default_method),
            "benchmark": res.get("dataset") or path.name[: -len(".metrics.json")],
            "accuracy": pct(overall["accuracy"]),
            "ci_low": pct(lo), "ci_high": pct(hi),
            "majority_accuracy": pct(overall.get("majority_accuracy")),
            "valid_ratio": pct(overall.get("valid_ratio")),
            "mean_tokens": overall.get("mean_tokens") if overall.get("mean_tokens") is not None else np.nan,
            "n_questions": overall.get("n_questions"),
            "path": str(path),
        })
    cols = ["method", "benchmark", "accuracy", "ci_low", "ci_high", "majority_accuracy", "valid_ratio",
            "mean_tokens", "n_questions", "path"]
    return pd.DataFrame(rows, columns=cols)


JUDGE_TABLES = {"cognitive": "cognitive_behaviours", "faithfulness": "faithfulness"}  # judge group -> paper table


def collect_judge_results(results_dir: str | os.PathLike, pattern: str = "**/*.judge.jsonl",
                          default_method: str | None = None, n_boot: int = 2000) -> pd.DataFrame:
    """Judge records under ``results_dir`` as the tidy metric table ``table, method, benchmark, metric, value,
    ci_low, ci_high, n, n_not_ok``.

    A judge file is the records JSONL of :func:`clinical_r1.judge.judge_responses`, named
    ``<method folder>/<benchmark>.judge.jsonl``. ``value`` is the mean over records with ``status == "ok"``
    (unparseable and failed calls are counted in ``n_not_ok``, never averaged in); the interval is a 95%
    bootstrap over those records. ``table`` follows the metric's group in :data:`clinical_r1.judge.JUDGE_METRICS`.
    """
    from clinical_r1.evaluate import bootstrap_ci
    from clinical_r1.judge import JUDGE_METRICS

    root = Path(results_dir)
    rows = []
    for path in result_files(root, pattern):
        recs = read_jsonl(path)
        for i, r in enumerate(recs, start=1):
            if not isinstance(r, dict) or not {"metric", "value", "status"} <= set(r):
                raise PlotDataError(f"{path}: line {i} is not a judge record (needs metric, value, status)")
            if r["metric"] not in JUDGE_METRICS:
                raise PlotDataError(f"{path}: line {i}: unknown judge metric {r['metric']!r}; known: {sorted(JUDGE_METRICS)}")
        method = _method_of(path, root, {}, default_method)
        bench = path.name[: -len(".judge.jsonl")]
        for metric in dict.fromkeys(r["metric"] for r in recs):
            mine = [r for r in recs if r["metric"] == metric]
            ok = [float(r["value"]) for r in mine if r["status"] == "ok" and r["value"] is not None]
            ci = bootstrap_ci(ok, n_boot=n_boot) if len(ok) > 1 else (np.nan, np.nan)
            rows.append({"table": JUDGE_TABLES[JUDGE_METRICS[metric].group], "method": method, "benchmark": bench,
                         "metric": metric, "value": float(np.mean(ok)) if ok else np.nan, "ci_low": ci[0],
                         "ci_high": ci[1], "n": len(ok), "n_not_ok": len(mine) - len(ok)})
            if len(ok) < len(mine):
                log.warning("%s: %s: %d of %d judgements not ok (unparseable or failed); left out of the mean",
                            path, metric, len(mine) - len(ok), len(mine))
    cols = ["table", "method", "benchmark", "metric", "value", "ci_low", "ci_high", "n", "n_not_ok"]
    return pd.DataFrame(rows, columns=cols)


def load_training_log(run_dir: str | os.PathLike, label: str | None = None) -> pd.DataFrame:
    """A training run's ``metrics.jsonl`` (one JSON object per logging step: ``step`` or ``global_step`` plus
    TRL's log keys, as :class:`clinical_r1.runs.MetricsLogger` writes it) as ``run, step, metric, value``.
    Non-numeric values (a NaN logged as the string "nan") and the wall-clock ``time`` are left out.

    ``run_dir``: the run folder (holding ``metrics.jsonl``) or the file itself; ``label`` defaults to the
    folder name.
    """

    p = Path(run_dir)
    path = p / "metrics.jsonl" if p.is_dir() else p
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training log (metrics.jsonl) here")
    run = label or path.parent.name
    rows = []
    for i, rec in enumerate(read_jsonl(path), start=1):
        if not isinstance(rec, dict):
            raise PlotDataError(f"{path}: line {i} is not a JSON object")
        step = rec.get("step", rec.get("global_step"))
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            raise PlotDataError(f"{path}: line {i} has no numeric 'step' (or 'global_step') field")
        for key, v in rec.items():
            if key in ("step", "global_step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            rows.append({"run": run, "step": int(step), "metric": key, "value": float(v)})
    if not rows:
        raise PlotDataError(f"{path}: no numeric metrics logged")
    return pd.DataFrame(rows, columns=["run", "step", "metric", "value"])


def collect_training_logs(results_dir: str | os.PathLike, pattern: str = "**/metrics.jsonl") -> pd.DataFrame:
    """Every ``metrics.jsonl`` under ``results_dir``, labelled by its folder relative to ``results_dir``."""
    root = Path(results_dir)
    frames = [load_training_log(p, label=p.parent.relative_to(root).as_posix() or p.parent.name)
              for p in result_files(root, pattern)]
    if not frames:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


def collect_lengths(results_dir: str | os.PathLike, pattern: str = "**/*.jsonl") -> pd.DataFrame:
    """Response lengths (``n_tokens``) of every generations file under ``results_dir`` (a ``.jsonl`` with a
    ``.meta.json`` sidecar written by :mod:`clinical_r1.generate`): ``method, benchmark, n_tokens``.
    Method: the sidecar's ``method``, else the folder relative to ``results_dir``."""
    from clinical_r1.generate import meta_path, read_generations, read_meta

    root = Path(results_dir)
    frames = []
    for path in result_files(root, pattern):
        if not meta_path(path).exists():
            continue
        meta = read_meta(path) or {}
        recs = read_generations(path)
        tokens = [r.get("n_tokens") for r in recs]
        missing = sum(t is None for t in tokens)
        if missing:
            log.warning("%s: %d of %d responses have no n_tokens; left out of the length figure", path, missing, len(recs))
        frames.append(pd.DataFrame({"method": _method_of(path, root, meta),
                                    "benchmark": meta.get("dataset") or path.stem,
                                    "n_tokens": [float(t) for t in tokens if t is not None]}))
    if not frames:
        return pd.DataFrame(columns=["method", "benchmark", "n_tokens"])
    return pd.concat(frames, ignore_index=True)


def collect_text_metrics(results_dir: str | os.PathLike, pattern: str = "**/*.textmetrics.json",
                         default_method: str | None = None) -> pd.DataFrame:
    """Every judge-free metrics file (:func:`clinical_r1.textmetrics.summarize_generations`, written by the evaluation stage
    as ``<method>/<benchmark>.textmetrics.json``) as ``method, benchmark, format, metric, value, n``: one row
    per ``{"mean", "n"}`` entry (``format_compliance``, ``cross_reference``, ``n_tokens``, ...), the mean as
    stored (a fraction for rates; NaN where undefined, e.g. cross-reference of an untagged format)."""
    root = Path(results_dir)
    rows = []
    for path in result_files(root, pattern):
        res = read_json(path)
        if not isinstance(res, dict) or not isinstance(res.get("format_compliance"), dict):
            raise PlotDataError(f"{path}: not a text-metrics result (no 'format_compliance.mean'); "
                                f"write it with clinical_r1.textmetrics.summarize_generations")
        method = _method_of(path, root, res, default_method)
        bench = res.get("benchmark") or path.name[: -len(".textmetrics.json")]
        for key, v in res.items():
            if isinstance(v, dict) and "mean" in v:
                rows.append({"method": method, "benchmark": bench, "format": res.get("format"), "metric": key,
                             "value": float(v["mean"]) if v["mean"] is not None else np.nan, "n": v.get("n")})
    return pd.DataFrame(rows, columns=["method", "benchmark", "format", "metric", "value", "n"])


def collect_format_results(results_dir: str | os.PathLike, default_method: str | None = None) -> pd.DataFrame:
    """The :func:`plot_format_by_method` table: format compliance and cross-reference rate (text metrics)
    and the valid-answer ratio (evaluation results), in percent: ``method, benchmark, format, metric, value``."""
    text = collect_text_metrics(results_dir, default_method=default_method)
    text = text[text["metric"].isin(["format_compliance", "cross_reference"])].assign(value=lambda d: 100 * d["value"])
    acc = collect_eval_results(results_dir, default_method=default_method)
    valid = (acc[["method", "benchmark", "valid_ratio"]].rename(columns={"valid_ratio": "value"})
             .assign(metric="valid_ratio"))
    fmts = text.drop_duplicates(["method", "benchmark"]).set_index(["method", "benchmark"])["format"]
    valid["format"] = [fmts.get((m, b)) for m, b in zip(valid["method"], valid["benchmark"])]
    cols = ["method", "benchmark", "format", "metric", "value"]
    frames = [f[cols] for f in (text, valid) if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def training_metrics(df: pd.DataFrame) -> list[str]:
    """The default panels: every ``rewards/<fn>/mean`` logged, then total reward, KL and completion length."""
    present = list(dict.fromkeys(df["metric"]))
    components = [m for m in present if re.fullmatch(r"rewards/.+/mean", m)]
    return components + [m for m in TRAINING_EXTRA if m in present]


def load_alarm_thresholds(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's alarm thresholds: ``metrics.json`` (``alarm_thresholds``), else its ``config.yaml`` ``monitors``."""
    d = Path(run_dir)
    if (d / "metrics.json").is_file():
        t = read_json(d / "metrics.json").get("alarm_thresholds")
        if t:
            return dict(t)
    if (d / "config.yaml").is_file():
        return dict(read_yaml(d / "config.yaml", "training config", PlotDataError).get("monitors") or {})
    return {}


# ---------------------------------------------------------------------------------------------------
# The ablation grid's runs
# ---------------------------------------------------------------------------------------------------


def grid_runs(grid_dir: str | os.PathLike, group: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The finished runs (``done.json``) of an ablation-grid folder as ``(run folder, done record)``, sorted;
    with ``group``, only the runs in that group (e.g. ``2x2``)."""
    root = Path(grid_dir)
    out = []
    for done in sorted(root.glob("*/done.json")) if root.is_dir() else []:
        rec = read_json(done)
        if not isinstance(rec, dict) or "variant" not in rec:
            raise PlotDataError(f"{done}: not a finished grid run record (no 'variant')")
        groups = rec.get("groups") or []
        groups = groups.split(";") if isinstance(groups, str) else list(groups)
        if group is None or group in groups:
            out.append((done.parent, rec))
    return out


def grid_format_results(grid_dir: str | os.PathLike, group: str | None = None) -> pd.DataFrame:
    """:func:`collect_format_results` of every finished grid run (of ``group``), one row per variant ×
    benchmark × metric, averaged over seeds (``n_seeds``)."""
    frames = [collect_format_results(d).assign(method=rec["variant"]) for d, rec in grid_runs(grid_dir, group)]
    frames = [f for f in frames if not f.empty]
    cols = ["method", "benchmark", "format", "metric", "value", "n_seeds"]
    if not frames:
        return pd.DataFrame(columns=cols)
    d = pd.concat(frames, ignore_index=True)
    d["format"] = d["format"].fillna("")
    out = (d.groupby(["method", "benchmark", "format", "metric"], sort=False)["value"].agg(["mean", "size"])
           .reset_index())
    out = out.rename(columns={"mean": "value", "size": "n_seeds"}).replace({"format": {"": None}})
    return out[cols]


def grid_training_logs(grid_dir: str | os.PathLike, group: str | None = None) -> pd.DataFrame:
    """The training logs of every finished grid run (of ``group``), one run per variant: the mean over its
    seeds at each step, labelled ``<variant> (grid)`` or ``<variant> (grid, mean of n seeds)``."""
    by_variant: dict[str, list[pd.DataFrame]] = {}
    for d, rec in grid_runs(grid_dir, group):
        logs = collect_training_logs(d)
        if not logs.empty:
            by_variant.setdefault(rec["variant"], []).append(logs)
    frames = []
    for variant, logs in by_variant.items():
        n = len(logs)
        label = f"{variant} (grid)" if n == 1 else f"{variant} (grid, mean of {n} seeds)"
        mean = pd.concat(logs).groupby(["step", "metric"], sort=False)["value"].mean().reset_index()
        frames.append(mean.assign(run=label)[["run", "step", "metric", "value"]])
    if not frames:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    return pd.concat(frames, ignore_index=True)


def _in_group(groups: pd.Series, group: str) -> np.ndarray:
    """Boolean mask: the run's ``;``-joined groups include ``group``."""
    return np.array([group in str(g).split(";") for g in groups.fillna("")], dtype=bool)


def from_summary(summary: pd.DataFrame, table: str = "accuracy", group: str | None = None) -> pd.DataFrame:
    """Ablation-grid rows (:func:`clinical_r1.grid.gather`) as a plot table, one row per variant
    (``method``) × benchmark × metric, averaged over seeds.

    Interval: with one seed, that run's bootstrap CI; with several, a 95% t-interval of the mean over
    seeds (seed-to-seed variation, the larger uncertainty). ``table="accuracy"`` also fills an
    ``accuracy`` column so the result feeds :func:`plot_accuracy`; ``group`` keeps one group (e.g. ``2x2``).
    """
    from scipy import stats

    need = {"variant", "groups", "table", "benchmark", "metric", "value"}
    if not need <= set(summary.columns):
        raise PlotDataError(f"ablation summary lacks columns {sorted(need - set(summary.columns))}")
    d = summary[summary["table"] == table]
    if table == "accuracy":
        d = d[d["metric"] == "accuracy"]
    if group is not None:
        d = d[_in_group(d["groups"], group)]
    rows = []
    for (variant, bench, metric), g in d.groupby(["variant", "benchmark", "metric"], sort=False):
        v = g["value"].astype(float).to_numpy()
        if len(v) == 1:
            lo, hi = float(g["ci_low"].iloc[0]), float(g["ci_high"].iloc[0])
        else:
            half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
            lo, hi = v.mean() - half, v.mean() + half
        rows.append({"table": table, "method": variant, "benchmark": bench, "metric": metric, "value": v.mean(),
                     "ci_low": lo, "ci_high": hi, "n_seeds": len(v)})
    out = pd.DataFrame(rows, columns=["table", "method", "benchmark", "metric", "value", "ci_low", "ci_high", "n_seeds"])
    if table == "accuracy":
        out["accuracy"] = out["value"]
    return out


def k_table(summary: pd.DataFrame, x: str | None = None, group: str = "k", benchmark: str | None = None) -> pd.DataFrame | None:
    """From the ablation summary (:func:`clinical_r1.grid.gather`), the runs of the ``group`` group as one
    row per run: ``run_id, k, accuracy, <x>`` (accuracy averaged over benchmarks unless ``benchmark``).
    ``x`` defaults to the first faithfulness metric present, else (no judge ran) the judge-free stand-in
    :data:`K_STAND_IN`, the run's final training cross-reference rate; None when the summary has no such runs."""
    if "groups" not in summary.columns:
        raise PlotDataError("ablation summary lacks the column 'groups'")
    d = summary[_in_group(summary["groups"], group)]
    if d.empty:
        return None  # the grid ran no runs of this group (e.g. the demo runs the 2x2 only)
    need = {"run_id", "k", "metric", "value", "benchmark"}
    if not need <= set(summary.columns):
        raise PlotDataError(f"ablation summary lacks columns {sorted(need - set(summary.columns))}")
    if benchmark is not None:
        d = d[d["benchmark"] == benchmark]
    if x is None and "table" in d.columns:
        faith = d[d["table"] == "faithfulness"]
        x = faith["metric"].iloc[0] if not faith.empty else None
    if x is None and K_STAND_IN in set(d["metric"]):
        x = K_STAND_IN
    if x is None or d.empty:
        return None
    wide = d[d["metric"].isin(["accuracy", x])].pivot_table(index=["run_id", "k"], columns="metric", values="value",
                                                            aggfunc="mean").reset_index()
    if "accuracy" not in wide.columns or x not in wide.columns:
        return None
    wide.attrs["x"] = x
    return wide


# ---------------------------------------------------------------------------------------------------
# A study's folders: its methods (with the grid's arms) and its RL runs
# ---------------------------------------------------------------------------------------------------


def method_dirs(out: Path) -> dict[str, Path]:
    """Method name -> folder holding ``<benchmark>.metrics.json``: the recipe's methods, then each finished grid
    run's evaluated policy under its variant name (``cold_start_grpo``)."""
    found = {p.name: p for p in sorted(out.iterdir()) if p.is_dir() and p.name not in SKIP_DIRS
             and any(p.glob("*.metrics.json"))}
    for run, rec in grid_runs(out / GRID_DIR):
        variant = rec["variant"]
        for sub in sorted(p for p in run.iterdir() if p.is_dir() and any(p.glob("*.metrics.json"))):
            found.setdefault(variant if sub.name == "policy" else f"{variant}/{sub.name}", sub)
    return found


def rl_run_dirs(out: Path) -> dict[str, Path]:
    """RL run folders: the recipe's (any folder whose config.yaml has ``stage: crpo``) and each grid arm's train run."""
    def is_rl(cfg: Path) -> bool:
        return read_yaml(cfg, "training config", PlotDataError).get("stage") == "crpo"

    found = {}
    for p in sorted(out.iterdir()):
        cfg = p / "config.yaml"
        if p.is_dir() and cfg.is_file() and is_rl(cfg):
            found[p.name] = p
    for run, rec in grid_runs(out / GRID_DIR):
        for cfg in sorted(run.glob("*/config.yaml")):
            if is_rl(cfg):
                found.setdefault(rec["variant"], cfg.parent)
    return found


def collect_rl_effects(out: Path) -> dict[str, dict[str, Any]]:
    """Arm name -> its held-out RL effect (``<run>/rl_effect/effect.json``, :mod:`clinical_r1.rleffect`), for every
    RL run of the study (:func:`rl_run_dirs`) that has one."""
    found = {}
    for name, run in rl_run_dirs(Path(out)).items():
        p = run / EFFECT_DIR / "effect.json"
        if p.is_file():
            found[name] = read_json(p)
    return found


def effect_table(effects: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per arm × component of held-out RL effects: weight, before, after, diff and its 95% CI."""
    rows = []
    for arm, e in effects.items():
        for comp, c in e["components"].items():
            rows.append({"arm": arm, "component": comp, "weight": e["weights"].get(comp), "before": c["before"],
                         "after": c["after"], "diff": c["diff"], "ci_low": c["ci"][0], "ci_high": c["ci"][1],
                         "n_questions": c["n_questions"], "n_samples": c["n_samples"]})
    cols = ["arm", "component", "weight", "before", "after", "diff", "ci_low", "ci_high", "n_questions", "n_samples"]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------------------


def paper_table(ref: Mapping[str, Any], table: str, method_map: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The paper's numbers (:func:`clinical_r1.evaluate.load_paper_reference`) as a tidy table.

    ``table="accuracy"`` → ``method, benchmark, accuracy`` (percent, as reported); ``"cognitive_behaviours"``
    or ``"faithfulness"`` → ``table, method, metric, value``. ``method_map`` renames the paper's method names
    to this repository's (e.g. ``{"Clinical-R1-3B": "sft-crpo"}``) so bars line up.
    """
    if table not in ref or not isinstance(ref[table], dict) or "values" not in ref[table]:
        raise PlotDataError(f"paper reference has no table {table!r} with 'values'; it has {sorted(ref)}")
    rename = dict(method_map or {})
    rows = []
    for row, by_method in ref[table]["values"].items():
        for method, v in by_method.items():
            if v is None:
                continue
            m = rename.get(method, method)
            if table == "accuracy":
                rows.append({"method": m, "benchmark": row, "accuracy": float(v)})
            else:
                rows.append({"table": table, "method": m, "metric": row, "value": float(v)})
    return pd.DataFrame(rows)


def paper_methods(ref: Mapping[str, Any], method_map: Mapping[str, str] | None = None) -> list[str]:
    """The paper's method order (renamed through ``method_map``): use it as ``order=`` for every figure."""
    rename = dict(method_map or {})
    return [rename.get(m, m) for m in ref.get("methods", [])]


def paper_lower_is_better(ref: Mapping[str, Any], table: str) -> list[str]:
    """Metrics the reference marks lower-is-better (``<table>.lower_is_better``), if it lists any."""
    return list(ref.get(table, {}).get("lower_is_better", []) or [])


def resolve_paper_reference(paper_reference: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The paper's numbers from a loaded dict, a path (:func:`clinical_r1.evaluate.load_paper_reference`), or
    None for ``results/paper_reference.json`` when it exists (else None)."""
    if isinstance(paper_reference, Mapping):
        return dict(paper_reference)
    if paper_reference is not None:
        return load_paper_reference(paper_reference)
    from clinical_r1.evaluate import PAPER_REFERENCE

    return load_paper_reference() if PAPER_REFERENCE.exists() else None

