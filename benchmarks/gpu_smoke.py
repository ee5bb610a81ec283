"""One GPU smoke command: every GPU path of the project once, in about 10 minutes, with a pass/fail table.

    make gpu-smoke                                           # = python benchmarks/gpu_smoke.py
    python benchmarks/gpu_smoke.py --model Qwen/Qwen2.5-0.5B-Instruct   # a smaller policy: faster download
    python benchmarks/gpu_smoke.py --dry-run                 # print and check the steps' commands, run nothing

Needs a CUDA GPU and either GPU stack (``requirements-gpu.txt``, CUDA 13 with vLLM, or
``requirements-gpu-cu12.txt``, CUDA 12 without; ``python -m clinical_r1 gpu-stack`` says which this machine
takes); without CUDA it exits at once with a message, code 2. It runs on whichever stack is installed and
records which (torch, its CUDA, vLLM or none). Each step runs the project's own command line in a subprocess, with a time limit taken from what is left of
``--budget`` (600 s); a step whose input failed is skipped, and the others still run:

1. ``sft``: 2 optimiser steps of ``configs/t4_16gb_sft.yaml`` (4-bit base, fp16, LoRA r 32) on the bundled
   sample traces;
2. ``crpo-<variant>``: 2 CRPO steps of ``configs/t4_16gb_crpo.yaml`` (continuing that adapter, G = 4,
   256-token completions) for each generation variant: ``transformers`` (plain TRL ``generate``),
   ``unsloth``, ``vllm`` (TRL with vLLM colocated; a 16-bit base, since TRL cannot sync a 4-bit one) and
   ``unsloth-vllm`` (Unsloth's ``fast_inference``); the two vLLM variants are skipped, and say why, on a stack
   without vLLM (the CUDA 12 one);
3. ``eval``: 16 bundled questions answered by the first CRPO adapter that passed, with the engine evaluation
   picks itself (``--backend auto``: vLLM where installed, a ``LoRARequest`` on the base, never merged into 4-bit
   weights; transformers on the CUDA 12 stack), then scored (``clinical_r1.evaluate``); the questions were also
   training data, so the accuracy is a plumbing check, not a result;
4. ``merge``: ``python -m clinical_r1 merge`` of the same adapter into one plain folder.

So on the CUDA 13 stack it covers fp16 + 4-bit (T4 recipe) with and without vLLM; on the CUDA 12 stack, fp16 +
4-bit without vLLM (4 of the 6 training/evaluation paths; the vLLM ones show as skip).

It prints a table (step, pass/FAIL/skip, seconds, detail) and writes
``benchmarks/results/gpu_smoke-<date>.json``: the stack (torch, its CUDA, vLLM or none, and which requirements
file that is), the environment (GPU, driver, CUDA, library versions, commit) and every step's command, status, time and the tail of its output. The exit code is 0 when every step
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, environment, table, write_result  # noqa: E402

from clinical_r1.gpu_stack import STACKS, installed_torch, vllm_installed  # noqa: E402

NAME = "gpu_smoke"
BUDGET_S = 600.0  # the whole smoke, first model download included
SFT_RECIPE = "configs/t4_16gb_sft.yaml"
CRPO_RECIPE = "configs/t4_16gb_crpo.yaml"
# generation variant -> recipe overrides
VLLM_VARIANTS = ("vllm", "unsloth-vllm")  # skipped on a stack without vLLM
VARIANTS: dict[str, dict[str, Any]] = {
    "transformers": {"model.backend": "transformers", "trainer.use_vllm": False},
    "unsloth": {"model.backend": "unsloth", "trainer.use_vllm": False},
    # 16-bit base: TRL syncs the policy to its vLLM engine by merging the LoRA adapter into the base weights,
    # which breaks on bitsandbytes 4-bit weights (the T4 recipe's load_in_4bit; config validation refuses it).
    "vllm": {"model.backend": "transformers", "model.load_in_4bit": False, "trainer.use_vllm": True,
             "trainer.vllm_mode": "colocate", "trainer.vllm_gpu_memory_utilization": 0.3,
             "trainer.vllm_max_model_length": 1024},
    "unsloth-vllm": {"model.backend": "unsloth", "trainer.use_vllm": True, "model.gpu_memory_utilization": 0.3},
}
EVAL_QUESTIONS = 16
COMPLETION_TOKENS = 256  # CRPO completions and evaluation answers: enough for the format, short enough to be quick


@dataclass
class Step:
    """One smoke step: a command line, what it needs from earlier steps, and what happened."""

    name: str
    argv: list[str]
    needs: list[str] = field(default_factory=list)  # steps that must pass first
    needs_vllm: bool = False  # skipped where vLLM is not installed (the CUDA 12 stack)
    recipe: tuple[str, list[str]] | None = None  # (recipe file, --set overrides), checked by --dry-run
    status: str = "not run"  # pass | FAIL | skip
    seconds: float | None = None
    detail: str = ""
    output_tail: str = ""


def sets(overrides: dict[str, Any]) -> list[str]:
    """``--set key=value`` arguments (values as YAML: booleans lower-case, None as null)."""
    out = []
    for k, v in overrides.items():
        val = "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        out += ["--set", f"{k}={val}"]
    return out


def plan(work: Path, model: str) -> list[Step]:
    """The smoke's steps, in order, writing under ``work``."""
    py = sys.executable
    sft = {"run_name": "sft", "output_root": str(work), "overwrite": True, "resume": False, "model.name": model,
           "data.traces": None, "data.limit": 24, "data.dev_size": 4, "trainer.max_steps": 2,
           "trainer.num_train_epochs": 1, "trainer.per_device_train_batch_size": 2,
           "trainer.gradient_accumulation_steps": 2, "trainer.eval_steps": 1, "trainer.save_steps": 1,
           "trainer.dataloader_num_workers": 0}
    steps = [Step("sft", [py, "-m", "clinical_r1", "sft", "--config", SFT_RECIPE, *sets(sft)],
                  recipe=(SFT_RECIPE, sets(sft)[1::2]))]
    adapter = work / "sft" / "adapter"
    for variant, over in VARIANTS.items():
        crpo = {"run_name": f"crpo_{variant}", "output_root": str(work), "overwrite": True, "resume": False,
                "model.name": model, "model.init_adapter": str(adapter), "model.max_seq_length": 1024,
                "data.name": "sample", "data.path": None, "data.split": "train", "data.limit": 16,
                "max_prompt_length": 768, "trainer.max_steps": 2, "trainer.max_completion_length": COMPLETION_TOKENS,
                "trainer.save_strategy": "no", "trainer.logging_steps": 1, "trainer.dataloader_num_workers": 0,
                **over}
        steps.append(Step(f"crpo-{variant}", [py, "-m", "clinical_r1", "crpo", "--config", CRPO_RECIPE, *sets(crpo)],
                          needs=["sft"], recipe=(CRPO_RECIPE, sets(crpo)[1::2]), needs_vllm=variant in VLLM_VARIANTS))
    gen = work / "eval" / "sample.jsonl"
    steps.append(Step("eval", [py, "-m", "clinical_r1.generate", "--model", "{adapter}", "--benchmark", "sample",
                                    "--limit", str(EVAL_QUESTIONS), "--backend", "auto", "--prompt", "crpo",
                                    "--max-new-tokens", str(COMPLETION_TOKENS), "--batch-size", str(EVAL_QUESTIONS),
                                    "--out", str(gen)],
                      needs=["crpo-*"]))
    steps.append(Step("score", [py, "-m", "clinical_r1.evaluate", str(gen), "--benchmark", "sample", "--limit",
                                str(EVAL_QUESTIONS), "--n-boot", "200", "--out", str(gen.with_suffix(".metrics.json"))],
                      needs=["eval"]))
    steps.append(Step("merge", [py, "-m", "clinical_r1", "merge", "--adapter", "{adapter}", "--out",
                                str(work / "merged")], needs=["crpo-*"]))
    return steps


