"""CRPO step time on CPU: the embedded model with the CPU demo recipe, timed per optimiser step.

    python benchmarks/crpo_step_cpu.py                                   # 4 steps, ~1-2 min on 2 cores
    python benchmarks/crpo_step_cpu.py --steps 6 --set trainer.max_completion_length=64

It runs the project's own entry point, ``clinical_r1.crpo.run_crpo(config, overrides)``, on
``configs/cpu_demo_crpo.yaml`` (embedded SmolLM2-135M-Instruct, LoRA, the bundled sample questions) with
these overrides: ``trainer.max_steps=--steps``, ``trainer.logging_steps=1``, ``trainer.save_strategy=no``,
``model.init_adapter=null`` (the base model, so the benchmark does not need the SFT run first; a merged
adapter costs the same per step), and a throw-away ``output_root``. Extra ``--set key=value`` overrides
are applied last.

Step time comes from the run's ``metrics.jsonl`` (one line per optimiser step, written by
``runs.MetricsLogger``): TRL's ``step_time`` (wall time inside ``training_step`` summed over the
accumulation micro-batches: generation + rewards + forward/backward) and, as a cross-check, the wall-clock
gap between consecutive log lines (which adds the optimiser step and logging). The first step is reported
but left out of the mean (it pays one-off costs). Completions per step =
``per_device_train_batch_size × gradient_accumulation_steps × processes``; generated tokens per second =
completions per step × ``completions/mean_length`` / step time.

**Profile of a step** (``summary.phases``): TRL times its own phases with ``trl.extras.profiling`` (logged only to
W&B/MLflow/Trackio); this script records those timings in-process instead: generation (``transformers.generate``),
the forward passes outside the loss (``_get_per_token_logps_and_entropies`` outside ``compute_loss``: the
reference model when β > 0, old log-probs when reused), the rewards (``_calculate_rewards``), the policy forward
(inside ``compute_loss``); the backward pass is TRL's ``step_time`` less ``_prepare_inputs`` (generation + scoring)
and ``compute_loss``; the optimiser step and logging are the wall time between log lines less ``step_time``. Each
phase gets its FLOPs (2·N per token for a forward, 2·N more for the backward through frozen base weights, N = the
model's parameters in matmuls) and GFLOP/s, set against the nominal bf16 peak of these 2 cores (AMD Zen 4,
AVX512-BF16: 64 bf16 FLOP per cycle and core at the ``cpu MHz`` of /proc/cpuinfo; measured matmuls reach ~90% of it
on one core).

``benchmarks/reward_throughput.py`` reads ``summary.step_seconds_mean`` and ``summary.completions_per_step``
from the newest result of this script for its share-of-step figure.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, environment, table, write_result  # noqa: E402

NAME = "crpo_step_cpu"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "cpu_demo_crpo.yaml"


def bench_overrides(steps: int, output_root: str, extra: Sequence[str]) -> list[str]:
    return [f"trainer.max_steps={steps}", "trainer.logging_steps=1", "trainer.save_strategy='no'",
            "model.init_adapter=null", f"output_root={output_root}", "run_name=bench_crpo_step_cpu",
            "overwrite=true", "resume=false", *extra]


def step_rows(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One training log line per optimiser step (the final summary line has no ``step_time``/``loss``)."""
    rows = [r for r in metrics if "step_time" in r or "loss" in r]
    if not rows:
        raise RuntimeError("metrics.jsonl has no per-step training lines; was trainer.logging_steps=1 applied?")
    return rows


def summarize_steps(rows: list[dict[str, Any]], completions_per_step: int, t_start: float) -> dict[str, Any]:
    walls, prev = [], t_start
    for r in rows:
        walls.append(r["time"] - prev)
        prev = r["time"]
    trl = [r.get("step_time") for r in rows]
    per_step = [t if t is not None else w for t, w in zip(trl, walls)]  # TRL < step_time: wall clock
    steady = per_step[1:] or per_step
    mean_len = [r.get("completions/mean_length") for r in rows]
    lens = [x for x in mean_len[1:] or mean_len if x is not None]
    step_s = statistics.fmean(steady)
    tokens = completions_per_step * statistics.fmean(lens) if lens else None
    return {
        "steps": len(rows),
        "step_seconds": per_step,
        "wall_seconds_between_logs": walls,
        "step_time_source": "trl step_time" if all(t is not None for t in trl) else "wall clock between log lines",
        "step_seconds_mean": step_s,
        "step_seconds_first": per_step[0],
        "completions_per_step": completions_per_step,
        "completion_mean_tokens": statistics.fmean(lens) if lens else None,
        "generated_tokens_per_second": tokens / step_s if tokens else None,
        "completions_per_second": completions_per_step / step_s,
    }


