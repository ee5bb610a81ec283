"""Generation: real models on CPU, the JSONL + sidecar format, resumption, torn lines, and evaluation of
what was generated. The benchmark test runs the embedded SmolLM2 when the project's ``embedded_model_dir``
fixture exists (else a tiny random Llama); the mechanics tests always use the tiny model, since a 135M
model's prefill costs seconds per prompt on a shared 2-core machine.

    .venv/bin/pytest tests/test_generate.py -x -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinical_r1.generate import (GenerationError, TransformersBackend, decode, generate, generate_sets, meta_path,
                                  pick_tokens, question_seed, read_generations, read_meta, render_prompt,
                                  sample_seed, vllm_available)

ROOT = Path(__file__).resolve().parents[1]
MEDQA_SAMPLE = ROOT.parent / "shared" / "benchmarks" / "medqa_usmle4_test_sample.jsonl"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MAX_NEW = 12  # generated tokens per answer in these tests


def _tiny_model_dir(out: Path) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer trained here and a ChatML template (offline)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["<dx>TSH 12 mU/L</dx><conclusion>\\boxed{A}</conclusion> A. B. C. D. patient"] * 10,
                            trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  chat_template=CHATML)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random model folder: the mechanics tests need a real model, not a good one."""
    return _tiny_model_dir(tmp_path_factory.mktemp("tiny_llama"))


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def policy(model_dir):
    return _load(model_dir)


@pytest.fixture(scope="module")
def benchmark_policy(request, model_dir):
    """The embedded SmolLM2 (the project's ``embedded_model_dir`` fixture) when it exists, else the tiny model."""
    try:
        return _load(Path(request.getfixturevalue("embedded_model_dir")))
    except pytest.FixtureLookupError:
        return _load(model_dir)


def _items(k: int = 3) -> list[dict]:
    stems = ["A 45-year-old woman has fatigue and TSH 12 mU/L. Which diagnosis is most likely?",
             "A 30-year-old man has chest pain radiating to the back. Which study is next?",
             "A 6-year-old boy has periorbital edema after pharyngitis. Which finding is expected?",
             "A 70-year-old man has a tremor at rest. Which drug is indicated?"]
    return [{"id": f"q{i}", "question": stems[i], "options": ["alpha", "beta", "gamma", "delta"],
             "answer": "ABCD"[i], "source": "inline", "subgroup": "", "explanation": "", "meta": "{}"}
            for i in range(k)]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_generation_then_evaluation(benchmark_policy, tmp_path):
    if not MEDQA_SAMPLE.exists():
        pytest.skip(f"{MEDQA_SAMPLE} not present")
    from clinical_r1.data import load_benchmark
    from clinical_r1.evaluate import evaluate

    ds = load_benchmark("medqa4", path=MEDQA_SAMPLE, limit=3)
    model, tok = benchmark_policy
    out = tmp_path / "medqa.jsonl"
    generate(model, tok, ds, out, prompt_kind="cot", max_new_tokens=MAX_NEW, batch_size=2, dataset_name="medqa4",
             model_name="test-model", progress=False)
    rows = _lines(out)
    assert [(r["id"], r["sample"]) for r in rows] == [(i, 0) for i in ds["id"]]
    for r in rows:
        assert set(r) == {"id", "sample", "text", "n_tokens", "finish_reason", "dataset", "model", "prompt_kind"}
        assert (r["dataset"], r["model"], r["prompt_kind"]) == ("medqa4", "test-model", "cot")
        assert 1 <= r["n_tokens"] <= MAX_NEW and r["finish_reason"] in ("stop", "length")
        assert r["finish_reason"] == "stop" or r["n_tokens"] == MAX_NEW
    meta = read_meta(out)
    assert meta == {"model": "test-model", "dataset": "medqa4", "prompt_kind": "cot", "temperature": 0.0,
                    "top_p": 1.0, "max_new_tokens": MAX_NEW, "n": 1, "seed": 0, "backend": "transformers"}

    res = evaluate(out, ds, out_path=tmp_path / "medqa.metrics.json", n_boot=200, dataset_name="medqa4")
    o = res["overall"]
    assert o["n_questions"] == 3 and o["n_answers"] == 3 and o["n_missing"] == 0
    assert 0.0 <= o["accuracy"] <= o["valid_ratio"] <= 1.0
    assert res["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": MAX_NEW, "n": 1, "seed": 0}
    on_disk = json.loads((tmp_path / "medqa.metrics.json").read_text())
    assert on_disk["model"] == "test-model" and on_disk["dataset"] == "medqa4" and on_disk["provenance"]["commit"]

    before = out.read_bytes()  # a rerun of a finished file generates nothing
    generate(model, tok, ds, out, prompt_kind="cot", max_new_tokens=MAX_NEW, batch_size=2, dataset_name="medqa4",
             model_name="test-model", progress=False)
    assert out.read_bytes() == before


