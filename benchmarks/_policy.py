"""The benchmark policy: Qwen2.5-3B-Instruct when its weights are at hand, else a randomly initialised model
of exactly its shape (the configuration below) with a small ChatML tokenizer trained on the fly.

Timing and memory depend on the shape, not on the values of the weights, so a random Qwen2.5-3B gives
the same step time, tokens/s and peak memory for the same sequence lengths. One difference: random
weights never emit EOS, so every completion runs to ``max_completion_length`` (the worst case, and the
same length for every variant, which makes throughputs directly comparable).

    from _policy import policy_folder
    ref, kind = policy_folder("Qwen/Qwen2.5-3B-Instruct", "/tmp/bench_policy")   # kind: pretrained | random-init
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

PAPER_MODEL = "Qwen/Qwen2.5-3B-Instruct"
# Qwen2.5-3B-Instruct's config.json (the shape that matters for time and memory).
QWEN25_3B: dict[str, Any] = {
    "hidden_size": 2048,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "intermediate_size": 11008,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "use_sliding_window": False,
}
# A two-layer model of the same family, for the CPU plumbing check (--smoke); its numbers mean nothing.
SMOKE: dict[str, Any] = {**QWEN25_3B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "intermediate_size": 128}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def n_params(shape: dict[str, Any]) -> int:
    """Parameter count of a Qwen2 model of this shape (attention biases included, tied embeddings once)."""
    h, L, f, v = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    attn = h * h + 2 * h * kv + h * h + (h + 2 * kv)  # q, k, v, o weights + q/k/v biases
    mlp = 3 * h * f
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    emb = v * h * (1 if shape["tie_word_embeddings"] else 2)
    return L * per_layer + emb + h


def kv_bytes_per_token(shape: dict[str, Any], bytes_per_value: int = 2) -> int:
    """Bytes of K and V cache one token adds across all layers."""
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * bytes_per_value


def qwen2_config(shape: dict[str, Any]):
    from transformers import Qwen2Config

    cfg = Qwen2Config(**{k: v for k, v in shape.items() if k != "rope_theta"})
    if hasattr(cfg, "rope_parameters") and cfg.rope_parameters is not None:  # transformers 5
        cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": shape["rope_theta"]}
    else:
        cfg.rope_theta = shape["rope_theta"]
    return cfg


def chatml_tokenizer(texts: Iterable[str], vocab_size: int = 8192, pad_to: int | None = None):
    """A byte-level BPE tokenizer trained on ``texts`` with ChatML special tokens and chat template.

    ``pad_to``: fill the vocabulary with ``<unused{i}>`` tokens up to this size, so that every id a model of
    that vocabulary can emit decodes (vLLM's detokenizer does not skip unknown ids as transformers does).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(list(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if pad_to is not None:
        js = json.loads(tk.to_str())
        vocab = js["model"]["vocab"]
        if pad_to < len(vocab):
            raise ValueError(f"pad_to={pad_to} is smaller than the trained vocabulary ({len(vocab)})")
        vocab.update({f"<unused{i}>": i for i in range(len(vocab), pad_to)})
        tk = Tokenizer.from_str(json.dumps(js))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None)
    tok.chat_template = CHATML
    tok.padding_side = "left"
    return tok


def _corpus() -> list[str]:
    """Prompt-like text for the tokenizer: the prompt instructions and the bundled sample questions."""
    from clinical_r1.formats import FORMATS

    texts = [f.instructions for f in FORMATS.values()]
    try:
        from clinical_r1.data import load_sample

        texts += [f"{r['question']}\n" + "\n".join(r["options"]) for r in load_sample()]
    except (FileNotFoundError, ImportError) as e:
        log.warning("no bundled sample questions for the tokenizer corpus (%s); using the prompts only", e)
    return texts * 4


def pretrained_available(name: str) -> bool:
    """True when ``name``'s config and tokenizer load (a local folder, the HF cache, or the hub if online)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(name)
        AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        log.warning("cannot load %s (%s: %s); using a random model of its shape", name, type(e).__name__, e)
        return False
    return True


def random_policy(folder: str | Path, shape: dict[str, Any] = QWEN25_3B, dtype: str = "bfloat16",
                  device: str = "cpu") -> Path:
    """Write a randomly initialised Qwen2 model of ``shape`` plus a ChatML tokenizer into ``folder`` (cached).

    Built on the CPU by default, so that a parent process never holds a CUDA context (it would count in the
    device-level memory of the runs it starts); ``device="cuda"`` is faster where that does not matter.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    stamp = folder / "bench_policy.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"shape": shape, "dtype": dtype}:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = chatml_tokenizer(_corpus(), pad_to=shape["vocab_size"])
    cfg = qwen2_config(shape)
    cfg.eos_token_id = tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.bos_token_id = None
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    stamp.write_text(json.dumps({"shape": shape, "dtype": dtype}))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def policy_folder(name: str, folder: str | Path, random_only: bool = False, smoke: bool = False,
                  device: str = "cpu") -> tuple[str, str]:
    """``(model reference, "pretrained" | "random-init")``: the real weights when loadable, else a random model."""
    if smoke:
        return str(random_policy(folder, SMOKE, dtype="float32")), "random-init (smoke shape)"
    if not random_only and pretrained_available(name):
        return name, "pretrained"
    return str(random_policy(folder, device=device)), "random-init"
