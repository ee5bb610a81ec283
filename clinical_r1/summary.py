"""One study's numbers in one file: ``<out>/summary.json`` and a short ``summary.md``, read from the results files.

    python -m clinical_r1 summary results/demo           # (re)writes results/demo/summary.{json,md}, prints the .md

    from clinical_r1.summary import build_summary, write_summary
    s = build_summary("results/demo")                    # dict; nothing is recomputed from models

The pipeline writes it after every recipe run (and prints the markdown). The files are found and read with
:mod:`clinical_r1.results` (the same readers as the figures). It holds, per stage and method:
- ``stages``: each notebook's seconds from ``pipeline.json``, and the run's provenance (commit, dirty, versions, device);
- ``sft``: steps, first/last train loss, best dev loss;
- ``rl``: per RL run (the recipe's own and the grid's 2x2 arms): steps, mean ``frac_reward_zero_std``, the steps
  with a non-zero loss, and the mean total reward of the first and last thirds of training with a 95% bootstrap
  CI of their difference (resampling steps; a flat or falling curve is reported as it is); the mean share of the
  advantage of each weighted reward and how often it varied in a group, and the reward-hacking alarms;
- ``evaluation``: per method and benchmark, accuracy (%) with its 95% CI, valid ratio, format compliance in
  the method's own answer format and in the crpo format, cross-reference rate and mean length in tokens;
- ``judge``: judged records and the share that parsed, per method;
- ``targets``: each acceptance target of the CPU demo (issue "a study that learns") with its measured value and
  whether it holds. Targets are read, never tuned: a failing one stays in the file as ``false``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from clinical_r1.files import read_json, read_jsonl, read_yaml, write_json, write_text
from clinical_r1.records import STATUS_FILE, read_status, repo_relative
from clinical_r1.results import PlotDataError, collect_rl_effects, method_dirs, rl_run_dirs

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
IN_DOMAIN = "sample"  # the held-out split of the bundled questions (01's ``test`` split)


def _log_rows(run: Path) -> list[dict[str, Any]]:
    """A run folder's ``metrics.jsonl`` rows ([] when it has none)."""
    path = run / "metrics.jsonl"
    return read_jsonl(path) if path.is_file() else []


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------------------------------------------
# Training logs
# ---------------------------------------------------------------------------------------------------


def sft_summary(run: Path) -> dict[str, Any] | None:
    """Steps, first/last training loss and best dev loss of an SFT run folder (``None`` when absent)."""
    rows = _log_rows(run)
    train = [r for r in rows if _finite(r.get("loss")) is not None]
    dev = [r for r in rows if _finite(r.get("eval_loss")) is not None]
    if not train:
        return None
    return {"run": repo_relative(Path(run).resolve()), "steps": max(r["step"] for r in train),
            "loss_first": train[0]["loss"], "loss_last": train[-1]["loss"],
            "dev_loss_first": dev[0]["eval_loss"] if dev else None,
            "dev_loss_best": min(r["eval_loss"] for r in dev) if dev else None}


