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
    print(f"\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
