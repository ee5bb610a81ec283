"""Evaluation generation throughput (tokens/s) with transformers and vLLM, against the GPU's roofline.

    python benchmarks/generation_throughput.py --threads 1        # CPU: embedded SmolLM2-135M, batch 1 and 4
    python benchmarks/generation_throughput.py --model Qwen/Qwen2.5-3B-Instruct --batch-sizes 1 8 32 64 \\
        --new-tokens 256 --engines transformers vllm              # GPU; a random Qwen2.5-3B if offline

Prompts are the bundled sample questions rendered with the crpo prompt through the model's chat template
(the evaluation prompts), batched ``--batch-sizes`` at a time. Every answer is forced to exactly
``--new-tokens`` tokens (``min_new_tokens`` / vLLM ``ignore_eos``) with greedy decoding, so tokens/s is
well defined. Each (engine, batch) is timed twice: with 1 new token (the prefill) and with N; then

    end-to-end tokens/s = B·N / t_N          decode tokens/s = B·(N−1) / (t_N − t_1)

Roofline (CUDA only): decoding is memory-bound — every step reads all weights once, plus each sequence's
KV cache — so ``decode tokens/s ≤ bandwidth · B / (weight bytes + B · context · KV bytes per token)``, and
compute-bound at ``peak FLOP/s / (2 · parameters)``; the bound is the smaller. The script prints measured /
bound. Bandwidth and peak bf16 FLOP/s come from a table of GPUs by name (override with
``--bandwidth-gbs`` and ``--peak-tflops``). On CPU it reports tokens/s only.

Real evaluation stops at EOS, so its tokens/s is this figure at a smaller effective batch near the end;
``clinical_r1.generate`` uses the same engines (``TransformersBackend``: batched ``generate``, left padding).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, gpu_info, table, write_result  # noqa: E402

NAME = "generation_throughput"
# name substring -> (memory bandwidth GB/s, dense bf16 TFLOP/s); first match wins (most specific first)
GPU_SPECS: list[tuple[str, float, float]] = [
    ("H200", 4800, 989), ("H100 NVL", 3900, 835), ("H100 PCIe", 2000, 756), ("H100", 3350, 989),
    ("GH200", 4000, 989), ("B200", 8000, 2250), ("A100-SXM4-80GB", 2039, 312), ("A100 80GB PCIe", 1935, 312),
    ("A100", 1555, 312), ("L40S", 864, 362), ("L40", 864, 181), ("L4", 300, 121), ("A10G", 600, 70),
    ("A10", 600, 125), ("RTX 4090", 1008, 165), ("RTX 3090", 936, 71), ("V100", 900, 125), ("T4", 320, 65),
]


def gpu_spec(name: str, bandwidth_gbs: float | None, peak_tflops: float | None) -> dict[str, Any] | None:
    for key, bw, tf in GPU_SPECS:
        if key.lower() in name.lower():
            return {"match": key, "bandwidth_gbs": bandwidth_gbs or bw, "peak_tflops": peak_tflops or tf}
    if bandwidth_gbs and peak_tflops:
        return {"match": None, "bandwidth_gbs": bandwidth_gbs, "peak_tflops": peak_tflops}
    return None


def roofline(spec: dict[str, Any], n_params: int, weight_bytes: int, kv_per_token: int, batch: int,
             context: float) -> dict[str, float]:
    """Upper bounds on decode tokens/s for one batch at a mean context length."""
    mem = spec["bandwidth_gbs"] * 1e9 * batch / (weight_bytes + batch * context * kv_per_token)
    compute = spec["peak_tflops"] * 1e12 / (2 * n_params)
    return {"memory_bound_tps": mem, "compute_bound_tps": compute, "bound_tps": min(mem, compute)}


def kv_bytes_per_token(config: Any, bytes_per_value: int) -> int:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * bytes_per_value


def prompts(tok: Any, n: int) -> list[list[int]]:
    """Token ids of ``n`` evaluation prompts (the sample questions, crpo prompt kind), cycled if needed."""
    from clinical_r1.data import load_sample
    from clinical_r1.generate import render_prompt

    items = list(load_sample())
    texts = [render_prompt(tok, items[i % len(items)], "crpo") for i in range(n)]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_transformers(model: Any, tok: Any, batch: list[list[int]], new_tokens: int, repeats: int) -> float:
    """Best wall time to generate exactly ``new_tokens`` per prompt for one left-padded batch."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=pad)
        _sync()
        best = min(best, time.perf_counter() - t0)
        if out.shape[1] - width != new_tokens:
            raise RuntimeError(f"transformers generated {out.shape[1] - width} tokens, expected {new_tokens}")
    return best