def trained_adapter(steps: Sequence[Step], work: Path) -> Path | None:
    """The adapter of the first CRPO variant that passed (the Unsloth ones first: the main path)."""
    order = ["crpo-unsloth", "crpo-unsloth-vllm", "crpo-transformers", "crpo-vllm"]
    done = {s.name for s in steps if s.status == "pass"}
    for name in order:
        if name in done:
            return work / name.replace("-", "_", 1) / "adapter"
    return None


def ready(step: Step, steps: Sequence[Step], has_vllm: bool = True) -> str | None:
    """Why ``step`` cannot run (no vLLM on this stack, or a needed step did not pass), or ``None``."""
    if step.needs_vllm and not has_vllm:
        return "vLLM is not installed (the CUDA 12 stack has none)"
    status = {s.name: s.status for s in steps}
    for need in step.needs:
        if need.endswith("*"):
            if not any(v == "pass" for k, v in status.items() if k.startswith(need[:-1])):
                return f"no {need[:-1]} step passed"
        elif status.get(need) != "pass":
            return f"needs {need}"
    return None


def run_step(step: Step, steps: Sequence[Step], work: Path, deadline: float) -> None:
    why = ready(step, steps, vllm_installed())
    left = deadline - time.time()
    if why or left < 5:
        step.status, step.detail = "skip", why or "the time budget is spent"
        return
    adapter = trained_adapter(steps, work)
    step.argv = [str(adapter) if a == "{adapter}" else a for a in step.argv]
    print(f"-> {step.name} (up to {left:.0f} s)", flush=True)
    t0 = time.time()
    try:
        proc = subprocess.run(step.argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired as e:
        step.seconds, step.status = time.time() - t0, "FAIL"
        step.detail = f"timed out after {left:.0f} s (the budget)"
        step.output_tail = _text(e.stderr)[-4000:]
        return
    step.seconds = time.time() - t0
    step.output_tail = (proc.stdout[-1000:] + "\n" + proc.stderr[-4000:]).strip()
    step.status = "pass" if proc.returncode == 0 else "FAIL"
    step.detail = _last_line(proc.stdout) if proc.returncode == 0 else f"exit {proc.returncode}: {_last_line(proc.stderr)}"
    if step.name == "score" and step.status == "pass":
        res = json.loads((work / "eval" / "sample.metrics.json").read_text())["overall"]
        step.detail = f"accuracy {res.get('accuracy')} on {res.get('n_questions')} questions, valid {res.get('valid_ratio')}"


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][-200:] if lines else ""