@pytest.mark.slow
def test_resume_after_crash_regenerates_only_missing(policy, tmp_path):
    model, tok = policy
    out = tmp_path / "g.jsonl"
    kw = dict(prompt_kind="cot", max_new_tokens=MAX_NEW, batch_size=2, model_name="m", progress=False)
    generate(model, tok, _items(3), out, **kw)
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # a crash mid-write: the first record survives, the second is torn, the third never written
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    assert [r["id"] for r in read_generations(out)] == ["q0"]  # the torn tail is tolerated
    generate(model, tok, _items(3), out, **kw)
    rows = _lines(out)
    assert sorted((r["id"], r["sample"]) for r in rows) == [("q0", 0), ("q1", 0), ("q2", 0)]
    assert rows[0]["text"] == json.loads(lines[0])["text"]  # kept, not regenerated
    before = out.read_bytes()
    generate(model, tok, _items(3), out, **kw)  # finished: nothing new
    assert out.read_bytes() == before


@pytest.mark.slow
def test_several_sets_share_batches_and_each_keeps_its_own_file(policy, tmp_path):
    """generate_sets: two datasets (with the same ids) in batches drawn across both; each file holds its own set,
    labelled, with its own sidecar, the same greedy answers as generated alone, and resumes alone."""
    model, tok = policy
    kw = dict(prompt_kind="cot", max_new_tokens=MAX_NEW, model_name="m", progress=False)
    a, b = _items(3), [{**r, "question": r["question"] + " Explain."} for r in _items(2)]
    fa, fb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert generate_sets(model, tok, [(a, fa, "set_a"), (b, fb, "set_b")], batch_size=4, **kw) == [fa, fb]
    rows = {f: _lines(f) for f in (fa, fb)}
    assert [r["id"] for r in rows[fa]] == ["q0", "q1", "q2"] and [r["id"] for r in rows[fb]] == ["q0", "q1"]
    assert {r["dataset"] for r in rows[fa]} == {"set_a"} and read_meta(fb)["dataset"] == "set_b"
    alone = tmp_path / "alone.jsonl"
    generate(model, tok, b, alone, batch_size=2, dataset_name="set_b", **kw)
    assert [r["text"] for r in _lines(alone)] == [r["text"] for r in rows[fb]]
    before = fa.read_bytes()
    fb.unlink()
    generate_sets(model, tok, [(a, fa, "set_a"), (b, fb, "set_b")], batch_size=4, **kw)
    assert fa.read_bytes() == before and [r["id"] for r in _lines(fb)] == ["q0", "q1"]
    with pytest.raises(GenerationError, match="two datasets write to one file"):
        generate_sets(model, tok, [(a, fa, "x"), (b, fa, "y")], **kw)


@pytest.mark.slow
def test_sampling_n_per_question_is_seeded(policy, tmp_path):
    model, tok = policy
    kw = dict(prompt_kind="grpo", n=2, temperature=1.0, top_p=0.95, max_new_tokens=8, batch_size=2, seed=7,
              model_name="m", progress=False)
    a = generate(model, tok, _items(2), tmp_path / "a.jsonl", **kw)
    b = generate(model, tok, _items(2), tmp_path / "b.jsonl", **kw)
    ra, rb = _lines(a), _lines(b)
    assert sorted((r["id"], r["sample"]) for r in ra) == [("q0", 0), ("q0", 1), ("q1", 0), ("q1", 1)]
    assert [r["text"] for r in ra] == [r["text"] for r in rb]
    assert read_meta(a)["n"] == 2 and read_meta(a)["temperature"] == 1.0 and read_meta(a)["seed"] == 7
    assert question_seed(7, "q0") == question_seed(7, "q0") != question_seed(8, "q0")


