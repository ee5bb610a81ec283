"""One chat client for every model-backed feature: the distillation teacher and the LLM judge.

    from clinical_r1.api import ChatConfig, ChatRequest, make_client
    cfg = ChatConfig(model="deepseek-reasoner", base_url="https://api.deepseek.com",
                     api_key_env="DEEPSEEK_API_KEY", price_in_per_1m=0.55, price_out_per_1m=2.19)
    client = make_client(cfg, cache_path="results/cache/teacher.jsonl")
    results = client.complete([ChatRequest("medqa-17", messages, purpose="distill/cot-v1")])
    client.summary()      # requests sent, retries, cache hits, tokens, cost

Command line (one request, prints the answer and the token summary as JSON):
    python -m clinical_r1 chat --model deepseek-chat --base-url https://api.deepseek.com \
        --key-env DEEPSEEK_API_KEY "Which electrolyte disorder causes peaked T waves?"

Why it is built this way:
- Backends: any OpenAI-compatible endpoint (DeepSeek, OpenAI, vLLM, Ollama) through the ``openai``
  client, or a local transformers model answering the same chat requests with greedy decoding. The local
  model also reads next-token probabilities for the constrained judge (``LocalBackend.next_token_probs``),
  running prompt prefixes that many texts share (a judge's system prompt, a case) only once.
- The ``openai`` client runs with ``max_retries=0``; this module owns the retry loop (exponential backoff
  with jitter, ``Retry-After`` honoured) on 429, 5xx, timeouts, dropped connections and malformed JSON
  bodies, so every retry is counted and testable.
- A resumable JSONL cache keyed by (model, purpose/prompt version, item id, prompt hash): each answer is
  appended, flushed and fsynced the moment it arrives, so a crash loses nothing and a rerun never pays
  twice. A corrupt line (a crash mid-write) is skipped with a warning.
- The API key is read from the environment variable named in the config, checked before any request,
  and never logged, cached or put in an exception message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from tqdm.auto import tqdm

from clinical_r1.errors import ClinicalR1Error, UsageError
from clinical_r1.files import sha256_json
from clinical_r1.redact import redact, register_secret

log = logging.getLogger(__name__)

CACHE_FIELDS = ("model", "purpose", "item_id", "prompt_hash", "content")
JUDGE_MODES = ("generate", "constrained")  # how a judge answers; see clinical_r1.judge


class MissingAPIKeyError(ClinicalR1Error, RuntimeError):
    """The environment variable that should hold the API key is unset or empty."""


class FatalAPIError(ClinicalR1Error, RuntimeError):
    """An error no retry can fix (bad key, no permission, unknown model): the run stops."""


class TransientError(ClinicalR1Error):
    """A failure worth retrying: 429, 5xx, timeout, dropped connection, malformed body."""

    def __init__(self, kind: str, message: str = "", retry_after: float | None = None):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind
        self.retry_after = retry_after


class PermanentError(ClinicalR1Error):
    """A failure of one request that a retry would repeat (HTTP 400, 422): the item fails, the run goes on."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


