"""Sampling for evaluation: N answers per question, saved once as JSONL so evaluation and judging never regenerate.

    from clinical_r1.generate import generate
    generate(model, tokenizer, medqa, "results/run/medqa.jsonl", prompt_kind="crpo", n=1,
             temperature=0.0, max_new_tokens=1024, batch_size=16, dataset_name="medqa", model_name="crpo-3b")

    python -m clinical_r1 generate --model path/to/model_or_adapter --benchmark medqa4 \\
        --data ../shared/benchmarks/medqa_usmle4_test_sample.jsonl --out results/run/medqa4.jsonl --prompt crpo

The model may be a loaded ``transformers``/``peft`` model (generated with ``transformers``, left padding,
batched ``generate``), a ``vllm.LLM``, an engine from :func:`open_engine` (one engine for several datasets, as
``study.evaluate_methods`` does), or a path to a base model, merged model, CRPO checkpoint or LoRA
adapter folder. A path is generated with vLLM when vLLM is installed and CUDA is available, and otherwise
loaded with :func:`load_for_inference` and generated with ``transformers``. Either way a trained adapter is
rebuilt as the policy its trainer held, cold-start adapter included (``clinical_r1_policy.json``, see
:mod:`clinical_r1.models`): ``models.load_trained`` for ``transformers``, ``models.serving_folders`` for vLLM
(the cold-start adapter merged into a cached base, the trained adapter served through ``LoRARequest``).

Output: one JSON line per (question, sample) — ``id, sample, text, n_tokens, finish_reason`` ("stop" or
"length"), ``dataset, model, prompt_kind`` — and a sidecar ``<file>.meta.json`` with the model, the dataset,
the prompt kind and the decoding settings. The file is resumable: (id, sample) pairs already present are
skipped, each batch is appended and flushed, and a torn last line left by a crash is dropped before
appending. Resuming with other settings than the sidecar's raises :class:`GenerationError`.

Seeds: vLLM gets one ``SamplingParams(n=N, seed=...)`` per question, the seed derived from ``seed`` and the
question id, so samples do not depend on batching or on resuming. ``transformers`` (:func:`decode`, this module's
own decoding loop) gives each answer its own random stream, seeded from ``seed``, the question id and the sample
index: an answer depends neither on the batch it was drawn in nor on resuming, and two policies asked with the
same seed draw with the same numbers (the paired comparison of :mod:`clinical_r1.rleffect`). Greedy decoding
equals transformers' ``generate`` up to rounding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from clinical_r1.errors import ClinicalR1Error
from clinical_r1.locks import exclusive
from clinical_r1.models import cpu_decode_attention
from clinical_r1.prompts import PROMPT_KINDS, build_messages

log = logging.getLogger(__name__)

RECORD_FIELDS = ("id", "sample", "text", "n_tokens", "finish_reason", "dataset", "model", "prompt_kind")
FINISH_REASONS = ("stop", "length")


class GenerationError(ClinicalR1Error, ValueError):
    """A generations file that cannot be used as asked: malformed lines, or a sidecar with other settings."""


@dataclass(frozen=True)
class Decoding:
    """The decoding settings recorded in the sidecar; a resumed file must be continued with the same ones."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass when sampling
    max_new_tokens: int = 1024  # generated tokens per answer, the EOS token included
    n: int = 1  # samples per question
    seed: int = 0  # base seed; per-question / per-batch seeds derive from it


# ---------------------------------------------------------------------------------------------------
# The generations file
# ---------------------------------------------------------------------------------------------------


def meta_path(path: str | os.PathLike) -> Path:
    """The sidecar of a generations file: ``<file>.meta.json``."""
    p = Path(path)
    return p.with_name(p.name + ".meta.json")


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of a generations file, or ``None`` when it has none."""
    m = meta_path(path)
    if not m.exists():
        return None
    try:
        return json.loads(m.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise GenerationError(f"{m}: invalid JSON ({e.msg} at line {e.lineno})") from e


def _parse_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a generations file and the byte length of its intact part.

    A last line without its newline that is not valid JSON is a torn write: it is dropped with a warning.
    Any other malformed line raises :class:`GenerationError` naming the file and line.
    """
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    pos, lineno = (3 if data.startswith(b"\xef\xbb\xbf") else 0), 0  # skip a UTF-8 byte-order mark
    while pos < len(data):
        lineno += 1
        nl = data.find(b"\n", pos)
        end = len(data) if nl == -1 else nl + 1
        raw = data[pos:end]
        if raw.strip():
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if nl == -1:
                    log.warning("%s: line %d is torn (an interrupted write); ignoring its %d bytes",
                                path, lineno, len(raw))
                    return records, pos
                raise GenerationError(f"{path}: line {lineno}: invalid JSON ({e})") from e
            _check_record(rec, path, lineno)
            records.append(rec)
        pos = end
    return records, pos


