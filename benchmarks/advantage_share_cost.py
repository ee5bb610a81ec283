"""Cost of seeing inside a run: the per-step work of ``clinical_r1.monitors.StepMonitor`` against a CRPO step.

    python benchmarks/advantage_share_cost.py                  # ~20 s on one core; writes the JSON
    python benchmarks/advantage_share_cost.py --step-seconds 60 --tokens 1500

What it times, in one process, exactly what the reward-function tap does after the last reward of a batch
(``StepMonitor.metrics``): the advantage decomposition and shares (``clinical_r1.advantage``), how often each
reward varies, the length-drift Spearman correlation, and the per-completion monitors (near-copy, option-only,
box outside, seq-rep-4). The completions are ``reward_throughput.py``'s synthetic clinical ones, scored first by
the crpo preset's rewards as in training (so the parser's memo is warm, as it is in TRL's reward call). Shapes:

- ``cpu_demo``: 8 completions (2 prompts x G = 4), the CPU demo recipe; the share of its measured step
  (``crpo_step_cpu`` result, else ``--step-seconds``); target well under 1%;
- ``paper``: 2560 completions (512 prompts x G = 5) of ``--tokens`` tokens, the paper's step; reported as the
  shortest step for which the tap stays under 1% (``min_step_seconds_for_1pct``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, latency_summary, latest_result, table, write_result  # noqa: E402
from reward_throughput import realistic_set  # noqa: E402

from clinical_r1.monitors import StepMonitor  # noqa: E402
from clinical_r1.rewards import get_preset  # noqa: E402

NAME = "advantage_share_cost"
TARGET_SHARE = 0.01
SHAPES = {"cpu_demo": (8, 4, 150), "paper": (2560, 5, None)}  # completions, G, tokens (None: --tokens)


def time_step(n: int, g: int, tokens: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    preset = get_preset("crpo")
    items = realistic_set(n, tokens, seed)
    comps = [it["completion"] for it in items]
    cols = {"answer": [it["answer"] for it in items], "options": [it["options"] for it in items]}
    rewards = np.column_stack([f(comps, **cols) for f in preset.functions()])  # as in training: parser memo warm
    lengths = np.array([len(c) / 4 for c in comps])
    mon = StepMonitor(list(preset.weights), preset.weight_list(), g, "sum_then_normalize", "group", "crpo")
    split = {}
    for part, kw in (("advantage_shares", {}), ("all", {"lengths": lengths, "completions": comps,
                                                        "options": cols["options"]})):
        mon.metrics(rewards, **kw)  # warm-up: the first call imports scipy.stats (once per process)
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = mon.metrics(rewards, **kw)
            seconds.append(time.perf_counter() - t0)
        split[part] = latency_summary(seconds)
    assert abs(sum(v for k, v in out.items() if k.startswith("advantage_share/")) - 1) < 1e-9 or \
        not any(k.startswith("advantage_share/") for k in out)
    return {"completions": n, "num_generations": g, "tokens": tokens, "rewards": len(preset.weights), **split,
            "logged": sorted(out)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1500, help="tokens per completion in the paper shape")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--step-seconds", type=float, default=None, help="CPU demo step (default: crpo_step_cpu result)")
    a = ap.parse_args(argv)
    step_s, src = a.step_seconds, "--step-seconds"
    if step_s is None:
        latest = latest_result("crpo_step_cpu")
        step_s, src = (float(latest[1]["summary"]["step_seconds_mean"]), latest[0].name) if latest else (60.0, "default 60 s")
    shapes = {}
    for name, (n, g, tokens) in SHAPES.items():
        r = time_step(n, g, tokens or a.tokens, a.repeats if name == "cpu_demo" else max(1, a.repeats // 2))
        mean_s = r["all"]["p50_ms"] / 1e3
        r["min_step_seconds_for_1pct"] = mean_s / TARGET_SHARE
        if name == "cpu_demo":
            r.update(step_seconds=step_s, step_seconds_source=src, share_of_step=mean_s / step_s)
        shapes[name] = r
    payload = {"name": NAME, "environment": environment(), "target_share": TARGET_SHARE, "shapes": shapes}
    path = write_result(NAME, payload)
    print(table([[k, r["completions"], r["advantage_shares"]["p50_ms"], r["all"]["p50_ms"],
                  r.get("share_of_step"), r["min_step_seconds_for_1pct"]] for k, r in shapes.items()],
                ["shape", "completions", "shares ms (p50)", "all ms (p50)", "share of step", "1% at step >= s"]))
    print(f"CPU demo step: {step_s:.1f} s ({src}); wrote {path}")
    return payload


if __name__ == "__main__":
    main()