# -------------------------------------------------------------------------------------------------
# Configuration
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatConfig:
    """How to reach a chat model and how hard to try. Build from YAML with :meth:`from_dict`."""

    model: str  # model name sent to the endpoint; for the local backend, the name used in cache keys
    backend: str = "openai"  # "openai" (any OpenAI-compatible endpoint) or "local" (transformers)
    base_url: str | None = None  # e.g. https://api.deepseek.com, http://localhost:8000/v1 (vLLM)
    api_key_env: str = "OPENAI_API_KEY"  # NAME of the environment variable holding the key
    temperature: float | None = 0.0  # None = do not send (deepseek-reasoner ignores it anyway)
    max_tokens: int | None = None  # completion cap; None = the endpoint's default
    timeout_s: float = 300.0  # per request; reasoner answers can take minutes
    max_retries: int = 6  # retries after the first attempt, per request
    backoff_base_s: float = 1.0  # first retry waits about this long, doubling each time
    backoff_max_s: float = 60.0  # cap on one wait (Retry-After included)
    concurrency: int = 8  # requests in flight at once (the local backend always uses 1)
    price_in_per_1m: float | None = None  # USD per 1M prompt tokens, for the cost summary
    price_out_per_1m: float | None = None  # USD per 1M completion tokens (reasoning tokens included)
    extra_body: Mapping[str, Any] | None = None  # extra JSON fields for the endpoint
    model_path: str | None = None  # local backend: a transformers model folder
    gguf_file: str | None = None  # local backend: a GGUF file inside model_path
    max_new_tokens: int = 1024  # local backend: generation cap when max_tokens is None
    judge_mode: str | None = None  # judge only: "generate" (free text, parsed) or "constrained" (next-token
    # probabilities over the allowed values; local backend only); None = constrained if local, else generate

    def __post_init__(self) -> None:
        if self.backend not in ("openai", "local"):
            raise UsageError(f"ChatConfig.backend must be 'openai' or 'local', got {self.backend!r}")
        if not self.model:
            raise UsageError("ChatConfig.model must be a non-empty model name")
        if self.judge_mode not in (None, *JUDGE_MODES):
            raise UsageError(f"ChatConfig.judge_mode must be one of {JUDGE_MODES} or None, got {self.judge_mode!r}")
        if self.judge_mode == "constrained" and self.backend != "local":
            raise UsageError("judge_mode 'constrained' reads next-token probabilities from a local model: "
                             "use backend: local, or judge_mode: generate for an API judge")
        if self.concurrency < 1 or self.max_retries < 0:
            raise UsageError(f"ChatConfig needs concurrency >= 1 and max_retries >= 0, got "
                             f"{self.concurrency} and {self.max_retries}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ChatConfig":
        """From a plain mapping (a YAML section); unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown chat config key(s) {unknown}; known keys: {sorted(names)}")
        return cls(**dict(d))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.price_in_per_1m is None and self.price_out_per_1m is None:
            return None
        price_in, price_out = self.price_in_per_1m or 0.0, self.price_out_per_1m or 0.0
        return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def read_api_key(env_name: str) -> str:
    """The key from environment variable ``env_name``; a clear error naming the variable if unset."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise MissingAPIKeyError(
            f"environment variable {env_name} is not set (or empty); export it with your API key, "
            f"e.g. `export {env_name}=...`, or set api_key_env in the config to the variable you use"
        )
    register_secret(key)  # never in a message, log line or scrubbed file of this process
    return key


# -------------------------------------------------------------------------------------------------
# Requests, answers, hashing
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """One chat request. ``purpose`` is the prompt version (e.g. ``judge/hallucination/v1``); ``sample``
    is the index of a repeated sample (k-sample averaging). Both are part of the cache key."""

    item_id: str
    messages: Sequence[Mapping[str, str]]
    purpose: str = "chat"
    sample: int = 0
    temperature: float | None = None  # overrides the config's temperature when set
    max_tokens: int | None = None  # overrides the config's max_tokens when set


@dataclass(frozen=True)
class Answer:
    """What a backend returns for one request."""

    content: str
    reasoning_content: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class ChatResult:
    """The outcome of one request: an answer (fresh or cached) or an error after all retries."""

    request: ChatRequest
    content: str | None = None
    reasoning_content: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached: bool = False
    attempts: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.content is not None

    @property
    def item_id(self) -> str:
        return self.request.item_id


def prompt_hash(messages: Sequence[Mapping[str, str]], params: Mapping[str, Any]) -> str:
    """Hash of what decides the answer: the messages and the generation parameters (sample index included)."""
    return sha256_json({"messages": [dict(m) for m in messages], "params": dict(params)})


CacheKey = tuple[str, str, str, str]  # (model, purpose, item_id, prompt_hash)


# -------------------------------------------------------------------------------------------------
# The resumable cache
# -------------------------------------------------------------------------------------------------