def time_vllm(llm: Any, batch: list[list[int]], new_tokens: int, repeats: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    reqs = [{"prompt_token_ids": p} for p in batch]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = llm.generate(reqs, params, use_tqdm=False)
        best = min(best, time.perf_counter() - t0)
        got = {len(o.outputs[0].token_ids) for o in outs}
        if got != {new_tokens}:
            raise RuntimeError(f"vLLM generated {sorted(got)} tokens, expected {new_tokens}")
    return best


def measure(engine: str, timer: Any, ids: list[list[int]], batch_sizes: Sequence[int], new_tokens: int,
            repeats: int) -> list[dict[str, Any]]:
    rows = []
    timer(ids[:1], 2, 1)  # warm-up (kernels, CUDA graphs, allocator)
    for b in batch_sizes:
        batch = ids[:b]
        t1 = timer(batch, 1, repeats)
        tn = timer(batch, new_tokens, repeats)
        prompt_len = sum(len(p) for p in batch) / b
        rows.append({"engine": engine, "batch": b, "new_tokens": new_tokens, "mean_prompt_tokens": prompt_len,
                     "prefill_seconds": t1, "total_seconds": tn,
                     "end_to_end_tps": b * new_tokens / tn,
                     "decode_tps": b * (new_tokens - 1) / (tn - t1) if tn > t1 else None})
        logging.info("%s batch %d: %.1f tokens/s end to end", engine, b, b * new_tokens / tn)
    return rows


def load_transformers(ref: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    from clinical_r1.models import load_tokenizer, torch_dtype

    tok = load_tokenizer(ref, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype(dtype))
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return model, tok


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def main(argv: Sequence[str] | None = None) -> Path:
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: Qwen/Qwen2.5-3B-Instruct on CUDA, the embedded model on CPU")
    ap.add_argument("--random-init", action="store_true", help="use a random Qwen2.5-3B even when the weights load")
    ap.add_argument("--engines", nargs="+", default=None, help="transformers and/or vllm (default: those available)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 1 8 32 (CUDA), 1 4 (CPU)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens per answer (default 256 CUDA, 32 CPU)")
    ap.add_argument("--repeats", type=int, default=2, help="keep the best of this many timings")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on GPU (fp16 without bf16), fp32 on CPU")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="GPU memory bandwidth override (GB/s)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 TFLOP/s override")
    ap.add_argument("--vllm-memory", type=float, default=0.85, help="vLLM gpu_memory_utilization")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--results-dir", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from clinical_r1.cli import setup_logging

    setup_logging()
    batch_sizes = a.batch_sizes or ([1, 8, 32] if cuda else [1, 4])
    new_tokens = a.new_tokens or (256 if cuda else 32)
    engines = a.engines or (["transformers"] + (["vllm"] if cuda and vllm_importable() else []))
    if "vllm" in engines and not (cuda and vllm_importable()):
        sys.exit("generation_throughput.py: --engines vllm needs CUDA and an importable vllm package")

    from clinical_r1.models import EMBEDDED_DEFAULT, resolve_model

    with tempfile.TemporaryDirectory(prefix="gen_tput.") as tmp:
        if cuda:
            from _policy import PAPER_MODEL, policy_folder

            ref, kind = policy_folder(a.model or PAPER_MODEL, Path(tmp) / "policy", random_only=a.random_init,
                                      device="cuda")
        else:
            ref, kind = resolve_model(a.model or EMBEDDED_DEFAULT), "pretrained"
        model, tok = load_transformers(ref, a.dtype)
        ids = prompts(tok, max(batch_sizes))
        n_params = sum(p.numel() for p in model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bytes_per_value = next(model.parameters()).element_size()
        kv_tok = kv_bytes_per_token(model.config, bytes_per_value)
        rows: list[dict[str, Any]] = []
        if "transformers" in engines:
            rows += measure("transformers", functools.partial(time_transformers, model, tok), ids, batch_sizes,
                            new_tokens, a.repeats)
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if "vllm" in engines:
            from vllm import LLM

            from clinical_r1.models import torch_dtype

            dtype = str(torch_dtype(a.dtype)).removeprefix("torch.")  # the transformers rows' dtype (bf16_supported)
            llm = LLM(model=ref, dtype=dtype, seed=0, gpu_memory_utilization=a.vllm_memory,
                      max_model_len=max(len(p) for p in ids) + new_tokens + 8)
            rows += measure("vllm", functools.partial(time_vllm, llm), ids, batch_sizes, new_tokens, a.repeats)
            del llm

    spec = gpu_spec(gpu_info()["name"], a.bandwidth_gbs, a.peak_tflops) if cuda else None
    for r in rows:
        if spec and r["decode_tps"]:
            rf = roofline(spec, n_params, weight_bytes, kv_tok, r["batch"], r["mean_prompt_tokens"] + new_tokens / 2)
            r.update(rf, roofline_ratio=r["decode_tps"] / rf["bound_tps"])
    payload = {"name": NAME, "environment": environment(with_gpu=True),
               "model": {"ref": str(ref) if kind == "pretrained" else f"random-init {a.model or 'Qwen2.5-3B'} shape",
                         "weights": kind, "n_params": n_params, "weight_bytes": weight_bytes,
                         "kv_bytes_per_token": kv_tok, "bytes_per_value": bytes_per_value},
               "settings": {"batch_sizes": batch_sizes, "new_tokens": new_tokens, "engines": engines,
                            "repeats": a.repeats, "greedy": True, "forced_length": True},
               "gpu_spec": spec, "rows": rows}
    path = write_result(NAME, payload, Path(a.results_dir) if a.results_dir else None)
    where = f"{gpu_info()['name']}" if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ngeneration throughput: {payload['model']['ref']} ({kind}, {n_params / 1e6:.0f}M parameters) on {where}")
    header = ["engine", "batch", "prefill s", "end-to-end tok/s", "decode tok/s"]
    if spec:
        header += ["roofline tok/s", "measured/roofline"]
    print(table([(r["engine"], r["batch"], r["prefill_seconds"], r["end_to_end_tps"], r["decode_tps"],
                  *((r.get("bound_tps"), r.get("roofline_ratio")) if spec else ())) for r in rows], header))
    if cuda and not spec:
        print("no roofline: unknown GPU; pass --bandwidth-gbs and --peak-tflops")
    if kind.startswith("random"):
        print("weights: RANDOM initialisation of the Qwen2.5-3B shape (the real weights could not be loaded)")
    print(f"\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