def _check_record(rec: Any, path: Path, lineno: int) -> None:
    if not isinstance(rec, dict):
        raise GenerationError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in ("id", "sample", "text") if k not in rec]
    if missing:
        raise GenerationError(f"{path}: line {lineno}: missing field(s) {missing}")
    if not isinstance(rec["sample"], int) or isinstance(rec["sample"], bool) or rec["sample"] < 0:
        raise GenerationError(f"{path}: line {lineno}: field 'sample' must be a non-negative integer, "
                              f"got {rec['sample']!r}")
    if not isinstance(rec["text"], str):
        raise GenerationError(f"{path}: line {lineno}: field 'text' must be a string, got {type(rec['text']).__name__}")


def read_generations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a generations file (a torn last line is dropped with a warning).

    Raises :class:`GenerationError` for malformed lines and for a repeated (id, sample) pair.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such generations file")
    records, _ = _parse_lines(p)
    seen: dict[tuple[str, int], int] = {}
    for i, r in enumerate(records):
        key = (str(r["id"]), r["sample"])
        if key in seen:
            raise GenerationError(f"{p}: (id={key[0]!r}, sample={key[1]}) appears twice (records {seen[key] + 1} "
                                  f"and {i + 1})")
        seen[key] = i
    return records


def _repair_tail(path: Path) -> set[tuple[str, int]]:
    """Cut a torn last line off ``path`` and return the (id, sample) pairs it already holds."""
    if not path.exists():
        return set()
    records, good = _parse_lines(path)
    if good < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    elif good and path.read_bytes()[-1:] != b"\n":
        with open(path, "ab") as f:  # a complete last line without its newline: add it before appending
            f.write(b"\n")
    return {(str(r["id"]), r["sample"]) for r in records}


def _write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    from clinical_r1.files import write_json

    write_json(dict(meta), meta_path(path))


def _check_meta(path: Path, meta: Mapping[str, Any]) -> None:
    old = read_meta(path)
    if old is None:
        return
    diffs = {k: (old.get(k), v) for k, v in meta.items() if k != "backend" and old.get(k) != v}
    if diffs:
        detail = "; ".join(f"{k}: file has {a!r}, asked {b!r}" for k, (a, b) in diffs.items())
        raise GenerationError(f"{path}: cannot resume with other settings ({detail}); write to a new file")


# ---------------------------------------------------------------------------------------------------
# Prompts and seeds
# ---------------------------------------------------------------------------------------------------


