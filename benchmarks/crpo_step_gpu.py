"""CRPO step time, generated tokens/s and peak GPU memory for a Qwen2.5-3B policy: plain TRL vs the fast paths.

    python benchmarks/crpo_step_gpu.py                        # every available variant, G = 5 and 8, 3 steps each
    python benchmarks/crpo_step_gpu.py --variants trl vllm --G 8 --max-completion-length 1024
    python benchmarks/crpo_step_gpu.py --config configs/t4_16gb_crpo.yaml --variants trl unsloth
    python benchmarks/crpo_step_gpu.py --config configs/paper_3b_crpo.yaml --max-completion-length 512 --steps 2
    python benchmarks/crpo_step_gpu.py --smoke                # CPU plumbing check: 2-layer model, numbers meaningless

CUDA only (it exits with a message otherwise, except ``--smoke``). Variants, each run when importable:

- ``trl``: plain TRL ``GRPOTrainer``, generation with transformers ``generate`` (model.backend transformers);
- ``unsloth``: Unsloth's patched model and trainer (model.backend unsloth), its own generation;
- ``vllm``: plain TRL with vLLM colocated in the training process (``use_vllm: true, vllm_mode: colocate``;
  always a 16-bit base: TRL merges the LoRA into the base weights to sync vLLM, which fails on 4-bit ones);
- ``unsloth-vllm``: Unsloth with its vLLM engine (``fast_inference``; ``use_vllm: true``).

Every (variant, G) runs in its own subprocess (Unsloth patches transformers/TRL on import, and a colocated
vLLM engine does not hand its memory back), through the project's entry point
``clinical_r1.crpo.run_crpo(recipe)``. The comparison is fair by construction:

- one recipe for all variants: the built-in Qwen2.5-3B CRPO LoRA recipe (r 32, all linear layers, gradient
  checkpointing, the crpo reward preset; G completions per micro-batch, ``--prompts-per-step`` (default 4)
  micro-batches per optimiser step, as the T4 recipe), or ``--config`` (a project recipe's own batch shape;
  ``--G`` keeps its prompts per micro-batch and step);
- the optimiser settings (``optim``, ``weight_decay``, ``learning_rate``, Adam betas/epsilon, ``max_grad_norm``,
  scheduler) are written into the recipe explicitly, resolved from plain TRL's ``GRPOConfig`` in the parent
  process: Unsloth's patched config class has other defaults (``adamw_8bit``, weight decay 0.001). Each result
  records the values its trainer config actually held, and the table flags a variant that differs;
- one dtype for all: the recipe's, or bf16 where the GPU has it and fp16 elsewhere (``models.bf16_supported``,
  compute capability >= 8.0) for ``dtype: auto``;
- enough questions for the batch shape: the 64 bundled sample questions are repeated (ids suffixed ``~k``) to
  fill ``steps + 1`` optimiser steps and at least one generation batch (the paper recipe draws 512 prompts per
  step); ``--no-repeat`` fails early instead, naming the numbers.

Step time is TRL's ``step_time`` from the run's ``metrics.jsonl`` (the first step is left out of the mean);
generated tokens/s = completions per step x mean completion length / step time. Peak memory is per process
tree through NVML (``_common.PeakGpuMemory``: the worker and its vLLM engine processes, package
``nvidia-ml-py``), or device-wide (``cudaMemGetInfo``) where NVML cannot see the process; the column
``memory`` says which. ``torch.cuda.max_memory_allocated`` (PyTorch's allocator in the worker) is kept beside it.

The policy is ``Qwen/Qwen2.5-3B-Instruct`` when its weights load (local folder, HF cache, or the hub);
otherwise a randomly initialised model of its exact shape (``_policy.QWEN25_3B``: hidden 2048, 36 layers,
16 heads, 2 KV heads, intermediate 11008, vocab 151936, tied embeddings) with a small ChatML tokenizer, and
the output says so. Random weights never emit EOS, so every completion runs to the full length.

Targets printed beside the results: the fast path at least 2x plain TRL's throughput (generated tokens/s)
for the same G, and the 3B CRPO LoRA recipe within 15 GB peak (the T4 budget; judged on the variants
without vLLM, since vLLM reserves ``gpu_memory_utilization`` of the GPU up front).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, PeakGpuMemory, environment, table, write_result  # noqa: E402

NAME = "crpo_step_gpu"
VARIANTS = ("trl", "unsloth", "vllm", "unsloth-vllm")
SPEEDUP_TARGET = 2.0  # fast path / plain TRL generated tokens per second
MEMORY_TARGET_GB = 15.0  # peak for the Qwen2.5-3B CRPO LoRA recipe (T4: 16 GB)
# Trainer settings that every variant must share; Unsloth's patched GRPOConfig has other defaults for some.
PINNED = ("optim", "weight_decay", "learning_rate", "lr_scheduler_type", "warmup_steps", "adam_beta1", "adam_beta2",
          "adam_epsilon", "max_grad_norm", "num_iterations", "beta", "epsilon", "loss_type", "temperature", "top_p",
          "top_k", "gradient_checkpointing", "per_device_train_batch_size", "gradient_accumulation_steps",
          "num_generations", "max_completion_length", "bf16", "fp16")


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def available_variants() -> list[str]:
    u, v = importable("unsloth"), importable("vllm")
    return [x for x, ok in (("trl", True), ("unsloth", u), ("vllm", v), ("unsloth-vllm", u and v)) if ok]


# ---------------------------------------------------------------------------------------------------
# The recipe of one (variant, G) run
# ---------------------------------------------------------------------------------------------------


def builtin_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """The built-in Qwen2.5-3B CRPO LoRA recipe (before the benchmark's overrides): the T4 recipe's shape,
    G completions per micro-batch and ``prompts_per_step`` micro-batches per optimiser step."""
    return {
        "stage": "crpo", "seed": 0,
        "model": {"dtype": "auto", "load_in_4bit": False, "gpu_memory_utilization": spec["vllm_memory"]},
        "lora": {"r": 32, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "reward": {"preset": "crpo", "k": None, "weights": {}},
        "max_prompt_length": spec["max_prompt_length"],
        "trainer": {
            "learning_rate": 1.0e-6, "lr_scheduler_type": "constant", "warmup_steps": 0,
            "optim": "adamw_torch", "weight_decay": 0.0, "max_grad_norm": 1.0,
            "num_generations": spec["G"], "per_device_train_batch_size": spec["G"],  # one prompt per micro-batch
            "gradient_accumulation_steps": spec["prompts_per_step"] or 4,
            "max_completion_length": spec["max_completion_length"] or 1024,
            "temperature": 0.6, "top_p": 1.0, "top_k": 0, "beta": 0.001, "epsilon": 0.2, "num_iterations": 1,
            "loss_type": "grpo", "scale_rewards": "group", "multi_objective_aggregation": "sum_then_normalize",
            "disable_dropout": True, "gradient_checkpointing": True, "dataloader_num_workers": 0,
        },
    }


def batch_shape(trainer: dict[str, Any], g: int | None, prompts_per_step: int | None) -> dict[str, int]:
    """``num_generations``, ``per_device_train_batch_size`` and ``gradient_accumulation_steps`` for G = ``g``,
    keeping the recipe's prompts per micro-batch; ``prompts_per_step`` sets the micro-batches per step."""
    g0 = int(trainer.get("num_generations", 8))
    per_device = int(trainer.get("per_device_train_batch_size", g0))
    if per_device % g0:
        raise SystemExit(f"recipe: per_device_train_batch_size {per_device} is not a multiple of num_generations {g0}")
    g = int(g or g0)
    return {"num_generations": g, "per_device_train_batch_size": per_device // g0 * g,
            "gradient_accumulation_steps": int(prompts_per_step or trainer.get("gradient_accumulation_steps", 1))}


def bench_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """The recipe of one (variant, G) run, as a config mapping for ``run_crpo``; built in the parent process,
    which never imports Unsloth.

    The built-in recipe or ``spec["config"]``, with the benchmark's overrides: model, backend and engine of the
    variant, the batch shape for G, one explicit dtype, the optimiser settings of plain TRL written out (see
    :data:`PINNED`), the bundled questions, a few steps, no checkpoints.
    """
    from clinical_r1.config import apply_overrides, read_yaml

    v, smoke = spec["variant"], spec["smoke"]
    use_vllm = v in ("vllm", "unsloth-vllm")
    cfg = read_yaml(spec["config"]) if spec.get("config") else builtin_recipe(spec)
    trainer = cfg.setdefault("trainer", {})
    dtype = "float32" if smoke else cfg.get("model", {}).get("dtype", "auto")
    if dtype == "auto":
        from clinical_r1.models import half_dtype_name

        dtype = half_dtype_name()  # the same 16-bit type for every variant (Unsloth would pick its own)
    over: dict[str, Any] = {
        "run_name": f"bench_{v}_G{spec['G']}", "output_root": spec["runs_dir"], "overwrite": True, "resume": False,
        "model.name": spec["model_ref"], "model.backend": "unsloth" if v.startswith("unsloth") else "transformers",
        "model.init_adapter": None, "model.dtype": dtype,
        "data": {"name": "sample", "path": None, "split": "train", "limit": None},
        "trainer.max_steps": spec["steps"], "trainer.bf16": dtype == "bfloat16", "trainer.fp16": dtype == "float16",
        "trainer.shuffle_dataset": False, "trainer.logging_steps": 1, "trainer.save_strategy": "no",
        "trainer.report_to": "none", "trainer.use_vllm": use_vllm,
        **{f"trainer.{k}": val for k, val in batch_shape(trainer, spec["G"], spec["prompts_per_step"]).items()},
    }
    if spec["load_in_4bit"]:
        over["model.load_in_4bit"] = True
    if spec["max_completion_length"]:
        over["trainer.max_completion_length"] = spec["max_completion_length"]
    if use_vllm:
        over["model.gpu_memory_utilization"] = spec["vllm_memory"]  # Unsloth's engine
    if v == "vllm":  # 16-bit base even with --load-in-4bit or the T4 recipe: TRL syncs vLLM by merging the LoRA
        # adapter into the base weights, which breaks on bitsandbytes 4-bit ones (config validation refuses it)
        over.update({"trainer.vllm_mode": "colocate", "trainer.vllm_gpu_memory_utilization": spec["vllm_memory"],
                     "model.load_in_4bit": False})
    if smoke:  # CPU: fp32, no quantisation, tiny completions
        over.update({"model.load_in_4bit": False, "trainer.gradient_checkpointing": False,
                     "trainer.max_completion_length": 16, "trainer.dataloader_num_workers": 0})
    mcl = over.get("trainer.max_completion_length") or trainer.get("max_completion_length", 256)
    over["model.max_seq_length"] = int(cfg.get("max_prompt_length") or spec["max_prompt_length"]) + int(mcl)
    if v == "vllm":
        over["trainer.vllm_max_model_length"] = over["model.max_seq_length"]
    cfg = apply_overrides(cfg, over)
    return pin_trainer_settings(cfg, cpu_safe=smoke)


def pin_trainer_settings(cfg: dict[str, Any], cpu_safe: bool = False) -> dict[str, Any]:
    """``cfg`` with every :data:`PINNED` setting written out as plain TRL resolves it (recipe value or TRL's
    default), so Unsloth's patched config class cannot substitute its own defaults."""
    from clinical_r1.config import load_config, trainer_args

    args = trainer_args(load_config(cfg, stage="crpo"), cpu_safe=cpu_safe)
    fields = {f.name for f in dataclasses.fields(args)}
    for k in PINNED:
        if k in fields:
            val = getattr(args, k)
            cfg["trainer"][k] = val.value if hasattr(val, "value") else val  # enums (optim, scheduler) as strings
    return cfg


def questions_needed(args: Any, steps: int) -> dict[str, int]:
    """Prompts the trainer draws: per optimiser step, per generation batch, and for ``steps + 1`` steps."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps // args.num_generations
    spg = getattr(args, "steps_per_generation", None) or args.gradient_accumulation_steps
    per_generation = args.per_device_train_batch_size * spg // args.num_generations
    return {"per_step": per_step, "per_generation": per_generation,
            "needed": max(per_generation, per_step * (steps + 1))}


def fill_questions(ds: Any, needed: int, repeat: bool) -> Any:
    """``ds`` repeated (ids suffixed ``~k``) to at least ``needed`` rows; with ``repeat=False`` a clear error."""
    if len(ds) >= needed:
        return ds
    if not repeat:
        raise SystemExit(f"the batch shape draws {needed} prompts ({len(ds)} sample questions exist); drop "
                         f"--no-repeat to repeat them, or lower --steps / the batch shape")
    from datasets import concatenate_datasets

    k = math.ceil(needed / len(ds))
    copies = [ds.map(lambda r, i=i: {"id": f"{r['id']}~{i}"}) for i in range(k)]
    return concatenate_datasets(copies)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (variant, G) run in this process, on the recipe the parent built; returns its measurements."""
    import torch

    from clinical_r1.models import import_unsloth_first

    cuda = torch.cuda.is_available()
    import_unsloth_first(spec["recipe"]["model"]["backend"])  # before transformers/TRL are imported
    from clinical_r1.config import load_config, trainer_args
    from clinical_r1.crpo import run_crpo
    from clinical_r1.data import load_benchmark
    from clinical_r1.runs import read_metrics
    from crpo_step_cpu import step_rows, summarize_steps

    cfg = load_config(spec["recipe"], stage="crpo")
    args = trainer_args(cfg, cpu_safe=not cuda)  # the config class this process trains with (Unsloth's, if any)
    need = questions_needed(args, spec["steps"])
    sample = load_benchmark("sample")
    ds = fill_questions(sample, need["needed"], repeat=not spec.get("no_repeat"))
    per_step = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    if cuda:
        with PeakGpuMemory() as mem:
            run = run_crpo(cfg, train_dataset=ds)
    else:
        run, mem = run_crpo(cfg, train_dataset=ds), None
    rows = step_rows(read_metrics(run))
    start = rows[0]["time"] - rows[0]["step_time"] if rows[0].get("step_time") else t0
    held = {k: getattr(args, k) for k in PINNED if hasattr(args, k)}
    out = {"variant": spec["variant"], "G": spec["G"], "total_seconds": time.time() - t0,
           **summarize_steps(rows, per_step, start),
           "questions": {"unique": len(sample), "rows": len(ds), **need},
           "recipe": {"backend": cfg["model"]["backend"], "use_vllm": bool(args.use_vllm), "dtype": cfg["model"]["dtype"],
                      "lora_r": cfg["lora"]["r"], "load_in_4bit": bool(cfg["model"]["load_in_4bit"]),
                      "trainer_config_class": type(args).__name__,
                      **{k: (v.value if hasattr(v, "value") else v) for k, v in held.items()}}}
    if cuda:
        out.update(peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
                   peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9, **mem.record())
    return out


# ---------------------------------------------------------------------------------------------------
# The parent: one subprocess per (variant, G), then the comparison
# ---------------------------------------------------------------------------------------------------


def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out_path = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(out_path)]
    t = spec["recipe"]["trainer"]
    print(f"-> {spec['variant']} G={spec['G']} ({t['per_device_train_batch_size']} x {t['gradient_accumulation_steps']} "
          f"completions per step, {t['optim']}, weight decay {t['weight_decay']}, {spec['recipe']['model']['dtype']}) ...",
          flush=True)
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
        peak = None if r["recipe"]["use_vllm"] else (r.get("peak_gpu_memory_gb") or r.get("peak_allocated_gb"))
        r["meets_memory_target"] = None if peak is None else peak <= MEMORY_TARGET_GB
        r["differs_from_trl"] = unfair_settings(r, b)
    return results


