"""One decode step on CPU, by attention implementation and by how many answers are decoded together.

    python benchmarks/decode_cpu.py                         # ~2 min on 2 cores
    python benchmarks/decode_cpu.py --rows 8,48 --attn grouped,eager --steps 30

What it answers: how much a generated token costs while answering, the part of evaluation, the RL-effect probe and
TRL's sampling that is not the prompt. The embedded SmolLM2-135M-Instruct in bf16 (the demo's dtype) with a fresh
LoRA on every linear layer (r 32: the demo's policies decode through one) reads ``--prompts`` bundled sample
questions under the crpo prompt in one prefill; the KV cache is then copied to ``rows`` answers
(``batch_repeat_interleave``, as ``generate.TransformersBackend`` shares a prompt among its samples), and each step
feeds one sampled token per answer through the model and appends it to the cache. Reported: the median wall time of
a step after ``--warmup`` steps, per step and per answer.

Implementations (``model.set_attn_implementation``): ``sdpa`` (torch's default), ``eager`` (transformers' eager
attention, which copies each cached key and value once per query head that shares it, ``repeat_kv``) and
``grouped`` (``clinical_r1.models.grouped_eager_attention``: the same products, reading the shared cache in place;
what ``models.cpu_decode_attention`` switches to while decoding on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, table, write_result  # noqa: E402

NAME = "decode_cpu"
IMPLEMENTATIONS = {"sdpa": "sdpa", "eager": "eager", "grouped": None}  # None: models.GROUPED_EAGER


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="8,12,24,48,96", help="answers decoded together, comma-separated")
    ap.add_argument("--attn", default="eager,grouped", help=f"implementations, from {sorted(IMPLEMENTATIONS)}")
    ap.add_argument("--prompts", type=int, default=12, help="distinct prompts (rows are spread over them)")
    ap.add_argument("--steps", type=int, default=25, help="decode steps timed per setting")
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=None)
    a = ap.parse_args(argv)

    import torch
    from clinical_r1.data import load_sample
    from clinical_r1.generate import render_prompt
    from clinical_r1.models import GROUPED_EAGER, load_policy, register_grouped_eager

    if a.threads:
        torch.set_num_threads(a.threads)
    attns = a.attn.split(",")
    unknown = [x for x in attns if x not in IMPLEMENTATIONS]
    if unknown:
        ap.error(f"--attn {unknown}: choose from {sorted(IMPLEMENTATIONS)}")
    register_grouped_eager()
    model, tok = load_policy({"name": "embedded:smollm2-135m-instruct", "backend": "transformers", "dtype": "bfloat16"},
                             lora={"r": 32, "alpha": 16, "target_modules": "all-linear"})
    model.eval()
    items = list(load_sample())[: a.prompts]
    enc = tok([render_prompt(tok, it, "crpo") for it in items], return_tensors="pt", padding=True,
              add_special_tokens=False)
    rows_list = [int(r) for r in a.rows.split(",")]
    results = []
    torch.manual_seed(0)
    with torch.inference_mode():
        for rows in rows_list:
            if rows % min(rows, len(items)):
                ap.error(f"--rows {rows}: a multiple of --prompts {len(items)} (or fewer than it)")
            sub = {k: v[: min(rows, len(items))] for k, v in enc.items()}
            reps = rows // len(sub["input_ids"])
            for attn in attns:
                model.get_base_model().set_attn_implementation(IMPLEMENTATIONS[attn] or GROUPED_EAGER)
                out = model(**sub, use_cache=True)
                cache = out.past_key_values
                cache.batch_repeat_interleave(reps)
                mask = sub["attention_mask"].repeat_interleave(reps, 0)
                nxt = out.logits[:, -1:].float().argmax(-1).repeat_interleave(reps, 0)
                times = []
                for _ in range(a.steps):
                    mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
                    t = time.perf_counter()
                    o = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
                    nxt = torch.multinomial(torch.softmax(o.logits[:, -1].float(), -1), 1)
                    times.append(time.perf_counter() - t)
                step = statistics.median(times[a.warmup :])
                results.append({"attn": attn, "rows": rows, "context": int(mask.shape[1]),
                                "step_seconds": step, "seconds_per_answer_token": step / rows})
                print(f"{attn:8s} rows {rows:3d}: {step * 1000:.0f} ms a step, {step / rows * 1000:.1f} ms an answer",
                      flush=True)
    payload = {"environment": environment(), "model": "embedded:smollm2-135m-instruct", "dtype": "bfloat16",
               "lora_r": 32, "prompts": len(items), "prompt_tokens_padded": int(enc["input_ids"].shape[1]),
               "steps": a.steps, "warmup": a.warmup, "results": results}
    path = write_result(NAME, payload, Path(a.results_dir) if a.results_dir else None)
    print(table([(r["attn"], r["rows"], r["step_seconds"] * 1000, r["seconds_per_answer_token"] * 1000)
                 for r in results], ["attention", "rows", "ms/step", "ms/answer-token"]))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
