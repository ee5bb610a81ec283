"""Answering on CPU: transformers' ``generate`` against ``clinical_r1.generate.decode``, on the demo's two shapes.

    python benchmarks/answer_loop_cpu.py                   # ~5 min on 2 cores
    python benchmarks/answer_loop_cpu.py --adapter results/demo/sft/adapter --repeats 2

What it answers: what the project's own decoding loop saves on the work the demo's evaluation and RL-effect probe
do. Both paths answer the same prompts with the same model (the embedded SmolLM2-135M-Instruct in bf16, with
``--adapter``'s LoRA unmerged when given, as the demo's policies answer) under ``models.cpu_decode_attention``:

- ``generate``: ``model.generate`` on the left-padded batch, ``num_return_sequences`` for several samples (each copy
  of a prompt is read again), every row decoded until the longest answer ends;
- ``decode``: ``generate.decode``, which reads each prompt once, copies its cache to the samples, and drops an answer
  from the batch when it ends.

Shapes: ``probe`` (24 held-out questions x 4 samples at T ``--temperature``, up to ``--probe-tokens``: notebook 05's
RL-effect probe) and ``greedy`` (48 questions, greedy, up to 200 tokens: a method's evaluation batch). Questions are
the bundled sample questions (the demo's held-out sets are not needed). Reported: wall seconds per shape and path
(the best of ``--repeats``), answered tokens, and for greedy whether both paths wrote the same answers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, table, write_result  # noqa: E402

NAME = "answer_loop_cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", default=None, help="a LoRA adapter folder to answer with (default: the base model)")
    ap.add_argument("--temperature", type=float, default=0.6, help="the probe's sampling temperature")
    ap.add_argument("--probe-tokens", type=int, default=128, help="the probe's answer budget")
    ap.add_argument("--shapes", default="probe,greedy", help="comma-separated: probe, greedy")
    ap.add_argument("--repeats", type=int, default=1, help="runs per shape and path (the best is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--results-dir", default=None)
    a = ap.parse_args(argv)
    shapes = a.shapes.split(",")
    if set(shapes) - {"probe", "greedy"}:
        ap.error(f"--shapes {a.shapes}: choose from probe, greedy")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinical_r1.data import load_sample
    from clinical_r1.generate import decode, render_prompt, sample_seed
    from clinical_r1.models import cpu_decode_attention, ensure_embedded

    if a.threads:
        torch.set_num_threads(a.threads)
    folder = ensure_embedded()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(folder)
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    items = list(load_sample())
    eos = {tok.eos_token_id}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    settings = {"probe": dict(questions=24, n=4, temperature=a.temperature, max_new_tokens=a.probe_tokens),
                "greedy": dict(questions=48, n=1, temperature=0.0, max_new_tokens=200)}
    results = []
    for shape in shapes:
        s = settings[shape]
        batch = items[: s["questions"]]
        tok.padding_side = "left"
        enc = tok([render_prompt(tok, it, "crpo") for it in batch], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        answers = {}
        for path in ("generate", "decode"):
            best, tokens = None, 0
            for _ in range(a.repeats):
                torch.manual_seed(0)
                t = time.perf_counter()
                with torch.inference_mode(), cpu_decode_attention(model):
                    if path == "generate":
                        if s["temperature"]:
                            kw = dict(do_sample=True, temperature=s["temperature"], top_p=1.0, top_k=0)
                        else:
                            kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
                        out = model.generate(**enc, max_new_tokens=s["max_new_tokens"], num_return_sequences=s["n"],
                                             pad_token_id=pad, eos_token_id=sorted(eos), **kw)
                        rows = []
                        for r in out[:, enc["input_ids"].shape[1]:].tolist():
                            rows.append(r[: r.index(min(eos)) + 1] if min(eos) in r else r)
                    else:
                        seeds = [sample_seed(0, str(it["id"]), k) for it in batch for k in range(s["n"])]
                        rows = decode(model, enc["input_ids"], enc["attention_mask"], n=s["n"],
                                      max_new_tokens=s["max_new_tokens"], eos_ids=eos,
                                      temperature=s["temperature"], seeds=seeds)
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
                tokens = sum(len(r) for r in rows)
            answers[path] = rows
            results.append({"shape": shape, "path": path, "seconds": best, "answers": len(rows),
                            "answer_tokens": tokens, "prompt_tokens_padded": int(enc["input_ids"].shape[1]), **s})
            print(f"{shape:6s} {path:8s} {best:7.1f} s  {len(rows)} answers, {tokens} tokens", flush=True)
        if shape == "greedy":
            same = sum(x == y for x, y in zip(answers["generate"], answers["decode"]))
            results[-1]["same_greedy_answers"] = same
            print(f"greedy answers identical: {same} of {len(answers['decode'])}")
    payload = {"environment": environment(), "model": "embedded:smollm2-135m-instruct", "dtype": "bfloat16",
               "adapter": a.adapter, "repeats": a.repeats, "results": results}
    out = write_result(NAME, payload, Path(a.results_dir) if a.results_dir else None)
    print(table([(r["shape"], r["path"], r["answers"], r["answer_tokens"], r["seconds"]) for r in results],
                ["shape", "path", "answers", "answer tokens", "seconds"]))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