def unfair_settings(r: dict[str, Any], base: dict[str, Any] | None) -> dict[str, list[Any]]:
    """The :data:`PINNED` trainer settings (and dtype) in which ``r`` held other values than plain TRL's run."""
    if base is None or r is base:
        return {}
    keys = [k for k in (*PINNED, "dtype") if k in r["recipe"] or k in base["recipe"]]
    return {k: [base["recipe"].get(k), r["recipe"].get(k)] for k in keys if r["recipe"].get(k) != base["recipe"].get(k)}


def print_results(payload: dict[str, Any]) -> None:
    m = payload["model"]
    ok = [r for r in payload["results"] if "error" not in r]
    mcl = ok[0]["recipe"].get("max_completion_length") if ok else payload["settings"]["max_completion_length"]
    gpu = payload["environment"].get("gpu")
    print(f"\nCRPO step on {gpu['name'] if gpu else 'CPU (smoke)'}: {m['ref']} ({m['weights']}), "
          f"max_completion_length {mcl}")
    rows = []
    for r in payload["results"]:
        if "error" in r:
            rows.append((r["variant"], r["G"], "ERROR", None, None, None, None, None, None, None, None))
            continue
        rows.append((r["variant"], r["G"], r["step_seconds_mean"], r["generated_tokens_per_second"],
                     r.get("speedup_vs_trl"), r.get("peak_gpu_memory_gb"), r.get("gpu_memory_scope"),
                     r.get("peak_allocated_gb"),
                     {True: "yes", False: "NO", None: "-"}[r.get("meets_speedup_target")],
                     {True: "yes", False: "NO", None: "-"}[r.get("meets_memory_target")],
                     "NO" if r.get("differs_from_trl") else "yes"))
    print(table(rows, ["variant", "G", "step s", "gen tok/s", "x trl", "peak GPU GB", "memory", "torch alloc GB",
                       f">= {SPEEDUP_TARGET:g}x", f"<= {MEMORY_TARGET_GB:g} GB", "same settings"]))
    for r in payload["results"]:
        if "error" in r:
            print(f"\n{r['variant']} G={r['G']} failed: {r['error'][-800:]}")
        elif r.get("differs_from_trl"):
            print(f"\n{r['variant']} G={r['G']} trained with other settings than plain TRL (trl, this): "
                  f"{r['differs_from_trl']}")
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
    ap.add_argument("--G", nargs="+", type=int, default=None,
                    help="group sizes (num_generations); default 5 and 8, the recipe's own with --config")
    ap.add_argument("--steps", type=int, default=3, help="optimiser steps per run (the first is left out)")
    ap.add_argument("--prompts-per-step", type=int, default=None,
                    help="micro-batches per optimiser step; default 4 (the T4 recipe's), the recipe's with --config")
    ap.add_argument("--no-repeat", action="store_true",
                    help="fail when the batch shape needs more than the 64 sample questions instead of repeating them")
    ap.add_argument("--max-completion-length", type=int, default=None,
                    help="default 1024 for the built-in recipe, the recipe's own with --config")
    ap.add_argument("--max-prompt-length", type=int, default=1024)
    ap.add_argument("--load-in-4bit", action="store_true", help="QLoRA (bitsandbytes) for every variant but vllm")
    ap.add_argument("--vllm-memory", type=float, default=0.35, help="GPU share for a colocated vLLM engine")
    ap.add_argument("--config", default=None, help="a project CRPO recipe to time instead of the built-in one")
    ap.add_argument("--work-dir", default=None, help="policy cache and run folders (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per (variant, G) run")
    ap.add_argument("--smoke", action="store_true", help="CPU plumbing check with a 2-layer model (trl only)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def recipe_group_size(config: str) -> int:
    from clinical_r1.config import read_yaml

    return int(read_yaml(config).get("trainer", {}).get("num_generations", 8))


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
                "max_completion_length": a.max_completion_length, "no_repeat": a.no_repeat,
                "max_prompt_length": a.max_prompt_length, "load_in_4bit": a.load_in_4bit,
                "vllm_memory": a.vllm_memory, "config": a.config, "smoke": a.smoke, "runs_dir": str(work / "runs")}
        gs = [2] if a.smoke else (a.G or ([recipe_group_size(a.config)] if a.config else [5, 8]))
        results = []
        for g in gs:
            for v in variants:
                spec = {**base, "variant": v, "G": g}
                results.append(run_worker({**spec, "recipe": bench_recipe(spec)}, a.timeout))
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
