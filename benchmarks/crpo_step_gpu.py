"""CRPO step time, generated tokens/s and peak GPU memory for a Qwen2.5-3B policy: plain TRL vs the fast paths.

    python benchmarks/crpo_step_gpu.py                        # every available variant, G = 5 and 8, 3 steps each
    python benchmarks/crpo_step_gpu.py --variants trl vllm --G 8 --max-completion-length 1024
    python benchmarks/crpo_step_gpu.py --config configs/<gpu recipe>.yaml    # time a project recipe instead
    python benchmarks/crpo_step_gpu.py --smoke                # CPU plumbing check: 2-layer model, numbers meaningless

CUDA only (it exits with a message otherwise, except ``--smoke``). Variants, each run when importable:

- ``trl``: plain TRL ``GRPOTrainer``, generation with transformers ``generate`` (model.backend transformers);
- ``unsloth``: Unsloth's patched model and trainer (model.backend unsloth), its own generation;
- ``vllm``: plain TRL with vLLM colocated in the training process (``use_vllm: true, vllm_mode: colocate``);
- ``unsloth-vllm``: Unsloth with its vLLM engine (``fast_inference``; ``use_vllm: true``).

Every (variant, G) runs in its own subprocess (Unsloth patches transformers/TRL on import, and a colocated
vLLM engine does not hand its memory back), through the project's entry point
``clinical_r1.crpo.run_crpo(recipe)``: a CRPO LoRA recipe (r 32, all linear layers, bf16, gradient
checkpointing, the crpo reward preset, the bundled sample questions) with ``num_generations = G``,
``per_device_train_batch_size = G`` (one prompt group per micro-batch), ``--prompts-per-step`` groups per
optimiser step, ``--max-completion-length`` tokens. Step time is TRL's ``step_time`` from the run's
``metrics.jsonl`` (the first step is left out of the mean); generated tokens/s = completions per step ×
mean completion length / step time; peak memory is ``torch.cuda.max_memory_allocated`` plus the device-level
peak (``cudaMemGetInfo``, sampled every 0.2 s: it also sees vLLM's and CUDA's own allocations).

The policy is ``Qwen/Qwen2.5-3B-Instruct`` when its weights load (local folder, HF cache, or the hub);
otherwise a randomly initialised model of its exact shape (``_policy.QWEN25_3B``: hidden 2048, 36 layers,
16 heads, 2 KV heads, intermediate 11008, vocab 151936, tied embeddings) with a small ChatML tokenizer, and
the output says so. Random weights never emit EOS, so every completion runs to the full length.

Targets printed beside the results: the fast path at least 2x plain TRL's throughput (generated tokens/s)
for the same G, and the 3B CRPO LoRA recipe within 15 GB peak (the T4 budget; judged on the device-level
peak of the variants without vLLM, since vLLM reserves ``gpu_memory_utilization`` of the GPU up front —
``--config configs/t4_16gb_crpo.yaml --variants unsloth --G 4`` checks the T4 recipe itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, environment, table, write_result  # noqa: E402

NAME = "crpo_step_gpu"
VARIANTS = ("trl", "unsloth", "vllm", "unsloth-vllm")
SPEEDUP_TARGET = 2.0  # fast path / plain TRL generated tokens per second
MEMORY_TARGET_GB = 15.0  # peak for the Qwen2.5-3B CRPO LoRA recipe (T4: 16 GB)


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def available_variants() -> list[str]:
    u, v = importable("unsloth"), importable("vllm")
    return [x for x, ok in (("trl", True), ("unsloth", u), ("vllm", v), ("unsloth-vllm", u and v)) if ok]


# ---------------------------------------------------------------------------------------------------
# The recipe of one (variant, G) run
# ---------------------------------------------------------------------------------------------------


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def bench_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """The recipe of one (variant, G) run, as a config mapping for ``run_crpo``.

    Built in (a Qwen2.5-3B CRPO LoRA recipe), or ``spec["config"]`` (a project recipe) with the benchmark's
    overrides: model, backend and engine of the variant, G, the bundled questions, a few steps, no checkpoints.
    """
    from clinical_r1.config import apply_overrides, read_yaml

    v, g, smoke = spec["variant"], spec["G"], spec["smoke"]
    use_vllm = v in ("vllm", "unsloth-vllm")
    if spec.get("config"):
        cfg = read_yaml(spec["config"])
    else:
        bf16 = _bf16_supported()
        cfg = {
            "stage": "crpo", "seed": 0,
            "model": {"dtype": "auto", "load_in_4bit": False, "gpu_memory_utilization": spec["vllm_memory"]},
            "lora": {"r": 32, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
            "reward": {"preset": "crpo", "k": None, "weights": {}},
            "max_prompt_length": spec["max_prompt_length"],
            "trainer": {
                "learning_rate": 1.0e-6, "lr_scheduler_type": "constant", "warmup_steps": 0,
                "gradient_accumulation_steps": spec["prompts_per_step"] or 1,
                "max_completion_length": spec["max_completion_length"] or 1024,
                "temperature": 0.6, "top_p": 1.0, "top_k": 0, "beta": 0.001, "epsilon": 0.2, "num_iterations": 1,
                "loss_type": "grpo", "scale_rewards": "group", "multi_objective_aggregation": "sum_then_normalize",
                "disable_dropout": True, "bf16": bf16, "fp16": not bf16, "gradient_checkpointing": True,
                "dataloader_num_workers": 0,
            },
        }
    if spec["prompts_per_step"]:
        cfg.setdefault("trainer", {})["gradient_accumulation_steps"] = spec["prompts_per_step"]
    accum = int(cfg.get("trainer", {}).get("gradient_accumulation_steps", 1))
    over: dict[str, Any] = {
        "run_name": f"bench_{v}_G{g}", "output_root": spec["runs_dir"], "overwrite": True, "resume": False,
        "model.name": spec["model_ref"], "model.backend": "unsloth" if v.startswith("unsloth") else "transformers",
        "model.init_adapter": None,
        "data": {"name": "sample", "path": None, "split": "train", "limit": (spec["steps"] + 1) * accum},
        "trainer.max_steps": spec["steps"], "trainer.num_generations": g,
        "trainer.per_device_train_batch_size": g,  # one prompt group per micro-batch
        "trainer.shuffle_dataset": False, "trainer.logging_steps": 1, "trainer.save_strategy": "no",
        "trainer.report_to": "none", "trainer.use_vllm": use_vllm,
    }
    if spec["load_in_4bit"]:
        over["model.load_in_4bit"] = True
    if spec["max_completion_length"]:
        over["trainer.max_completion_length"] = spec["max_completion_length"]
    if use_vllm:
        over["model.gpu_memory_utilization"] = spec["vllm_memory"]  # Unsloth's engine
    if v == "vllm":
        over.update({"trainer.vllm_mode": "colocate", "trainer.vllm_gpu_memory_utilization": spec["vllm_memory"]})
    if smoke:  # CPU: fp32, no quantisation, tiny completions
        over.update({"model.dtype": "float32", "model.load_in_4bit": False, "trainer.bf16": False,
                     "trainer.fp16": False, "trainer.gradient_checkpointing": False,
                     "trainer.max_completion_length": 16, "trainer.dataloader_num_workers": 0})
    mcl = over.get("trainer.max_completion_length") or cfg["trainer"].get("max_completion_length", 256)
    over["model.max_seq_length"] = int(cfg.get("max_prompt_length") or spec["max_prompt_length"]) + int(mcl)
    if v == "vllm":
        over["trainer.vllm_max_model_length"] = over["model.max_seq_length"]
    return apply_overrides(cfg, over)


class PeakDeviceMemory:
    """Polls ``torch.cuda.mem_get_info`` in a thread: the device-level peak (all allocators, this process)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakDeviceMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (variant, G) run in this process; returns its measurements."""
    import torch

    from clinical_r1.models import import_unsloth_first

    cuda = torch.cuda.is_available()
    if spec["variant"].startswith("unsloth"):
        import_unsloth_first("unsloth")  # before transformers/TRL are imported
    from clinical_r1.config import load_config, trainer_args
    from clinical_r1.crpo import run_crpo
    from clinical_r1.runs import read_metrics
    from crpo_step_cpu import step_rows, summarise

    cfg = load_config(bench_recipe(spec), stage="crpo")
    args = trainer_args(cfg)
    per_step = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    if cuda:
        with PeakDeviceMemory() as dev:
            run = run_crpo(cfg)
        device_peak = dev.peak
    else:
        run, device_peak = run_crpo(cfg), None
    rows = step_rows(read_metrics(run))
    start = rows[0]["time"] - rows[0]["step_time"] if rows[0].get("step_time") else t0
    out = {"variant": spec["variant"], "G": spec["G"], "total_seconds": time.time() - t0,
           **summarise(rows, per_step, start),
           "recipe": {"backend": cfg["model"]["backend"], "use_vllm": bool(args.use_vllm),
                      "num_generations": int(args.num_generations),
                      "max_completion_length": int(args.max_completion_length),
                      "per_device_train_batch_size": int(args.per_device_train_batch_size),
                      "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
                      "gradient_checkpointing": bool(args.gradient_checkpointing), "bf16": bool(args.bf16),
                      "lora_r": cfg["lora"]["r"], "load_in_4bit": bool(cfg["model"]["load_in_4bit"])}}
    if cuda:
        out.update(peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
                   peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9,
                   peak_device_used_gb=device_peak / 1e9)
    return out


# ---------------------------------------------------------------------------------------------------
# The parent: one subprocess per (variant, G), then the comparison
# ---------------------------------------------------------------------------------------------------


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out_path = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(out_path)]
    print(f"-> {spec['variant']} G={spec['G']} ...", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        out_path.unlink(missing_ok=True)
        return {"variant": spec["variant"], "G": spec["G"], "error": f"timed out after {timeout:.0f} s"}
    try:
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-3000:]
            return {"variant": spec["variant"], "G": spec["G"], "error": f"exit {proc.returncode}: {tail}"}
        return json.loads(out_path.read_text())
    finally:
        out_path.unlink(missing_ok=True)


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up of each variant over plain TRL at the same G, and the targets."""
    base = {r["G"]: r for r in results if r["variant"] == "trl" and "error" not in r}
    for r in results:
        if "error" in r:
            continue
        b = base.get(r["G"])
        tps, btps = r.get("generated_tokens_per_second"), b and b.get("generated_tokens_per_second")
        r["speedup_vs_trl"] = tps / btps if tps and btps else None
        r["meets_speedup_target"] = None if r["variant"] == "trl" or r["speedup_vs_trl"] is None \
            else r["speedup_vs_trl"] >= SPEEDUP_TARGET
        # vLLM reserves gpu_memory_utilization x the whole GPU up front: its peak shows that setting, not a need
        peak = None if r["recipe"]["use_vllm"] else (r.get("peak_device_used_gb") or r.get("peak_allocated_gb"))
        r["meets_memory_target"] = None if peak is None else peak <= MEMORY_TARGET_GB
    return results