class ResponseCache:
    """Append-only JSONL cache of successful answers; ``path=None`` keeps it in memory only.

    Every ``put`` appends one line, flushes and fsyncs before returning. Lines that do not parse
    (a crash mid-write leaves a truncated last line) are skipped with a warning, never fatal.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[CacheKey, dict] = {}
        self._lock = threading.Lock()
        self.n_corrupt = 0
        self._needs_newline = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._load()

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        lines = data.split(b"\n")
        for no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (rec["model"], rec["purpose"], rec["item_id"], rec["prompt_hash"])
                if not isinstance(rec["content"], str):
                    raise TypeError("content is not a string")
            except (ValueError, KeyError, TypeError) as e:
                self.n_corrupt += 1
                where = "truncated last line (a crash mid-write?)" if no == len(lines) else "corrupt line"
                log.warning("cache %s: skipping %s %d (%s)", self.path, where, no, type(e).__name__)
                continue
            self._entries[key] = rec
        log.info("cache %s: %d answers loaded", self.path, len(self._entries))

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the cache file for a batch of requests (:mod:`clinical_r1.locks`: another process using it fails
        at once, naming its pid) and re-read what earlier writers appended, so no answer is paid for twice."""
        if self.path is None:
            yield
            return
        from clinical_r1.locks import exclusive

        with exclusive(self.path, "API cache"):
            with self._lock:
                self._entries.clear()
                self.n_corrupt, self._needs_newline = 0, False
                if self.path.exists():
                    self._load()
            yield

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def get(self, key: CacheKey) -> dict | None:
        return self._entries.get(key)

    def put(self, key: CacheKey, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as f:
                    if self._needs_newline:  # never glue a record onto a truncated line
                        f.write("\n")
                        self._needs_newline = False
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            self._entries[key] = record


# -------------------------------------------------------------------------------------------------
# Backends
# -------------------------------------------------------------------------------------------------


SHARED_MIN_TOKENS = 32  # texts sharing at least this many more prefix tokens run that prefix once, as a group


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _shared_len(seqs: Sequence[Sequence[int]], rows: Sequence[int]) -> int:
    """The prefix length shared by ``seqs[rows]``, leaving each at least one token to read."""
    first = seqs[rows[0]]
    n = min(len(seqs[i]) for i in rows) - 1
    for i in rows[1:]:
        n = min(n, _lcp(first, seqs[i]))
    return max(n, 0)


def _prefix_groups(seqs: Sequence[Sequence[int]], rows: Sequence[int], start: int) -> list[list[int]]:
    """``rows`` in token order, split where neighbours share fewer than ``SHARED_MIN_TOKENS`` tokens beyond
    ``start``."""
    order = sorted(rows, key=lambda i: seqs[i])
    groups = [[order[0]]]
    for prev, i in zip(order, order[1:]):
        if _lcp(seqs[prev], seqs[i]) - start >= SHARED_MIN_TOKENS:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class Backend(Protocol):
    name: str  # the model identifier used in cache keys
    concurrency: int

    def send(self, messages: Sequence[Mapping[str, str]], *, temperature: float | None,
             max_tokens: int | None, seed: int) -> Answer: ...


def _retry_after(response: Any) -> float | None:
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def parse_chat_body(text: str) -> Answer:
    """An :class:`Answer` from an OpenAI chat-completion JSON body; ``TransientError('malformed')`` if not one.

    The reasoning is read from ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (newer vLLM, OpenRouter).
    """
    try:
        body = json.loads(text)
        message = body["choices"][0]["message"]
        content = message.get("content")
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        usage = body.get("usage") or {}
        answer = Answer(
            content=content if isinstance(content, str) else "",
            reasoning_content=reasoning if isinstance(reasoning, str) else "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=body["choices"][0].get("finish_reason"),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        why = f"unreadable chat-completion body ({type(e).__name__}): {text[:120]!r}"
        raise TransientError("malformed", why) from None
    if content is None and not reasoning:
        raise TransientError("malformed", "chat-completion body without content")
    return answer


class OpenAIBackend:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, through the ``openai`` client (no client retries)."""

    def __init__(self, config: ChatConfig):
        import openai

        self._openai = openai
        self._key = read_api_key(config.api_key_env)  # fails before any request
        self.config = config
        self.name = config.model
        self.concurrency = config.concurrency
        self._client = openai.OpenAI(api_key=self._key, base_url=config.base_url, max_retries=0,
                                     timeout=config.timeout_s)

    def __repr__(self) -> str:
        return redact(f"OpenAIBackend(model={self.name!r}, base_url={self.config.base_url!r}, "
                      f"key=${self.config.api_key_env})")

    def send(self, messages: Sequence[Mapping[str, str]], *, temperature: float | None,
             max_tokens: int | None, seed: int) -> Answer:
        oa = self._openai
        kwargs: dict[str, Any] = {"model": self.name, "messages": [dict(m) for m in messages]}
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if self.config.extra_body:
            kwargs["extra_body"] = dict(self.config.extra_body)
        try:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
            text = raw.text
        except oa.RateLimitError as e:
            raise TransientError("http_429", self._msg(e), _retry_after(e.response)) from None
        except oa.APITimeoutError:
            raise TransientError("timeout", f"no answer within {self.config.timeout_s:g}s") from None
        except oa.APIConnectionError as e:
            raise TransientError("connection", self._msg(e)) from None
        except (oa.AuthenticationError, oa.PermissionDeniedError, oa.NotFoundError) as e:
            raise FatalAPIError(redact(
                f"HTTP {e.status_code} from {self.config.base_url or 'the OpenAI API'} for model {self.name!r}: "
                f"{self._msg(e)} (check the key in ${self.config.api_key_env}, the base_url and the model name)",
                self._key)) from None
        except oa.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409):
                raise TransientError(f"http_{e.status_code}", self._msg(e), _retry_after(e.response)) from None
            raise PermanentError(f"http_{e.status_code}", self._msg(e)) from None
        return parse_chat_body(text)

    def _msg(self, e: Exception) -> str:
        return redact(str(e), self._key)[:300]


class LocalBackend:
    """A transformers causal LM answering chat requests: greedy at temperature 0 (or None), sampling otherwise;
    and, for constrained judging, reading next-token probabilities (:meth:`next_token_probs`).

    ``name`` goes into cache keys: give a trained checkpoint its own name so its answers are not
    confused with the base model's. ``judge_mode`` is how :mod:`clinical_r1.judge` uses it by default.
    """

    concurrency = 1

    def __init__(self, model: Any, tokenizer: Any, *, name: str | None = None, max_new_tokens: int = 1024,
                 judge_mode: str = "constrained"):
        if judge_mode not in JUDGE_MODES:
            raise ValueError(f"LocalBackend judge_mode must be one of {JUDGE_MODES}, got {judge_mode!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.judge_mode = judge_mode
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or "local-model"
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str, *, gguf_file: str | None = None, name: str | None = None,
                  max_new_tokens: int = 1024, judge_mode: str = "constrained") -> "LocalBackend":
        """Load through :func:`clinical_r1.models.load_policy` (hub id, local folder or ``embedded:*`` name);
        a raw ``gguf_file`` inside ``path`` is read by transformers directly (inference only)."""
        if gguf_file:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
            from clinical_r1.models import flush_denormals

            flush_denormals()
            model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file)
        else:
            from clinical_r1.models import load_policy

            model, tokenizer = load_policy({"name": str(path)}, lora=None)
        return cls(model.eval(), tokenizer, name=name or (f"{path}/{gguf_file}" if gguf_file else str(path)),
                   max_new_tokens=max_new_tokens, judge_mode=judge_mode)

    def render(self, messages: Sequence[Mapping[str, str]], prefix: str = "") -> str:
        """The prompt text: the chat template with the assistant turn opened, then ``prefix`` (its first words)."""
        msgs = [dict(m) for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + prefix
        return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: " + prefix

    def choice_token_ids(self, text: str, choices: Sequence[str]) -> list[int]:
        """The one token that continues ``text`` with each choice; ``ValueError`` naming choices that are not one
        token there (constrained judging reads a single next-token distribution)."""
        tok = self.tokenizer
        base = tok(text, add_special_tokens=False)["input_ids"]
        ids, bad = [], []
        for c in choices:
            full = tok(text + c, add_special_tokens=False)["input_ids"]
            if len(full) == len(base) + 1 and full[:len(base)] == base and full[-1] != tok.unk_token_id:
                ids.append(full[-1])
            else:
                bad.append(c)
        if bad:
            raise ValueError(f"{self.name}: the choice(s) {bad} are not one token after {text[-40:]!r}; constrained "
                             f"judging needs single-token values (use judge_mode 'generate' with this tokenizer)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: choices {list(choices)} share a token after {text[-40:]!r}")
        return ids

    def next_token_probs(self, texts: Sequence[str], token_ids: Sequence[int], *,
                         batch_size: int = 8) -> list[list[float]]:
        """P(next token = t) after each text, for each ``t`` in ``token_ids`` (full-vocabulary softmax, no sampling).

        One forward pass per text, without recomputing shared prefixes: the prefix all texts share (a judge's
        system prompt) runs once; texts that share a further prefix of at least ``SHARED_MIN_TOKENS`` (the same
        case, the same response) run it once more as a group; the rest run in right-padded batches from that
        KV cache, each row read at its own last token (right padding never reaches a real token under the
        causal mask, so no attention mask is needed).
        """
        import torch

        seqs = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if not seqs:
            return []
        if min(map(len, seqs)) == 0:
            raise ValueError("next_token_probs: an empty text has no next token to read")
        out: list[list[float]] = [[] for _ in seqs]
        device = next(self.model.parameters()).device
        wanted = torch.tensor(list(token_ids), device=device)
        with self._lock, torch.no_grad():
            self._score(None, 0, seqs, list(range(len(seqs))), wanted, batch_size, out)
        return out

    def _score(self, cache: Any, start: int, seqs: Sequence[Sequence[int]], rows: list[int], wanted: Any,
               batch_size: int, out: list) -> None:
        """Extend ``cache`` by the prefix ``rows`` share, recurse into subgroups sharing more, read the rest."""
        n = _shared_len(seqs, rows)
        cache = self._extend(cache, seqs[rows[0]][start:n])
        groups = _prefix_groups(seqs, rows, n)
        singles = []
        for group in groups:
            if len(group) > 1 and len(groups) > 1:
                self._score(cache, n, seqs, group, wanted, batch_size, out)
            else:
                singles += group
        self._read(cache, n, seqs, singles, wanted, batch_size, out)

    def _extend(self, cache: Any, ids: Sequence[int]) -> Any:
        """A new KV cache: ``cache`` (None = empty; left unchanged) followed by ``ids``, batch 1."""
        import copy

        import torch

        if not ids:
            return cache
        device = next(self.model.parameters()).device
        return self.model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True, logits_to_keep=1,
                          past_key_values=copy.deepcopy(cache)).past_key_values

    def _read(self, cache: Any, start: int, seqs: Sequence[Sequence[int]], rows: Sequence[int], wanted: Any,
              batch_size: int, out: list) -> None:
        """Run ``seqs[i][start:]`` for ``rows`` after ``cache`` in batches; write P(``wanted``) at each last token."""
        import copy

        import torch

        device = wanted.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0  # never read
        rows = sorted(rows, key=lambda i: -len(seqs[i]))  # similar lengths batch together
        for b in range(0, len(rows), batch_size):
            batch = rows[b:b + batch_size]
            tails = [seqs[i][start:] for i in batch]
            width = max(map(len, tails))
            ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=device)
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
            last = torch.tensor([len(t) - 1 for t in tails], device=device)
            keep = torch.unique(last)  # sorted; only these positions go through the LM head
            logits = self.model(input_ids=ids, past_key_values=past, use_cache=past is not None,
                                logits_to_keep=keep).logits
            picked = logits[torch.arange(len(batch), device=device), torch.searchsorted(keep, last)]
            for i, p in zip(batch, picked.float().softmax(-1)[:, wanted].tolist()):
                out[i] = p

    def send(self, messages: Sequence[Mapping[str, str]], *, temperature: float | None,
             max_tokens: int | None, seed: int) -> Answer:
        import torch

        tok = self.tokenizer
        enc = tok(self.render(messages), return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        cap = max_tokens or self.max_new_tokens
        sample = bool(temperature)
        gen: dict[str, Any] = {"max_new_tokens": cap, "do_sample": sample,
                               "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        if sample:
            gen["temperature"] = float(temperature)
            torch.manual_seed(seed)
        with self._lock, torch.no_grad():
            out = self.model.generate(**enc, **gen)
        new = out[0, enc["input_ids"].shape[1]:]
        ended = tok.eos_token_id is not None and bool((new == tok.eos_token_id).any())
        return Answer(
            content=tok.decode(new, skip_special_tokens=True),
            prompt_tokens=int(enc["input_ids"].shape[1]),
            completion_tokens=int(new.shape[0]),
            finish_reason="stop" if ended or new.shape[0] < cap else "length",
        )


# -------------------------------------------------------------------------------------------------
# Accounting
# -------------------------------------------------------------------------------------------------


@dataclass
class UsageStats:
    """What a run sent and received. ``requests_sent`` counts every attempt, retries included."""

    requests_sent: int = 0
    answers_received: int = 0
    cache_hits: int = 0
    retries: int = 0
    failed_items: int = 0
    errors: Counter = field(default_factory=Counter)  # error kind -> occurrences (each attempt)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # tokens of answers served from the cache (not paid again)
    cached_completion_tokens: int = 0
    seconds: float = 0.0


# -------------------------------------------------------------------------------------------------
# The client
# -------------------------------------------------------------------------------------------------


class ChatClient:
    """Cache + retries + concurrency + accounting over one backend. Build it with :func:`make_client`."""

    def __init__(self, backend: Backend, config: ChatConfig, cache_path: str | os.PathLike | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None):
        self.backend = backend
        self.config = config
        self.cache = ResponseCache(cache_path)
        self.stats = UsageStats()
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def model(self) -> str:
        return self.backend.name

    # --- keys ------------------------------------------------------------------------------------
    def params(self, req: ChatRequest) -> dict[str, Any]:
        temperature = req.temperature if req.temperature is not None else self.config.temperature
        max_tokens = req.max_tokens if req.max_tokens is not None else self.config.max_tokens
        params = {"temperature": temperature, "max_tokens": max_tokens, "sample": req.sample}
        if self.config.extra_body:  # endpoint switches (e.g. a thinking mode) change the answer too
            params["extra_body"] = dict(self.config.extra_body)
        return params

    def key(self, req: ChatRequest) -> CacheKey:
        return (self.model, req.purpose, str(req.item_id), prompt_hash(req.messages, self.params(req)))

    # --- running ---------------------------------------------------------------------------------
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Answers for ``requests``, in order. Cache hits are not sent; identical requests are sent once.
        The cache file is held for the call (one writer; see :meth:`ResponseCache.claimed`).

        A :class:`FatalAPIError` stops the run (answers already received stay cached) and is re-raised.
        """
        with self.cache.claimed():
            return self._complete(requests)

    def _complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        t0 = time.monotonic()
        keys = [self.key(r) for r in requests]
        results: dict[CacheKey, ChatResult] = {}
        todo: dict[CacheKey, ChatRequest] = {}
        for r, k in zip(requests, keys):
            hit = self.cache.get(k)
            if hit is not None:
                results[k] = self._from_record(r, hit)
            elif k not in todo:
                todo[k] = r
        n_hits = sum(1 for k in keys if k in results)
        with self._lock:
            self.stats.cache_hits += n_hits
            for k in set(results):
                self.stats.cached_prompt_tokens += results[k].prompt_tokens
                self.stats.cached_completion_tokens += results[k].completion_tokens
        log.info("%s: %d requests, %d cached, %d to send", self.model, len(requests), n_hits, len(todo))
        if todo:
            results.update(self._run(todo))
        self.stats.seconds += time.monotonic() - t0
        return [dataclasses.replace(results[k], request=r) for r, k in zip(requests, keys)]

    def _run(self, todo: Mapping[CacheKey, ChatRequest]) -> dict[CacheKey, ChatResult]:
        self._stop.clear()
        workers = max(1, min(self.backend.concurrency, self.config.concurrency, len(todo)))
        out: dict[CacheKey, ChatResult] = {}
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chat")
        try:
            futures = {pool.submit(self._call, r, k): k for k, r in todo.items()}
            pending = set(futures)
            # a widget in Jupyter (tqdm.auto), a bar on a terminal, nothing when stderr is not a terminal
            with tqdm(total=len(futures), desc=self.model, unit="request", disable=None) as bar:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    bar.update(len(done))  # from this thread only: widgets are not updated from the workers
                    for f in done:
                        if f.exception() is not None:
                            raise f.exception()
            for f, k in futures.items():
                out[k] = f.result()
        except BaseException:  # a fatal API error, or Ctrl-C: in-flight requests finish, nothing new is sent
            self._stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def _call(self, req: ChatRequest, key: CacheKey) -> ChatResult:
        params = self.params(req)
        last = ""
        for attempt in range(self.config.max_retries + 1):
            if self._stop.is_set():
                return ChatResult(req, attempts=attempt, error="stopped: another request failed fatally")
            with self._lock:
                self.stats.requests_sent += 1
                self.stats.retries += attempt > 0
            try:
                ans = self.backend.send(req.messages, temperature=params["temperature"],
                                        max_tokens=params["max_tokens"], seed=req.sample)
            except TransientError as e:
                last = str(e)
                with self._lock:
                    self.stats.errors[e.kind] += 1
                if attempt == self.config.max_retries:
                    break
                delay = self.backoff(attempt, e.retry_after)
                log.warning("%s item %s: %s (attempt %d of %d); retrying in %.2fs", self.model, req.item_id,
                            e.kind, attempt + 1, self.config.max_retries + 1, delay)
                self._sleep(delay)
                continue
            except PermanentError as e:
                with self._lock:
                    self.stats.errors[e.kind] += 1
                    self.stats.failed_items += 1
                log.error("%s item %s: %s (not retried)", self.model, req.item_id, e)
                return ChatResult(req, attempts=attempt + 1, error=str(e))
            return self._store(req, key, ans, attempt + 1)
        with self._lock:
            self.stats.failed_items += 1
        log.error("%s item %s: giving up after %d attempts: %s", self.model, req.item_id,
                  self.config.max_retries + 1, last)
        return ChatResult(req, attempts=self.config.max_retries + 1, error=f"gave up after retries: {last}")

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with jitter: base·2^attempt scaled by U(0.5, 1), at least ``Retry-After``, capped."""
        delay = self.config.backoff_base_s * (2 ** attempt) * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.config.backoff_max_s)

    def _store(self, req: ChatRequest, key: CacheKey, ans: Answer, attempts: int) -> ChatResult:
        record = {
            "model": key[0], "purpose": key[1], "item_id": key[2], "prompt_hash": key[3],
            "sample": req.sample, "content": ans.content, "reasoning_content": ans.reasoning_content,
            "prompt_tokens": ans.prompt_tokens, "completion_tokens": ans.completion_tokens,
            "finish_reason": ans.finish_reason, "time": round(time.time(), 3),
        }
        self.cache.put(key, record)
        with self._lock:
            self.stats.answers_received += 1
            self.stats.prompt_tokens += ans.prompt_tokens
            self.stats.completion_tokens += ans.completion_tokens
        return ChatResult(req, ans.content, ans.reasoning_content, ans.prompt_tokens, ans.completion_tokens,
                          ans.finish_reason, cached=False, attempts=attempts)

    @staticmethod
    def _from_record(req: ChatRequest, rec: Mapping[str, Any]) -> ChatResult:
        return ChatResult(req, rec["content"], rec.get("reasoning_content") or "", int(rec.get("prompt_tokens") or 0),
                          int(rec.get("completion_tokens") or 0), rec.get("finish_reason"), cached=True)

    # --- reporting -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Token and cost accounting for this client's lifetime (cache hits cost nothing)."""
        s = self.stats
        return {
            "model": self.model,
            "backend": self.config.backend,
            "requests_sent": s.requests_sent,
            "answers_received": s.answers_received,
            "cache_hits": s.cache_hits,
            "retries": s.retries,
            "failed_items": s.failed_items,
            "errors": dict(s.errors),
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "cost_usd": self.config.cost(s.prompt_tokens, s.completion_tokens),
            "saved_cost_usd": self.config.cost(s.cached_prompt_tokens, s.cached_completion_tokens),
            "seconds": round(s.seconds, 3),
        }


ClientSpec = Any  # ChatClient | ChatConfig | Mapping | LocalBackend | (model, tokenizer)


def make_client(spec: ClientSpec, cache_path: str | os.PathLike | None = None, **kw: Any) -> ChatClient:
    """A :class:`ChatClient` from a config (dataclass or mapping), a ready backend or a ``(model, tokenizer)`` pair.

    A ready :class:`ChatClient` is returned as is (its own cache is kept; ``cache_path`` must then be None
    or the same path). ``kw`` go to :class:`ChatClient` (``sleep``, ``seed``).
    """
    if isinstance(spec, ChatClient):
        if cache_path is not None and spec.cache.path != Path(cache_path):
            raise ValueError(f"client already caches to {spec.cache.path}, not {cache_path}")
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        spec = LocalBackend(*spec)
    if isinstance(spec, LocalBackend):  # the generation cap goes into max_tokens, hence into the cache key
        cfg = ChatConfig(model=spec.name, backend="local", concurrency=1, max_tokens=spec.max_new_tokens)
        return ChatClient(spec, cfg, cache_path, **kw)
    config = spec if isinstance(spec, ChatConfig) else ChatConfig.from_dict(spec)
    if config.backend == "local":
        if not config.model_path:  # the model name is the path: a hub id, a folder or an embedded:* name
            config = dataclasses.replace(config, model_path=config.model)
        if config.max_tokens is None:
            config = dataclasses.replace(config, max_tokens=config.max_new_tokens)
        backend: Backend = LocalBackend.from_path(config.model_path, gguf_file=config.gguf_file, name=config.model,
                                                  max_new_tokens=config.max_new_tokens,
                                                  judge_mode=config.judge_mode or "constrained")
    else:
        backend = OpenAIBackend(config)
    return ChatClient(backend, config, cache_path, **kw)