def stack_record() -> dict[str, Any]:
    """The installed GPU stack, from package metadata: torch, its CUDA major, vLLM (or None), and the requirements
    file whose torch and vLLM pins it matches (None: neither, e.g. a hand-made install)."""
    from importlib import metadata

    torch = installed_torch()
    try:
        vllm = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        vllm = None
    match = None
    for s in STACKS:
        pins = s.pins()
        if torch and torch[0].partition("+")[0] == pins.get("torch") and vllm == pins.get("vllm"):
            match = s.requirements
    return {"torch": torch[0] if torch else None, "torch_cuda_major": torch[1] if torch else None, "vllm": vllm,
            "requirements": match}


def dry_run(steps: Sequence[Step]) -> int:
    """Print every command and build each recipe's TRL config (``cpu_safe``: GPU recipes on a CPU machine)."""
    from clinical_r1.config import load_config, trainer_args

    for s in steps:
        print(f"{s.name}: {' '.join(s.argv)}" + ("   [needs vLLM]" if s.needs_vllm else ""))
        if s.recipe:
            cfg = load_config(REPO_ROOT / s.recipe[0], s.recipe[1])
            args = trainer_args(cfg, cpu_safe=True)
            print(f"    ok: {type(args).__name__}, backend {cfg['model']['backend']}, use_vllm {args.use_vllm if hasattr(args, 'use_vllm') else '-'}, "
                  f"{cfg['model']['dtype']}, 4-bit {cfg['model']['load_in_4bit']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-3B-Instruct", help="the policy (the T4 recipes' by default)")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole smoke")
    ap.add_argument("--work-dir", default=None, help="run folders (default: a temporary folder, removed after)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--dry-run", action="store_true", help="print and check the commands; run nothing (any machine)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu_smoke.") as tmp:
        work = Path(a.work_dir or tmp).resolve()
        steps = plan(work, a.model)
        if a.dry_run:
            return dry_run(steps)
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_smoke.py needs a CUDA GPU, and torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
                  f"sees none on this machine; nothing was run. On a CUDA machine: pip install -r <the file "
                  f"`python -m clinical_r1 gpu-stack` names> && pip install --no-deps -e . && make gpu-smoke",
                  file=sys.stderr)
            return 2
        deadline = time.time() + a.budget
        for s in steps:
            run_step(s, steps, work, deadline)
    payload = {"name": NAME, "stack": stack_record() | {"torch_cuda": torch.version.cuda},
               "environment": environment(with_gpu=True), "model": a.model, "budget_seconds": a.budget,
               "passed": all(s.status == "pass" for s in steps), "steps": [asdict(s) for s in steps]}
    path = write_result(NAME, payload, Path(a.results_dir) if a.results_dir else None)
    gpu = payload["environment"]["gpu"] or {}
    st = payload["stack"]
    print(f"\nGPU smoke on {gpu.get('name')} (driver {gpu.get('driver')}), {a.model}; stack: torch {st['torch']} "
          f"(CUDA {st['torch_cuda']}), vLLM {st['vllm'] or 'not installed'}, {st['requirements'] or 'no pinned file'}")
    print(table([(s.name, s.status, s.seconds, s.detail[:100]) for s in steps], ["step", "status", "seconds", "detail"]))
    print(f"\nwrote {path}")
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