@pytest.mark.slow
def test_model_given_as_a_folder(model_dir, tmp_path):
    out = generate(str(model_dir), None, _items(2), tmp_path / "p.jsonl", prompt_kind="direct",
                   max_new_tokens=4, batch_size=2, backend="transformers", progress=False)
    rows = _lines(out)
    assert len(rows) == 2 and all(r["model"] == str(model_dir) for r in rows)


@pytest.mark.slow
def test_bad_settings_and_resume_mismatch(policy, tmp_path):
    model, tok = policy
    with pytest.raises(ValueError, match="identical"):
        generate(model, tok, _items(1), tmp_path / "x.jsonl", n=3, temperature=0.0, progress=False)
    with pytest.raises(ValueError, match="unknown prompt kind"):
        generate(model, tok, _items(1), tmp_path / "x.jsonl", prompt_kind="socratic", progress=False)
    out = tmp_path / "g.jsonl"
    generate(model, tok, _items(1), out, max_new_tokens=4, model_name="m", progress=False)
    with pytest.raises(GenerationError, match="max_new_tokens: file has 4, asked 8"):
        generate(model, tok, _items(2), out, max_new_tokens=8, model_name="m", progress=False)
    with pytest.raises(GenerationError, match="prompt_kind"):
        generate(model, tok, _items(2), out, max_new_tokens=4, model_name="m", prompt_kind="cot", progress=False)


def test_torn_line_in_the_middle_is_an_error(tmp_path):
    out = tmp_path / "g.jsonl"
    good = json.dumps({"id": "q0", "sample": 0, "text": "x"})
    out.write_text(good + "\n" + good[:10] + "\n" + good.replace("q0", "q1") + "\n")
    with pytest.raises(GenerationError, match=r"g.jsonl: line 2: invalid JSON"):
        read_generations(out)
    out.write_text(good + "\n" + good + "\n")
    with pytest.raises(GenerationError, match="appears twice"):
        read_generations(out)
    out.write_text(json.dumps({"id": "q0", "sample": -1, "text": "x"}) + "\n")
    with pytest.raises(GenerationError, match="line 1: field 'sample'"):
        read_generations(out)


@pytest.mark.slow
def test_decode_stop_length_and_prompt(policy):
    model, tok = policy
    backend = TransformersBackend(model, tok)
    eos = min(backend.eos_ids)
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    text, n, reason = backend._decode(ids + [eos, eos, eos], max_new_tokens=len(ids) + 3)
    assert (text, n, reason) == (tok.decode(ids), len(ids) + 1, "stop")
    assert backend._decode(ids, max_new_tokens=len(ids))[1:] == (len(ids), "length")
    prompt = render_prompt(tok, _items(1)[0], "crpo")
    assert "<dx>" in prompt and "A. alpha" in prompt and prompt.rstrip().endswith("assistant")
    assert meta_path("r/x.jsonl") == Path("r/x.jsonl.meta.json")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="needs vLLM and a CUDA GPU")
def test_vllm_backend(model_dir, tmp_path):  # pragma: no cover - GPU only
    out = generate(str(model_dir), None, _items(2), tmp_path / "v.jsonl", n=2, temperature=0.7,
                   max_new_tokens=MAX_NEW, backend="vllm", progress=False)
    rows = _lines(out)
    assert len(rows) == 4 and read_meta(out)["backend"] == "vllm"


@pytest.mark.slow
def test_n_samples_read_each_prompt_once_and_answer_as_if_read_n_times(benchmark_policy):
    """The shared-prefix path (one prefill per prompt, its KV cache copied n times) must not change what the model
    answers: greedy decoding through it equals greedy decoding of the prompt on its own, for prompts of different
    lengths in one left-padded batch (so the cache's positions and mask are exercised)."""
    from clinical_r1.generate import Decoding

    model, tok = benchmark_policy
    backend = TransformersBackend(model, tok)
    items = _items(3)
    prompts = [render_prompt(tok, it, "crpo") for it in items]
    prompts[1] += "Let me think about this carefully, considering every option in turn."  # a longer prompt
    ids = [it["id"] for it in items]
    shared = backend.run(prompts, ids, Decoding(temperature=0.0, top_p=1.0, max_new_tokens=24, n=2, seed=0))
    alone = [backend.run([p], [i], Decoding(temperature=0.0, top_p=1.0, max_new_tokens=24, n=1, seed=0))[0][0]
             for p, i in zip(prompts, ids)]
    for got, want in zip(shared, alone):
        assert [g[0] for g in got] == [want[0], want[0]]