def render_prompt(tokenizer: Any, item: Mapping[str, Any], kind: str) -> str:
    """The prompt text of one item: ``build_messages(item, kind)`` through the tokenizer's chat template.

    Templates without a system role (they raise on one) get the instructions folded into the user turn.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise GenerationError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    try:
        return tokenizer.apply_chat_template(build_messages(item, kind), tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2 raises TemplateError (via raise_exception) for an unsupported system role
        if "system" not in str(e).lower():
            raise
        return tokenizer.apply_chat_template(build_messages(item, kind, system=False), tokenize=False,
                                             add_generation_prompt=True)


def question_seed(seed: int, qid: str) -> int:
    """A stable 31-bit seed for one question: independent of batching, order and resumption."""
    return zlib.crc32(f"{seed}:{qid}".encode()) & 0x7FFFFFFF


def sample_seed(seed: int, qid: str, sample: int) -> int:
    """A stable 31-bit seed for one sample of one question (``transformers`` backend): each answer has its own random
    stream, so it does not depend on batching, on the other answers in the batch, on resuming, or on the policy
    (two policies given the same seed draw with the same numbers: the paired comparison of the RL effect)."""
    return zlib.crc32(f"{seed}:{qid}:{sample}".encode()) & 0x7FFFFFFF


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------------------------------------
# The transformers decoding loop
# ---------------------------------------------------------------------------------------------------


def pick_tokens(logits: Any, uniforms: Any | None, temperature: float, top_p: float) -> Any:
    """The next token of each row: the argmax when ``uniforms`` is None (greedy), else a draw from
    ``softmax(logits / temperature)`` restricted to the top-``top_p`` nucleus (the smallest set of most likely
    tokens whose mass reaches ``top_p``, as transformers' ``TopPLogitsWarper``), by inverse CDF: row i takes the
    first token whose cumulative probability exceeds ``uniforms[i]`` (one number in [0, 1) per row and step)."""
    import torch

    if uniforms is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # keeps the most likely token always
    cdf = probs.cumsum(-1)
    j = torch.searchsorted(cdf, (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(1), right=True).clamp_(max=cdf.shape[1] - 1)
    return (order.gather(1, j) if order is not None else j).squeeze(1)


PREFILL_ROWS = 8  # prompts read in one forward pass; a larger batch is read in passes of similar lengths


def _prefill(model: Any, input_ids: Any, mask: Any, position: Any, rows: int) -> tuple[Any, Any]:
    """Read left-padded prompts into a KV cache: ``(cache, last-token logits)``, as one forward pass over the batch
    would. More than ``rows`` prompts are read in passes of ``rows``, longest first, each pass only as wide as its
    longest prompt; the passes' caches are left-padded back to the batch's width (padding is masked) and joined in
    the batch's order. A batch mixing short and long prompts (an evaluation of 4 sets: 131 to 506 tokens) would
    otherwise pad every prompt to the longest: 24,288 tokens read for 13,711. Models whose cache layers are not
    plain dynamic ones (sliding windows) are read in one pass."""
    import torch
    from torch.nn.functional import pad
    from transformers.cache_utils import DynamicCache, DynamicLayer

    width = input_ids.shape[1]

    def read(idx: Any, real: int) -> Any:
        return model(input_ids=input_ids[idx, width - real :], attention_mask=mask[idx, width - real :],
                     position_ids=position[idx, width - real :], use_cache=True, logits_to_keep=1)

    everything = torch.arange(input_ids.shape[0], device=input_ids.device)
    if input_ids.shape[0] <= rows:
        out = read(everything, width)
        return out.past_key_values, out.logits[:, -1]
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    layers: list[list[tuple[Any, Any]]] = []
    logits = []
    for idx in order.split(rows):
        real = int(lengths[idx].max())
        out = read(idx, real)
        if any(type(layer) is not DynamicLayer for layer in out.past_key_values.layers):
            out = read(everything, width)
            return out.past_key_values, out.logits[:, -1]
        layers.append([(pad(layer.keys, (0, 0, width - real, 0)), pad(layer.values, (0, 0, width - real, 0)))
                       for layer in out.past_key_values.layers])
        logits.append(out.logits[:, -1])
    back = torch.argsort(order)
    cache = DynamicCache()
    for i in range(len(layers[0])):
        cache.update(torch.cat([p[i][0] for p in layers])[back], torch.cat([p[i][1] for p in layers])[back], i)
    return cache, torch.cat(logits)[back]


def decode(model: Any, input_ids: Any, attention_mask: Any, n: int, max_new_tokens: int, eos_ids: set[int],
           temperature: float = 0.0, top_p: float = 1.0, seeds: Sequence[int] | None = None,
           prefill_rows: int = PREFILL_ROWS) -> list[list[int]]:
    """``n`` answers to each left-padded prompt: the generated token ids of each (prompt-major: prompt 0's n answers,
    then prompt 1's), each ending at its first EOS token (included) or after ``max_new_tokens``.

    Each prompt is read once and its KV cache is copied ``n`` times (the prompt is most of a short answer's
    tokens), in passes of ``prefill_rows`` prompts of similar length (:func:`_prefill`); then one token per step
    for the answers still running: an answer that has ended leaves the batch, so a step costs what the live
    answers cost rather than what the longest one does. Sampling
    (``temperature`` > 0) draws row r's tokens from its own generator seeded with ``seeds[r]`` (:func:`pick_tokens`),
    so an answer does not depend on the other rows of its batch. Greedy decoding equals transformers' ``generate``
    up to rounding (tests/test_generate.py)."""
    import torch

    sample = temperature > 0
    rows = input_ids.shape[0] * n
    if sample and (seeds is None or len(seeds) != rows):
        raise GenerationError(f"sampling {rows} answers needs {rows} seeds, got {0 if seeds is None else len(seeds)}")
    uniforms = None
    if sample:
        uniforms = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(int(s)),
                                           dtype=torch.float64) for s in seeds]).to(input_ids.device)
    mask = attention_mask.long()
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    cache, logits = _prefill(model, input_ids, mask, position, prefill_rows)
    last = position[:, -1]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, mask, last = (t.repeat_interleave(n, dim=0) for t in (logits, mask, last))
    live = torch.arange(rows, device=input_ids.device)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    stops = set(eos_ids)
    for step in range(max_new_tokens):
        nxt = pick_tokens(logits, None if uniforms is None else uniforms[live, step], temperature, top_p)
        keep = []
        for j, (r, t) in enumerate(zip(live.tolist(), nxt.tolist())):
            tokens[r].append(t)
            if t not in stops:
                keep.append(j)
        if not keep or step + 1 == max_new_tokens:
            break
        if len(keep) < len(live):  # ended answers leave the batch
            idx = torch.tensor(keep, device=live.device)
            cache.batch_select_indices(idx)
            live, nxt, mask, last = live[idx], nxt[idx], mask[idx], last[idx]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        last = last + 1
        logits = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=last.unsqueeze(1),
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return tokens


# ---------------------------------------------------------------------------------------------------
# Backends: each turns a batch of prompts into N (text, n_tokens, finish_reason) per prompt
# ---------------------------------------------------------------------------------------------------


def vllm_available() -> bool:
    """True when vLLM is importable and CUDA is available."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TransformersBackend:
    """Batched ``model.generate`` with left padding; one seeded random stream per batch."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, label: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.label = label or _model_label(model)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        if not self.eos_ids:
            raise GenerationError("neither the model's generation_config nor the tokenizer defines an EOS token")

    def run(self, prompts: Sequence[str], ids: Sequence[str], dec: Decoding) -> list[list[tuple[str, int, str]]]:
        import torch

        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        seeds = [sample_seed(dec.seed, q, s) for q in ids for s in range(dec.n)]
        training = self.model.training
        self.model.eval()  # no dropout while answering; the caller's mode is restored after
        try:
            with torch.inference_mode(), cpu_decode_attention(self.model):
                rows = decode(self.model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                              n=dec.n, max_new_tokens=dec.max_new_tokens, eos_ids=self.eos_ids,
                              temperature=dec.temperature, top_p=dec.top_p, seeds=seeds)
        finally:
            self.model.train(training)
        results = [self._decode(row, dec.max_new_tokens) for row in rows]
        return [results[i * dec.n : (i + 1) * dec.n] for i in range(len(prompts))]

    def close(self) -> None:
        """Drop the model (and its GPU memory) before the next one is loaded."""
        self.model = None
        _free_cuda()

    def _decode(self, row: list[int], max_new_tokens: int) -> tuple[str, int, str]:
        stop = next((j for j, t in enumerate(row) if t in self.eos_ids), None)
        if stop is not None:
            return self.tokenizer.decode(row[:stop], skip_special_tokens=True), stop + 1, "stop"
        reason = "length" if len(row) >= max_new_tokens else "stop"
        return self.tokenizer.decode(row, skip_special_tokens=True), len(row), reason


class VLLMBackend:
    """vLLM offline generation: one ``SamplingParams(n=N, seed=question_seed)`` per question."""

    name = "vllm"

    def __init__(self, llm: Any, lora_path: str | None = None, label: str | None = None):
        self.llm = llm
        self.label = label or _model_label(llm)
        self.lora_request = None
        if lora_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(lora_path))

    @classmethod
    def from_path(cls, path: str | os.PathLike, seed: int = 0, **llm_kwargs: Any) -> "VLLMBackend":
        """A vLLM engine for a model folder; a trained adapter folder is served as a LoRA on its base (with any
        merged cold-start adapter merged in, see ``models.serving_folders``), never merged into it: an adapter
        trained on a 4-bit base (the T4 training configs) runs as a LoRA on the full-precision base.

        ``dtype`` defaults to bf16 on a GPU with bf16 and fp16 otherwise (``models.bf16_supported``; vLLM refuses
        a bf16 checkpoint's own dtype on a T4); ``max_lora_rank`` is the adapter's rank rounded up to a value
        vLLM accepts (``models.vllm_lora_rank``).
        """
        from vllm import LLM

        from clinical_r1.models import check_adapter, half_dtype_name, serving_folders, vllm_lora_rank

        model_dir, lora = serving_folders(path)
        llm_kwargs.setdefault("dtype", half_dtype_name())
        if lora is None:
            return cls(LLM(model=model_dir, seed=seed, **llm_kwargs), label=str(path))
        rank = vllm_lora_rank(int(check_adapter(lora).get("r", 16)))
        return cls(LLM(model=model_dir, seed=seed, enable_lora=True, max_lora_rank=rank, **llm_kwargs), lora_path=lora,
                   label=str(path))

    def close(self) -> None:
        """Shut the engine down and hand its GPU memory back, so the next method's engine fits."""
        engine = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if hasattr(engine, "shutdown"):
            engine.shutdown()  # vLLM V1 runs the engine core in a child process
        self.llm = None
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        except ImportError:
            pass
        else:
            destroy_model_parallel()
            destroy_distributed_environment()
        _free_cuda()

    def run(self, prompts: Sequence[str], ids: Sequence[str], dec: Decoding) -> list[list[tuple[str, int, str]]]:
        from vllm import SamplingParams

        params = [SamplingParams(n=dec.n, temperature=dec.temperature, top_p=dec.top_p if dec.temperature > 0 else 1.0,
                                 max_tokens=dec.max_new_tokens, seed=question_seed(dec.seed, q)) for q in ids]
        outs = self.llm.generate(list(prompts), params, lora_request=self.lora_request, use_tqdm=False)
        return [[(c.text, len(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                 for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


def _backend(model: Any, tokenizer: Any, backend: str, seed: int) -> tuple[Any, Any]:
    """Pick the backend for ``model``; returns (backend, tokenizer)."""
    if backend not in ("auto", "vllm", "transformers"):
        raise GenerationError(f"unknown backend {backend!r}; choose auto, vllm or transformers")
    if isinstance(model, (VLLMBackend, TransformersBackend)):  # an engine from open_engine
        if backend not in ("auto", model.name):
            raise GenerationError(f"backend={backend!r} but the engine given is {model.name!r}")
        return model, tokenizer or _engine_tokenizer(model)
    if type(model).__module__.startswith("vllm"):
        return VLLMBackend(model), tokenizer or model.get_tokenizer()
    if isinstance(model, (str, os.PathLike)):
        engine = open_engine(model, backend=backend, seed=seed)
        return engine, tokenizer or _engine_tokenizer(engine)
    if backend == "vllm":
        raise GenerationError("backend='vllm' needs a model path or a vllm.LLM, not an in-memory model")
    if tokenizer is None:
        raise GenerationError("an in-memory model needs its tokenizer")
    return TransformersBackend(model, tokenizer), tokenizer


def open_engine(model: str | os.PathLike, backend: str = "auto", seed: int = 0, dtype: str | None = None,
                **llm_kwargs: Any) -> Any:
    """A generation engine for a model path, to pass to :func:`generate` as ``model`` for several datasets.

    vLLM (:class:`VLLMBackend`, a trained adapter as ``LoRARequest``) when ``backend`` is ``vllm``, or ``auto``
    with vLLM installed and CUDA available; else :class:`TransformersBackend` on :func:`load_for_inference`
    (``dtype``: see there). Call ``engine.close()`` before opening the next one.
    """
    if backend not in ("auto", "vllm", "transformers"):
        raise GenerationError(f"unknown backend {backend!r}; choose auto, vllm or transformers")
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        log.info("generation engine for %s: vLLM", model)
        return VLLMBackend.from_path(_resolve_path(model), seed=seed, **llm_kwargs)
    if backend == "auto":  # on the CUDA 12 stack (no vLLM) and on CPU
        log.info("generation engine for %s: transformers (vLLM not available: not installed, as on the CUDA 12 "
                 "stack, or no CUDA)", model)
    loaded, tok = load_for_inference(model, dtype=dtype) if dtype else load_for_inference(model)
    return TransformersBackend(loaded, tok, label=str(model))


def _engine_tokenizer(engine: Any) -> Any:
    return engine.llm.get_tokenizer() if isinstance(engine, VLLMBackend) else engine.tokenizer


def _free_cuda() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _resolve_path(model: str | os.PathLike) -> str:
    """A local folder for ``embedded:*`` names and paths (an adapter folder stays as it is), else the hub id."""
    from clinical_r1.models import resolve_model

    p = Path(model)
    return str(p) if (p / "adapter_config.json").is_file() else resolve_model(str(model))


def load_for_inference(model: str | os.PathLike, dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode through :mod:`clinical_r1.models`: a base or merged model folder (or an
    ``embedded:*`` name / hub id) as it is; a trained adapter or ``checkpoint-N`` folder as the policy its
    trainer held (``models.load_trained``: base, merged cold-start adapter, this adapter).

    ``dtype`` (``models.DTYPES``): None loads a trained adapter in its training dtype and a plain model in
    ``auto`` (fp32 on CPU); ``bfloat16`` halves CPU decoding time on AVX512-BF16 machines."""
    from clinical_r1.models import load_policy, load_trained

    if (Path(model) / "adapter_config.json").is_file():
        return load_trained(model, dtype=dtype)
    loaded, tok = load_policy({"name": str(model), "dtype": dtype or "auto"}, lora=None)
    return loaded.eval(), tok


def _model_label(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if isinstance(getattr(model, "label", None), str):
        return model.label
    for obj in (model, getattr(model, "config", None)):
        name = getattr(obj, "name_or_path", None) or getattr(obj, "_name_or_path", None)
        if name:
            return str(name)
    return type(model).__name__


# ---------------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------------


def generate(model: Any, tokenizer: Any, dataset: Iterable[Mapping[str, Any]], out_path: str | os.PathLike,
             prompt_kind: str = "crpo", n: int = 1, temperature: float = 0.0, max_new_tokens: int = 1024,
             batch_size: int = 8, seed: int = 0, dataset_name: str | None = None, model_name: str | None = None,
             top_p: float = 1.0, backend: str = "auto", progress: bool = True) -> Path:
    """Generate ``n`` answers per question of ``dataset`` into the JSONL ``out_path``; returns the path.

    ``batch_size`` counts questions per batch (each with its ``n`` samples). Pairs (id, sample) already in
    the file are skipped, so a rerun after a crash continues where it stopped and a finished file is left
    unchanged. ``n > 1`` needs ``temperature > 0`` (greedy samples would be identical copies).
    """
    return generate_sets(model, tokenizer, [(dataset, out_path, dataset_name)], prompt_kind=prompt_kind, n=n,
                         temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                         model_name=model_name, top_p=top_p, backend=backend, progress=progress)[0]


def generate_sets(model: Any, tokenizer: Any,
                  jobs: Sequence[tuple[Iterable[Mapping[str, Any]], str | os.PathLike, str | None]],
                  prompt_kind: str = "crpo", n: int = 1, temperature: float = 0.0, max_new_tokens: int = 1024,
                  batch_size: int = 8, seed: int = 0, model_name: str | None = None, top_p: float = 1.0,
                  backend: str = "auto", progress: bool = True) -> list[Path]:
    """:func:`generate` for several datasets with one model: ``jobs`` are ``(dataset, out_path, dataset_name)``,
    each written to its own file with its own sidecar, and resumable as that file alone; the batches run across
    them, so 4 sets of 12 questions decode as one batch of 48 (``batch_size`` 48). On CPU a decode step costs
    about the same for 12 answers as for 24, so shared batches make evaluation faster (``benchmarks/decode_cpu.py``).
    Returns the paths in job order."""
    if prompt_kind not in PROMPT_KINDS:
        raise GenerationError(f"unknown prompt kind {prompt_kind!r}; choose one of {list(PROMPT_KINDS)}")
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise GenerationError(f"n={n}, batch_size={batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
    if n > 1 and temperature <= 0:
        raise GenerationError(f"n={n} samples with temperature={temperature} would be identical; set temperature > 0")
    dec = Decoding(temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_new_tokens), n=int(n),
                   seed=int(seed))
    model_label = model_name or _model_label(model)
    outs = [Path(out) for _, out, _ in jobs]
    same = [str(o) for o, c in Counter(o.resolve() for o in outs).items() if c > 1]
    if same:
        raise GenerationError(f"two datasets write to one file: {same}")
    with contextlib.ExitStack() as stack:
        plans = []
        for dataset, out, name in jobs:
            out = Path(out)
            items = list(dataset)
            ids = [str(r["id"]) for r in items]
            if len(set(ids)) != len(ids):
                dup = sorted(i for i, c in Counter(ids).items() if c > 1)[:5]
                raise GenerationError(f"{out}: dataset has duplicate ids, e.g. {dup}")
            label = name or getattr(getattr(dataset, "info", None), "dataset_name", None)
            meta = {"model": model_label, "dataset": label, "prompt_kind": prompt_kind, **asdict(dec)}
            # one writer per output: a second run fails at once, naming the pid
            stack.enter_context(exclusive(out, "generations file"))
            _check_meta(out, meta)
            done = _repair_tail(out)
            todo = [(r, [s for s in range(n) if (str(r["id"]), s) not in done]) for r in items]
            todo = [(r, missing) for r, missing in todo if missing]
            if not todo:
                log.info("%s: all %d questions x %d samples already generated", out, len(items), n)
                if read_meta(out) is None:
                    _write_meta(out, {**meta, "backend": None})
            plans.append((out, meta, label, todo))
        pending = [(i, r, missing) for i, (_, _, _, todo) in enumerate(plans) for r, missing in todo]
        if not pending:
            return outs
        engine, tokenizer = _backend(model, tokenizer, backend, dec.seed)
        for out, meta, _, todo in plans:
            if todo:
                out.parent.mkdir(parents=True, exist_ok=True)
                _write_meta(out, {**meta, "backend": engine.name})
                log.info("%s: generating %d answers (%d questions) with %s", out, sum(len(m) for _, m in todo),
                         len(todo), engine.name)
        try:
            labels = [{"dataset": label, "model": model_label, "prompt_kind": prompt_kind} for _, _, label, _ in plans]
            _run(engine, tokenizer, pending, outs, dec, labels, batch_size, progress)
        finally:
            if isinstance(model, (str, os.PathLike)):  # an engine opened here for a path is closed here
                engine.close()
    return outs


def _run(engine: Any, tokenizer: Any, pending: list[tuple[int, Mapping[str, Any], list[int]]], outs: list[Path],
         dec: Decoding, labels: list[Mapping[str, Any]], batch_size: int, progress: bool) -> None:
    """Answer ``pending`` (job index, item, missing samples) in batches of ``batch_size`` questions; each batch's
    answers are appended to their jobs' files, flushed and synced before the next batch."""
    from tqdm.auto import tqdm

    total = sum(len(m) for _, _, m in pending)
    name = outs[pending[0][0]].name if len({i for i, _, _ in pending}) == 1 else f"{len(outs)} files"
    with contextlib.ExitStack() as stack, tqdm(total=total, desc=name, unit="answer", disable=not progress) as bar:
        files: dict[int, Any] = {}
        for batch in _batches(pending, batch_size):
            prompts = [render_prompt(tokenizer, r, labels[i]["prompt_kind"]) for i, r, _ in batch]
            qids = [str(r["id"]) for _, r, _ in batch]
            results = engine.run(prompts, qids, dec)
            lines: dict[int, list[str]] = {}
            for (i, r, missing), samples in zip(batch, results):
                for s in missing:
                    text, n_tokens, reason = samples[s]
                    lines.setdefault(i, []).append(json.dumps(
                        {"id": str(r["id"]), "sample": s, "text": text, "n_tokens": n_tokens, "finish_reason": reason,
                         **labels[i]}, ensure_ascii=False))
            for i, rows in lines.items():
                if i not in files:
                    files[i] = stack.enter_context(open(outs[i], "a", encoding="utf-8"))
                f = files[i]
                f.write("\n".join(rows) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(rows))