class PhaseTimer:
    """Collects TRL's own phase timings (``trl.extras.profiling.ProfilingContext``) by step, in-process."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.rows: list[tuple[str, float]] = []

    def install(self) -> None:
        from trl.extras import profiling

        timer = self
        enter, exit_ = profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__

        def _enter(ctx):  # type: ignore[no-untyped-def]
            timer.stack.append(ctx.name.split(".", 1)[-1])  # "GRPOTrainer.compute_loss" -> "compute_loss"
            return enter(ctx)

        def _exit(ctx, *exc):  # type: ignore[no-untyped-def]
            start = ctx._start_time
            out = exit_(ctx, *exc)
            name = timer.stack.pop()
            if start is not None:
                where = "in_loss" if "compute_loss" in timer.stack else "outside_loss"
                label = f"{name}:{where}" if name == "_get_per_token_logps_and_entropies" else name
                timer.rows.append((label, time.perf_counter() - start))
            return out

        profiling.ProfilingContext.__enter__, profiling.ProfilingContext.__exit__ = _enter, _exit

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, d in self.rows:
            out[name] = out.get(name, 0.0) + d
        return out


def nominal_bf16_peak(cores: int) -> float:
    """GFLOP/s: cores x 64 bf16 FLOP/cycle (Zen 4 AVX512-BF16, vdpbf16ps on two 256-bit pipes) x the cpu MHz."""
    mhz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    return cores * 64 * (mhz or 2600.0) / 1000


def phases(timer: PhaseTimer, rows: list[dict[str, Any]], walls: list[float], n_params: int,
           completions_per_step: int, prompt_tokens: float, cores: int) -> dict[str, Any]:
    """Seconds per step of each phase (steps 2+ averaged), with its FLOPs and GFLOP/s against the bf16 peak."""
    steps = len(rows)
    t = {k: v / steps for k, v in timer.totals().items()}
    step_s = statistics.fmean(r["step_time"] for r in rows)
    wall_s = statistics.fmean(walls)
    comp = statistics.fmean(r.get("completions/mean_length") or 0.0 for r in rows)
    seq_tokens = completions_per_step * (prompt_tokens + comp)
    gen = t.get("transformers.generate", 0.0)
    outside = t.get("_get_per_token_logps_and_entropies:outside_loss", 0.0)
    policy_fwd = t.get("_get_per_token_logps_and_entropies:in_loss", 0.0)
    loss = t.get("compute_loss", 0.0)
    prepare = t.get("_prepare_inputs", 0.0)
    reward = t.get("_calculate_rewards", 0.0)
    backward = max(0.0, step_s - prepare - loss)
    optimiser = max(0.0, wall_s - step_s)
    flops = {  # 2·N per token read by a forward pass; generation reads each prompt once per completion in TRL
        "generation": 2 * n_params * completions_per_step * (prompt_tokens + comp),
        "forward outside the loss (reference / old log-probs)": 2 * n_params * seq_tokens if outside else 0.0,
        "policy forward (in the loss)": 2 * n_params * seq_tokens,
        "backward": 2 * n_params * seq_tokens,
    }
    secs = {"generation": gen, "forward outside the loss (reference / old log-probs)": outside,
            "policy forward (in the loss)": policy_fwd, "backward": backward,
            "rewards": reward, "loss arithmetic": max(0.0, loss - policy_fwd),
            "scoring and the rest of _prepare_inputs": max(0.0, prepare - gen - outside - reward),
            "optimiser step and logging": optimiser}
    peak = nominal_bf16_peak(cores)
    out = {}
    for k, s_ in secs.items():
        f = flops.get(k)
        gf = f / s_ / 1e9 if f and s_ > 0 else None
        out[k] = {"seconds": s_, "share": s_ / wall_s if wall_s else None, "gflop": f / 1e9 if f else None,
                  "gflop_per_s": gf, "of_bf16_peak": gf / peak if gf else None}
    return {"per_step_seconds": wall_s, "phases": out, "bf16_peak_gflop_per_s": peak, "n_params": n_params,
            "sequence_tokens_per_step": seq_tokens, "prompt_tokens_mean": prompt_tokens}


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--steps", type=int, default=4, help="optimiser steps (the first is left out of the mean)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra recipe overrides, applied after the benchmark's own")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--results-dir", default=None)
    a = ap.parse_args(argv)
    from clinical_r1.cli import setup_logging

    setup_logging(level=logging.WARNING)

    import torch

    from clinical_r1.config import load_config, trainer_args
    from clinical_r1.crpo import run_crpo
    from clinical_r1.runs import read_metrics

    if a.threads:
        torch.set_num_threads(a.threads)
    timer = PhaseTimer()
    timer.install()
    with tempfile.TemporaryDirectory(prefix="crpo_step_cpu.") as tmp:
        overrides = bench_overrides(a.steps, tmp, a.overrides)
        cfg = load_config(a.config, overrides, stage="crpo")
        args = trainer_args(cfg)
        per_step = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)
        t0 = time.time()
        run = run_crpo(a.config, overrides)
        total = time.time() - t0
        rows = step_rows(read_metrics(run))
        # the first log line's gap includes model loading; measure it from the training start instead
        first = rows[0]["time"] - rows[0].get("step_time", 0.0) if rows[0].get("step_time") else t0
        summary = summarize_steps(rows, per_step, first)
    # prompt tokens per completion from TRL's cumulative num_tokens (prompt + completion tokens of every sequence)
    toks = [r.get("num_tokens") for r in rows]
    per_seq = [(b - a_) / per_step for a_, b in zip([0.0] + toks[:-1], toks)] if all(toks) else []
    prompt_tokens = statistics.fmean(s_ - (r.get("completions/mean_length") or 0.0) for s_, r in zip(per_seq, rows)) \
        if per_seq else 0.0
    summary["profile"] = phases(timer, rows, summary["wall_seconds_between_logs"], model_parameters(cfg), per_step,
                                prompt_tokens, torch.get_num_threads())
    conf = Path(a.config).resolve()
    recipe = {"config": str(conf.relative_to(REPO_ROOT)) if conf.is_relative_to(REPO_ROOT) else str(conf),
              "overrides": [o for o in overrides if not o.startswith("output_root=")],
              "model": cfg["model"]["name"], "preset": cfg["reward"]["preset"],
              "num_generations": int(args.num_generations), "max_completion_length": int(args.max_completion_length),
              "per_device_train_batch_size": int(args.per_device_train_batch_size),
              "gradient_accumulation_steps": int(args.gradient_accumulation_steps), "lora_r": cfg["lora"]["r"]}
    payload = {"name": NAME, "environment": environment(), "recipe": recipe, "total_seconds": total,
               "summary": summary}
    path = write_result(NAME, payload, Path(a.results_dir) if a.results_dir else None)
    print(f"\nCRPO step on CPU: {recipe['model']}, G={recipe['num_generations']}, "
          f"max_completion_length={recipe['max_completion_length']}, torch threads {torch.get_num_threads()}")
    print(table([(i + 1, s, w) for i, (s, w) in enumerate(zip(summary["step_seconds"], summary["wall_seconds_between_logs"]))],
                ["step", "step s", "wall s"]))
    print(table([("mean step s (steps 2+)", summary["step_seconds_mean"]),
                 ("completions / step", summary["completions_per_step"]),
                 ("mean completion tokens", summary["completion_mean_tokens"]),
                 ("generated tokens / s", summary["generated_tokens_per_second"])], ["", "value"]))
    prof = summary["profile"]
    print(f"\nOne step, by phase (mean of {len(rows)} steps; bf16 peak of {torch.get_num_threads()} cores "
          f"{prof['bf16_peak_gflop_per_s']:.0f} GFLOP/s nominal; {prof['sequence_tokens_per_step']:.0f} sequence tokens, "
          f"{prof['prompt_tokens_mean']:.0f} of each are the prompt):")
    print(table([(k, v["seconds"], v["share"], v["gflop_per_s"], v["of_bf16_peak"]) for k, v in prof["phases"].items()],
                ["phase", "s / step", "share", "GFLOP/s", "of bf16 peak"]))
    print(f"\nwrote {path}")
    return path


def model_parameters(cfg: Any) -> int:
    """Parameters of the policy's base model (tied embeddings once: the LM head is a matmul, the lookup is not)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from clinical_r1.models import resolve_model

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model(cfg["model"]["name"])))
    return sum(p.numel() for p in m.parameters())


if __name__ == "__main__":
    main()