def _left_padded(tok, items, kinds):
    prompts = [render_prompt(tok, it, k) for it, k in zip(items, kinds)]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        return tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side


@pytest.mark.slow
def test_greedy_decoding_equals_transformers_generate_while_answers_leave_the_batch(benchmark_policy):
    """The decoding loop against ``model.generate`` (the embedded model: the tiny one writes one token forever):
    a left-padded batch of prompts of different lengths, with an
    end token that some answers reach early (they leave the batch, so the cache is cut down mid-answer), others
    later, others never; n = 2 (the prompt's cache copied) must give each answer twice, and reading the prompts in
    passes of 2 (similar lengths together, the caches padded back and joined) must not change an answer."""
    import torch

    model, tok = benchmark_policy
    enc = _left_padded(tok, _items(4), ["crpo", "direct", "cot", "grpo"])
    with torch.inference_mode():
        free = decode(model, enc["input_ids"], enc["attention_mask"], n=1, max_new_tokens=MAX_NEW, eos_ids={-1})
    # the end token: one that some answers write early and at least one never writes
    stop = next(t for t in free[0] if any(t not in row for row in free))
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=stop,
                             pad_token_id=stop, temperature=None, top_p=None, top_k=None)
        got = decode(model, enc["input_ids"], enc["attention_mask"], n=2, max_new_tokens=MAX_NEW, eos_ids={stop})
        # the prompts read in passes of 2 of similar length, their caches padded back to the batch's width
        passes = decode(model, enc["input_ids"], enc["attention_mask"], n=2, max_new_tokens=MAX_NEW, eos_ids={stop},
                        prefill_rows=2)
    assert passes == got
    want = []
    for row in ref[:, enc["input_ids"].shape[1]:].tolist():
        end = row.index(stop) + 1 if stop in row else len(row)
        want += [row[:end]] * 2
    assert got == want
    assert {len(r) for r in got} != {MAX_NEW}  # some answers did end early


def test_sampling_draws_from_the_tempered_nucleus():
    """``pick_tokens``: token frequencies over many draws match softmax(logits / T) within the nucleus, renormalised,
    and a token outside the nucleus is never drawn; greedy is the argmax."""
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    draws = 40_000
    u = torch.rand(draws, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = logits.expand(draws, -1)
    for temp, top_p in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.8)):
        p = torch.softmax(logits[0] / temp, -1)
        if top_p < 1.0:
            keep = (p.cumsum(0) - p) < top_p
            p = torch.where(keep, p, torch.zeros_like(p))
            p = p / p.sum()
        freq = torch.bincount(pick_tokens(rows, u, temp, top_p), minlength=6).double() / draws
        assert torch.allclose(freq, p.double(), atol=0.01), (temp, top_p, freq, p)
        assert (freq[p == 0] == 0).all()
    assert pick_tokens(logits, None, 1.0, 1.0).tolist() == [0]


def test_a_sampled_answer_does_not_depend_on_its_batch(policy):
    """Each answer has its own random stream (``sample_seed``): drawn alone or beside other prompts (other lengths,
    so other padding), an answer is the same, and another seed gives another answer."""
    import torch

    model, tok = policy
    items = _items(3)
    seeds = [sample_seed(0, it["id"], s) for it in items for s in range(2)]
    kw = dict(n=2, max_new_tokens=MAX_NEW, eos_ids={tok.eos_token_id}, temperature=1.0, top_p=1.0)
    with torch.inference_mode():
        enc = _left_padded(tok, items, ["crpo", "direct", "cot"])
        together = decode(model, enc["input_ids"], enc["attention_mask"], seeds=seeds, **kw)
        one = _left_padded(tok, items[1:2], ["direct"])
        alone = decode(model, one["input_ids"], one["attention_mask"], seeds=seeds[2:4], **kw)
        other = decode(model, one["input_ids"], one["attention_mask"], seeds=[s + 1 for s in seeds[2:4]], **kw)
    assert together[2:4] == alone
    assert other != alone
    assert together[0] != together[1]  # two samples of one question differ
    with pytest.raises(GenerationError, match="needs 6 seeds, got 2"):
        decode(model, enc["input_ids"], enc["attention_mask"], seeds=seeds[:2], **kw)