def print_results(payload: dict[str, Any]) -> None:
    m = payload["model"]
    ok = [r for r in payload["results"] if "error" not in r]
    mcl = ok[0]["recipe"]["max_completion_length"] if ok else payload["settings"]["max_completion_length"]
    gpu = payload["environment"].get("gpu")
    print(f"\nCRPO step on {gpu['name'] if gpu else 'CPU (smoke)'}: {m['ref']} ({m['weights']}), "
          f"max_completion_length {mcl}")
    rows = []
    for r in payload["results"]:
        if "error" in r:
            rows.append((r["variant"], r["G"], "ERROR", None, None, None, None, None, None))
            continue
        rows.append((r["variant"], r["G"], r["step_seconds_mean"], r["generated_tokens_per_second"],
                     r.get("speedup_vs_trl"), r.get("peak_allocated_gb"), r.get("peak_device_used_gb"),
                     {True: "yes", False: "NO", None: "-"}[r.get("meets_speedup_target")],
                     {True: "yes", False: "NO", None: "-"}[r.get("meets_memory_target")]))
    print(table(rows, ["variant", "G", "step s", "gen tok/s", "x trl", "peak alloc GB", "peak device GB",
                       f">= {SPEEDUP_TARGET:g}x", f"<= {MEMORY_TARGET_GB:g} GB"]))
    for r in payload["results"]:
        if "error" in r:
            print(f"\n{r['variant']} G={r['G']} failed: {r['error'][-800:]}")
    if m["weights"] == "random-init":
        print("\nweights: RANDOM initialisation of the Qwen2.5-3B shape (the real weights could not be loaded, or "
              "--random-init); completions always run to max_completion_length")
    elif m["weights"].startswith("random"):
        print("\nsmoke run: a two-layer random model on CPU; the numbers only show that the plumbing works")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-3B-Instruct")
    ap.add_argument("--random-init", action="store_true", help="use a random Qwen2.5-3B even when the weights load")
    ap.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="default: all importable")
    ap.add_argument("--G", nargs="+", type=int, default=[5, 8], help="group sizes (num_generations)")
    ap.add_argument("--steps", type=int, default=3, help="optimiser steps per run (the first is left out)")
    ap.add_argument("--prompts-per-step", type=int, default=None,
                    help="prompt groups (micro-batches of G) per optimiser step; default 1, the recipe's with --config")
    ap.add_argument("--max-completion-length", type=int, default=None,
                    help="default 1024 for the built-in recipe, the recipe's own with --config")
    ap.add_argument("--max-prompt-length", type=int, default=1024)
    ap.add_argument("--load-in-4bit", action="store_true", help="QLoRA (bitsandbytes) for every variant")
    ap.add_argument("--vllm-memory", type=float, default=0.35, help="GPU share for a colocated vLLM engine")
    ap.add_argument("--config", default=None, help="a project CRPO recipe to time instead of the built-in one")
    ap.add_argument("--work-dir", default=None, help="policy cache and run folders (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per (variant, G) run")
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check with a 2-layer model (trl only)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path | None:
    a = parse_args(argv)
    if a.worker:
        res = worker(json.loads(a.worker))
        Path(a.worker_out).write_text(json.dumps(res))
        return None
    import torch

    if not a.smoke and not torch.cuda.is_available():
        sys.exit("crpo_step_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False). On CPU run "
                 "benchmarks/crpo_step_cpu.py, or add --smoke for a plumbing check with a tiny model.")
    from _policy import policy_folder

    variants = ["trl"] if a.smoke else (a.variants or available_variants())
    missing = [v for v in variants if v not in available_variants()]
    if missing:
        sys.exit(f"crpo_step_gpu.py: variant(s) {missing} need packages that are not importable "
                 f"(available: {available_variants()})")
    with tempfile.TemporaryDirectory(prefix="crpo_step_gpu.") as tmp:
        work = Path(a.work_dir or tmp)
        ref, kind = policy_folder(a.model, work / "policy", random_only=a.random_init, smoke=a.smoke)
        base = {"model_ref": ref, "steps": a.steps, "prompts_per_step": a.prompts_per_step,
                "max_completion_length": a.max_completion_length,
                "max_prompt_length": a.max_prompt_length, "load_in_4bit": a.load_in_4bit,
                "vllm_memory": a.vllm_memory, "config": a.config, "smoke": a.smoke, "runs_dir": str(work / "runs")}
        gs = [2] if a.smoke else a.G
        results = [run_worker({**base, "variant": v, "G": g}, a.timeout) for g in gs for v in variants]
    payload = {"name": NAME, "environment": environment(with_gpu=True),
               "model": {"ref": a.model if kind == "pretrained" else f"random-init {a.model} shape", "weights": kind},
               "settings": {**{k: v for k, v in base.items() if k not in ("model_ref", "runs_dir")},
                            "variants": variants, "G": gs},
               "targets": {"speedup_vs_trl": SPEEDUP_TARGET, "peak_memory_gb": MEMORY_TARGET_GB},
               "results": compare(results)}
    path = write_result(NAME + ("-smoke" if a.smoke else ""), payload, Path(a.results_dir) if a.results_dir else None)
    print_results(payload)
    print(f"\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
