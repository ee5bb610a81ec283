"""A real OpenAI-compatible chat server on 127.0.0.1 with scripted answers and a fault plan, for tests.

    from openai_server import FakeOpenAIServer          # tests/ is on sys.path under pytest

    with FakeOpenAIServer(answer=lambda req: "... \\\\boxed{C}", faults={"item q3": ["429", "drop"]}) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        ...
        assert srv.served_for("item q3") == 1              # answered successfully exactly once

It speaks plain HTTP/1.1 (``http.server.ThreadingHTTPServer`` on port 0) and implements
``POST /v1/chat/completions`` with OpenAI's JSON shape: ``id``, ``choices[0].message.content``, an optional
``reasoning_content`` (as DeepSeek's reasoner returns it) and ``usage``.

Faults, chosen per request by the fault plan (see :class:`FakeOpenAIServer`):

- ``"429"``: rate limited, with a ``Retry-After`` header; ``"500"``, ``"503"``: server errors;
  ``"400"``, ``"401"``: client errors (not retryable);
- ``"slow"``: sleeps ``slow_s`` before answering (beyond the client's timeout); not counted as served;
- ``"malformed"``: HTTP 200 with a truncated JSON body;
- ``"drop"``: closes the socket without sending any response.

Requests are counted per prompt (the last user message), so tests can assert that nothing was paid twice.
The server is bounded: it shuts itself down after ``lifetime_s`` even if a test forgets to.

``build_tiny_chat_model()`` at the bottom builds a random-initialised tiny Llama with a tokenizer trained
offline, for tests of the local transformers backend.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

FAULTS = ("429", "500", "503", "400", "401", "slow", "malformed", "drop")

AnswerFn = Callable[[dict], "str | Mapping[str, Any]"]


def default_answer(request: dict) -> str:
    return "The findings point to option A. \\boxed{A}"


def prompt_of(request: dict) -> str:
    """The prompt key of a request: the content of its last user message."""
    users = [m for m in request.get("messages", []) if m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    return content if isinstance(content, str) else json.dumps(content)


class FakeOpenAIServer:
    """A local OpenAI-compatible server; use as a context manager.

    ``answer(request) -> str | dict``: the assistant reply for a request (the parsed JSON body); a dict may
    carry ``content``, ``reasoning_content``, ``prompt_tokens``, ``completion_tokens``, ``finish_reason``.
    ``faults``: either ``{substring: [fault, fault, ...]}`` — the n-th request whose prompt contains the
    substring gets the n-th fault (``None`` = answer normally), later requests are answered normally — or a
    function ``(prompt, attempt) -> fault | None`` with ``attempt`` counted from 0 per prompt.
    ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get HTTP 401.
    """

    def __init__(self, answer: AnswerFn | None = None, faults: Any = None, *, slow_s: float = 2.0,
                 retry_after: float = 0.0, api_key: str | None = None, lifetime_s: float = 120.0,
                 model: str = "fake-model"):
        self.answer = answer or default_answer
        self.faults = faults
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.api_key = api_key
        self.lifetime_s = lifetime_s
        self.model = model
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # prompt -> requests received
        self.served: Counter[str] = Counter()  # prompt -> successful answers delivered
        self.fault_log: list[tuple[str, str]] = []  # (prompt, fault) in arrival order
        self.bodies: list[dict] = []  # every parsed request body
        self.auth_ok = 0  # requests carrying the expected key
        self._httpd: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "FakeOpenAIServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)  # bounded: stops by itself
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._timer is not None:
            self._timer.cancel()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # --- counters --------------------------------------------------------------------------------
    @property
    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())

    def requests_for(self, substring: str) -> int:
        with self.lock:
            return sum(n for p, n in self.requests.items() if substring in p)

    def served_for(self, substring: str) -> int:
        with self.lock:
            return sum(n for p, n in self.served.items() if substring in p)

    # --- the plan ----------------------------------------------------------------------------------
    def fault_for(self, prompt: str, attempt: int) -> str | None:
        if self.faults is None:
            return None
        if callable(self.faults):
            return self.faults(prompt, attempt)
        for sub, plan in self.faults.items():
            if sub in prompt:
                return plan[attempt] if attempt < len(plan) else None
        return None

    def reply_body(self, request: dict) -> dict:
        out = self.answer(request)
        spec = {"content": out} if isinstance(out, str) else dict(out)
        content = spec.get("content", "")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if spec.get("reasoning_content") is not None:
            message["reasoning_content"] = spec["reasoning_content"]
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        completion_words = len(str(content).split()) + len(str(spec.get("reasoning_content") or "").split())
        return {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": spec.get("finish_reason", "stop")}],
            "usage": {
                "prompt_tokens": int(spec.get("prompt_tokens", prompt_words)),
                "completion_tokens": int(spec.get("completion_tokens", completion_words)),
                "total_tokens": int(spec.get("prompt_tokens", prompt_words))
                + int(spec.get("completion_tokens", completion_words)),
            },
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real endpoints; every reply sets Content-Length
    owner: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request stderr lines
        return

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": "fake_error", "code": status}}, headers)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        srv = self.owner
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        try:
            request = json.loads(raw)
        except ValueError:
            self._error(400, "request body is not JSON")
            return
        prompt = prompt_of(request)
        with srv.lock:
            attempt = srv.requests[prompt]
            srv.requests[prompt] += 1
            srv.bodies.append(request)
        if srv.api_key is not None:
            if self.headers.get("Authorization") != f"Bearer {srv.api_key}":
                self._error(401, "invalid api key")
                return
            with srv.lock:
                srv.auth_ok += 1
        fault = srv.fault_for(prompt, attempt)
        if fault is not None:
            with srv.lock:
                srv.fault_log.append((prompt, fault))
        self._serve(fault, request, prompt)

    def _serve(self, fault: str | None, request: dict, prompt: str) -> None:
        srv = self.owner
        if fault == "429":
            self._error(429, "rate limited", {"Retry-After": f"{srv.retry_after:g}"})
        elif fault in ("500", "503", "400", "401"):
            self._error(int(fault), f"injected HTTP {fault}")
        elif fault == "malformed":
            self._send_json(200, '{"id": "chatcmpl-broken", "choices": [{"message": {"content": "trunc')
        elif fault == "drop":
            self.close_connection = True  # handler returns without a response; the socket is closed
        elif fault == "slow":
            time.sleep(srv.slow_s)
            self.close_connection = True
            try:
                self._send_json(200, srv.reply_body(request))  # the client has given up; not counted
            except OSError:
                pass
        elif fault is None:
            self._send_json(200, srv.reply_body(request))
            with srv.lock:
                srv.served[prompt] += 1
        else:
            raise ValueError(f"unknown fault {fault!r}; choose one of {FAULTS}")


# -------------------------------------------------------------------------------------------------
# A tiny local chat model, built offline, for the local transformers backend
# -------------------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_chat_model(seed: int = 0):
    """A random-initialised 2-layer Llama (~100k parameters) and a word-level tokenizer trained in memory.

    Nothing is downloaded. Returns ``(model, tokenizer)``.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        "the patient has fever cough and a raised white cell count the answer is boxed A B C D E",
        "<dx> tsh is high so hypothyroidism </dx> <conclusion> \\boxed{C} </conclusion> { } count 0 1 2 3",
    ]
    special = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=special))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