def bootstrap_diff(first: Sequence[float], last: Sequence[float], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap CI of ``mean(last) - mean(first)`` (each part resampled on its own)."""
    a, b = np.asarray(first, float), np.asarray(last, float)
    rng = np.random.default_rng(seed)
    diffs = rng.choice(b, (n_boot, len(b))).mean(1) - rng.choice(a, (n_boot, len(a))).mean(1)
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def rl_summary(run: Path, n_boot: int = 2000) -> dict[str, Any] | None:
    """The learning signal of a GRPO/CRPO run folder from its ``metrics.jsonl`` (``None`` when absent)."""
    rows = [r for r in _log_rows(run) if _finite(r.get("reward")) is not None]
    if not rows:
        return None
    reward = [float(r["reward"]) for r in rows]
    third = max(1, len(rows) // 3)
    first, last = reward[:third], reward[-third:]
    components = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    zero_std = [_finite(r.get("frac_reward_zero_std")) for r in rows]
    zero_std = [z for z in zero_std if z is not None]
    cfg = run / "config.yaml"
    preset = None
    if cfg.is_file():
        preset = read_yaml(cfg, "training config", PlotDataError).get("reward", {}).get("preset")
    return {
        "run": repo_relative(run.resolve()), "preset": preset, "steps": len(rows),
        "frac_reward_zero_std_mean": float(np.mean(zero_std)) if zero_std else None,
        "steps_with_nonzero_loss": sum(abs(_finite(r.get("loss")) or 0.0) > 0 for r in rows),
        "steps_with_nonzero_grad": sum(abs(_finite(r.get("grad_norm")) or 0.0) > 0 for r in rows),
        "reward_first_third": float(np.mean(first)), "reward_last_third": float(np.mean(last)),
        "reward_diff": float(np.mean(last) - np.mean(first)), "reward_diff_ci": bootstrap_diff(first, last, n_boot),
        "components_first_third": {c: float(np.mean([r.get(f"rewards/{c}/mean", np.nan) for r in rows[:third]]))
                                   for c in components},
        "components_last_third": {c: float(np.mean([r.get(f"rewards/{c}/mean", np.nan) for r in rows[-third:]]))
                                  for c in components},
        "mean_completion_length": _finite(rows[-1].get("completions/mean_length")),
        **inside_summary(run, rows),
    }


def inside_summary(run: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which reward drove the advantage and what the monitors saw (``clinical_r1.monitors``): the mean over steps
    of each ``advantage_share/<r>`` and ``reward_varies/<r>``, and the alarms in ``metrics.json`` (None when the
    run logged no monitors)."""
    def means(prefix: str) -> dict[str, float]:
        names = list(dict.fromkeys(k[len(prefix):] for r in rows for k in r if k.startswith(prefix)))
        vals = {n: [v for r in rows if (v := _finite(r.get(prefix + n))) is not None] for n in names}
        return {n: float(np.mean(v)) for n, v in vals.items() if v}

    metrics = run / "metrics.json"
    alarms = read_json(metrics).get("alarms") if metrics.is_file() else None
    return {"advantage_share_mean": means("advantage_share/"), "reward_varies_mean": means("reward_varies/"),
            "alarms": alarms}


def effect_summary(e: Mapping[str, Any]) -> dict[str, Any]:
    """The held-out RL effect of one arm (``<run>/rl_effect/effect.json``) as the summary keeps it."""
    keep = ("prompt", "weights", "accuracy_reward", "cold_start", "temperature", "max_new_tokens", "n", "seed")
    return {**{k: e.get(k) for k in keep}, "n_questions": len(e.get("probe_ids") or []),
            "components": e["components"]}


# ---------------------------------------------------------------------------------------------------
# Evaluation and judge files
# ---------------------------------------------------------------------------------------------------


def eval_rows(out: Path, splits_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per (method, benchmark) from the evaluation files, the crpo-format rate recomputed from the
    generations (the method's own format is what ``textmetrics`` holds)."""
    from clinical_r1.data import load_benchmark
    from clinical_r1.textmetrics import summarize_generations

    sets: dict[str, Any] = {}
    manifest = (splits_dir / "manifest.json") if splits_dir else None
    if manifest and manifest.is_file():
        for name, info in read_json(manifest).get("eval", {}).items():
            sets[name] = list(load_benchmark("jsonl", path=splits_dir / info["path"]))
    rows = []
    for method, d in method_dirs(out).items():
        for mpath in sorted(d.glob("*.metrics.json")):
            bench = mpath.name[: -len(".metrics.json")]
            res = read_json(mpath)
            o = res.get("overall", {})
            lo, hi = o.get("accuracy_ci") or (None, None)
            text_path = d / f"{bench}.textmetrics.json"
            text = read_json(text_path) if text_path.is_file() else {}
            gen = d / f"{bench}.jsonl"
            crpo = summarize_generations(gen, sets[bench], fmt="crpo") if bench in sets and gen.is_file() else {}
            pct = lambda v: None if v is None else round(100 * float(v), 2)  # noqa: E731
            rows.append({
                "method": method, "benchmark": bench, "prompt": res.get("prompt_kind"), "n": o.get("n_questions"),
                "accuracy": pct(o.get("accuracy")), "ci_low": pct(lo), "ci_high": pct(hi),
                "valid_ratio": _finite(o.get("valid_ratio")),
                "format_compliance": _finite((text.get("format_compliance") or {}).get("mean")),
                "crpo_format": _finite((crpo.get("format_compliance") or {}).get("mean")),
                "cross_reference": _finite((text.get("cross_reference") or {}).get("mean")),
                "mean_tokens": _finite((text.get("n_tokens") or {}).get("mean")),
            })
    return rows


def judge_rows(out: Path) -> list[dict[str, Any]]:
    """Judged records and the share with a parsed judgement, per method (recipe methods and grid arms)."""
    rows = []
    for method, d in method_dirs(out).items():
        recs = [r for p in sorted(d.glob("*.judge.jsonl")) for r in read_jsonl(p)]
        if recs:
            ok = sum(r.get("status") == "ok" for r in recs)
            rows.append({"method": method, "records": len(recs), "parsed": ok, "parse_rate": ok / len(recs)})
    return rows


# ---------------------------------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------------------------------


def _row(rows: Iterable[Mapping[str, Any]], method: str, bench: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["method"] == method and r["benchmark"] == bench), None)


def _pooled(rows: Iterable[Mapping[str, Any]], method: str, key: str) -> float | None:
    """``key`` over every evaluation set of ``method``, weighted by its number of questions (all are held out:
    the bundled test split and the real benchmark slices)."""
    mine = [r for r in rows if r["method"] == method and r[key] is not None and r["n"]]
    n = sum(r["n"] for r in mine)
    return sum(r[key] * r["n"] for r in mine) / n if n else None


def _target(name: str, value: Any, op: str, bound: float) -> dict[str, Any]:
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b}
    ok = None if value is None else bool(ops[op](value, bound))
    return {"target": name, "value": value, "rule": f"{op} {bound}", "holds": ok}


def targets(s: Mapping[str, Any], sft_method: str = "sft", base_method: str = "baseline_crpo_prompt") -> list[dict]:
    """The demo's acceptance targets, measured on the held-out bundled questions (never the training ones)."""
    ev = s["evaluation"]
    sft, base = _row(ev, sft_method, IN_DOMAIN), _row(ev, base_method, IN_DOMAIN)
    out = [
        _target("SFT crpo format on held-out questions", sft and sft["crpo_format"], ">=", 0.8),
        _target("SFT crpo format, all held-out sets pooled", _pooled(ev, sft_method, "crpo_format"), ">=", 0.8),
        _target("base model crpo format, same prompt", base and base["crpo_format"], "<=", 0.1),
        _target("SFT valid ratio on held-out questions", sft and sft["valid_ratio"], ">=", 0.9),
        _target("SFT valid ratio, all held-out sets pooled", _pooled(ev, sft_method, "valid_ratio"), ">=", 0.9),
    ]
    for name, r in s["rl"].items():
        out.append(_target(f"{name}: mean frac_reward_zero_std", r["frac_reward_zero_std_mean"], "<=", 0.5))
        out.append(_target(f"{name}: steps with a non-zero loss", r["steps_with_nonzero_loss"], ">=", r["steps"]))
        out.append(_target(f"{name}: training steps", r["steps"], ">=", 8))
    for name, e in (s.get("rl_effect") or {}).items():
        c = e["components"]
        shaping = c.get("reward_without_accuracy")
        out.append(_target(f"{name}: held-out reward without accuracy, paired difference CI low",
                            shaping and shaping["ci"][0], ">", 0))
        valid = c.get("valid")
        out.append(_target(f"{name}: held-out valid ratio does not fall (difference CI high)",
                           valid and valid["ci"][1], ">=", 0))
    if s["judge"]:
        rec = sum(j["records"] for j in s["judge"])
        out.append(_target("judge parse rate", sum(j["parsed"] for j in s["judge"]) / rec, ">=", 0.95))
    return out


def build_summary(out_dir: str | os.PathLike, splits_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Every number of a study folder (see the module docstring); reads files only."""
    out = Path(out_dir)
    status = read_status(out / STATUS_FILE)
    splits = Path(splits_dir) if splits_dir else out / "data"
    stages = {n: st.get("duration_s") for n, st in status.get("stages", {}).items()}
    s: dict[str, Any] = {
        "out": repo_relative(out.resolve()), "recipe": status.get("recipe"),
        "provenance": status.get("provenance") or {},
        "stages_seconds": stages, "total_seconds": round(sum(v or 0 for v in stages.values()), 1),
        "sft": sft_summary(out / "sft"),
        "rl": {name: r for name, p in rl_run_dirs(out).items() if (r := rl_summary(p)) is not None},
        "evaluation": eval_rows(out, splits),
        "judge": judge_rows(out),
        "rl_effect": {name: effect_summary(e) for name, e in collect_rl_effects(out).items()},
    }
    s["targets"] = targets(s)
    return s


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(s: Mapping[str, Any]) -> str:
    """A short human summary: stages, the evaluation table, RL signal, judge and the targets."""
    lines = [f"# Study summary: {s.get('recipe') or s['out']}", "",
             f"commit `{s['provenance'].get('commit')}`{' (dirty tree)' if s['provenance'].get('dirty') else ''}; "
             f"stages {s['total_seconds']:.0f} s ({s['total_seconds'] / 60:.1f} min)", "",
             "| stage | seconds | share |", "|---|---|---|"]
    total = s["total_seconds"] or 1
    lines += [f"| {k} | {_fmt(v, '.0f')} | {(v or 0) / total:.0%} |" for k, v in s["stages_seconds"].items()]
    lines.append("")
    if s.get("sft"):
        f = s["sft"]
        lines += [f"SFT: {f['steps']} steps, train loss {_fmt(f['loss_first'])} -> {_fmt(f['loss_last'])}, "
                  f"dev loss {_fmt(f['dev_loss_first'])} -> best {_fmt(f['dev_loss_best'])}", ""]
    for name, r in s["rl"].items():
        lo, hi = r["reward_diff_ci"]
        lines.append(f"RL `{name}` ({r['preset']}): {r['steps']} steps, frac_reward_zero_std "
                     f"{_fmt(r['frac_reward_zero_std_mean'])}, non-zero loss at {r['steps_with_nonzero_loss']} steps; "
                     f"mean reward first third {r['reward_first_third']:.2f}, last third {r['reward_last_third']:.2f} "
                     f"(difference {r['reward_diff']:+.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}])")
        if r.get("advantage_share_mean"):
            lines.append("  mean advantage share: " + ", ".join(f"{k} {v:.2f}" for k, v in r["advantage_share_mean"].items())
                         + "; alarms: " + (", ".join(f"{a['monitor']} at step {a['step']}" for a in r["alarms"])
                                           if r.get("alarms") else "none" if r.get("alarms") == [] else "-"))
    if s["rl"]:
        lines.append("")
    if s["evaluation"]:
        lines += ["| method | benchmark | n | accuracy % [95% CI] | valid | own format | crpo format | cross-ref | tokens |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in s["evaluation"]:
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1f} [{_fmt(r['ci_low'], '.1f')}, {_fmt(r['ci_high'], '.1f')}]"
            lines.append(f"| {r['method']} | {r['benchmark']} | {r['n']} | {acc} | {_fmt(r['valid_ratio'])} | "
                         f"{_fmt(r['format_compliance'])} | {_fmt(r['crpo_format'])} | {_fmt(r['cross_reference'])} | "
                         f"{_fmt(r['mean_tokens'], '.0f')} |")
        lines.append("")
    if s.get("rl_effect"):
        lines += ["Held-out RL effect (trained policy minus its cold start, same prompt and reward; paired by question, "
                  "95% bootstrap CI):", "",
                  "| arm | component | weight | cold start | trained | difference [95% CI] |", "|---|---|---|---|---|---|"]
        for name, e in s["rl_effect"].items():
            for comp, c in e["components"].items():
                w = e["weights"].get(comp)
                lines.append(f"| {name} | {comp} | {_fmt(w, 'g')} | {c['before']:.3f} | {c['after']:.3f} | "
                             f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] |")
            lines.append(f"| {name} | (probe) | | {e['n_questions']} questions × {e['n']} samples, "
                         f"T {e['temperature']:g}, ≤ {e['max_new_tokens']} tokens | | |")
        lines.append("")
    for j in s["judge"]:
        lines.append(f"judge `{j['method']}`: {j['parsed']}/{j['records']} judgements parsed ({j['parse_rate']:.0%})")
    if s["judge"]:
        lines.append("")
    lines += ["| target | value | rule | holds |", "|---|---|---|---|"]
    for t in s["targets"]:
        v = t["value"]
        lines.append(f"| {t['target']} | {_fmt(v, '.3g') if isinstance(v, (int, float)) else '-'} | {t['rule']} | "
                     f"{ {True: 'yes', False: '**no**', None: 'not measured'}[t['holds']] } |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str | os.PathLike, splits_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` into ``out_dir`` (atomically) and return the summary."""

    s = build_summary(out_dir, splits_dir)
    write_json(s, Path(out_dir) / SUMMARY_JSON)
    md = to_markdown(s)
    write_text(md, Path(out_dir) / SUMMARY_MD)
    return s
