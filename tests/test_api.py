"""clinical_r1.api against a real local HTTP server with injected faults (offline, ~10 s).

    .venv/bin/pytest tests/test_api.py -q            # add -m slow for the tiny local-model test only
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clinical_r1.api import (ChatClient, ChatConfig, ChatRequest, FatalAPIError, LocalBackend, MissingAPIKeyError,
                             ResponseCache, make_client)
from openai_server import FakeOpenAIServer, build_tiny_chat_model

KEY_ENV = "CLINICAL_R1_TEST_KEY"
SECRET = "sk-test-Zq9SECRETvalue-0042"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def config(srv: FakeOpenAIServer, **kw) -> ChatConfig:
    base = dict(model="teacher-x", base_url=srv.base_url, api_key_env=KEY_ENV, timeout_s=0.5, max_retries=4,
                backoff_base_s=0.01, backoff_max_s=0.05, concurrency=4)
    return ChatConfig(**{**base, **kw})


def requests_for(n: int, purpose: str = "test/v1") -> list[ChatRequest]:
    return [ChatRequest(f"q{i}", [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": f"question q{i}?"}], purpose=purpose)
            for i in range(n)]


def cache_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


FAULT_PLAN = {
    "q0?": ["429", "429"],
    "q1?": ["500"],
    "q2?": ["503", "500"],
    "q3?": ["slow"],
    "q4?": ["malformed"],
    "q5?": ["drop"],
    "q6?": ["drop", "malformed", "429", "slow"],
}


def test_faults_lose_nothing_and_rerun_pays_nothing(tmp_path, key):
    cache = tmp_path / "cache.jsonl"
    with FakeOpenAIServer(faults=FAULT_PLAN, slow_s=1.0, api_key=key) as srv:
        client = make_client(config(srv), cache)
        results = client.complete(requests_for(10))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        assert [r.item_id for r in results] == [f"q{i}" for i in range(10)]
        n_faults = sum(len(v) for v in FAULT_PLAN.values())
        assert srv.total_requests == 10 + n_faults
        for i in range(10):
            assert srv.served_for(f"q{i}?") == 1  # each prompt answered successfully exactly once
        s = client.summary()
        assert s["requests_sent"] == 10 + n_faults and s["retries"] == n_faults and s["answers_received"] == 10
        assert s["errors"] == {"http_429": 3, "http_500": 2, "http_503": 1, "timeout": 2, "malformed": 2,
                               "connection": 2}
        assert len(cache_lines(cache)) == 10

        before = srv.total_requests
        again = make_client(config(srv), cache)
        rerun = again.complete(requests_for(10))
        assert srv.total_requests == before  # the rerun sent nothing
        assert all(r.cached and r.ok for r in rerun)
        assert [r.content for r in rerun] == [r.content for r in results]
        assert again.summary()["cache_hits"] == 10 and again.summary()["requests_sent"] == 0


def test_secret_never_in_cache_logs_or_errors(tmp_path, key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the openai and httpx ones included
    cache = tmp_path / "cache.jsonl"
    with FakeOpenAIServer(faults={"q0?": ["429", "500"], "q1?": ["drop"]}, api_key=key) as srv:
        client = make_client(config(srv), cache)
        assert all(r.ok for r in client.complete(requests_for(3)))
        assert srv.auth_ok == srv.total_requests == 6  # the key was sent, as a header, on every request
        assert SECRET not in repr(client.backend)
    with FakeOpenAIServer(api_key="a-different-key") as srv:  # the endpoint refuses our key
        with pytest.raises(FatalAPIError) as err:
            make_client(config(srv), tmp_path / "c2.jsonl").complete(requests_for(2))
        assert "401" in str(err.value) and KEY_ENV in str(err.value)
    assert SECRET not in str(err.value)
    assert SECRET not in cache.read_text()
    assert SECRET not in caplog.text
    assert "retrying" in caplog.text  # the logs did record the retries


def test_missing_key_is_a_clear_error_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAIServer() as srv:
        with pytest.raises(MissingAPIKeyError, match=KEY_ENV):
            make_client(config(srv), tmp_path / "c.jsonl")
        assert srv.total_requests == 0
    monkeypatch.setenv(KEY_ENV, "   ")
    with pytest.raises(MissingAPIKeyError, match=KEY_ENV):
        make_client({"model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV})


def test_crash_mid_run_then_resume_sends_only_the_rest(tmp_path, key):
    """A child process is SIGKILLed while waiting on item 5; the resumed run sends only items 5..9."""
    cache = tmp_path / "cache.jsonl"
    hang = {"q5?": ["slow"]}  # the child's first request for q5 hangs until it is killed
    with FakeOpenAIServer(faults=hang, slow_s=20.0, api_key=key) as srv:
        child = textwrap.dedent(f"""
            import sys; sys.path.insert(0, {str(REPO)!r})
            from clinical_r1.api import ChatConfig, ChatRequest, make_client
            cfg = ChatConfig(model="teacher-x", base_url={srv.base_url!r}, api_key_env={KEY_ENV!r},
                             timeout_s=60, concurrency=1)
            reqs = [ChatRequest(f"q{{i}}", [{{"role": "system", "content": "be brief"}},
                                            {{"role": "user", "content": f"question q{{i}}?"}}], purpose="test/v1")
                    for i in range(10)]
            make_client(cfg, {str(cache)!r}).complete(reqs)
        """)
        proc = subprocess.Popen([sys.executable, "-c", child], env={**os.environ}, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while srv.requests_for("q5?") == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert srv.requests_for("q5?") == 1, proc.stderr.read().decode() if proc.poll() is not None else ""
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert len(cache_lines(cache)) == 5  # q0..q4, each flushed the moment it arrived
        with open(cache, "a") as f:
            f.write('{"model": "teacher-x", "purpose": "test/v1", "item_id": "q5", "prom')  # a torn write

        client = make_client(config(srv), cache)
        assert client.cache.n_corrupt == 1  # skipped with a warning, not fatal
        results = client.complete(requests_for(10))
        assert all(r.ok for r in results)
        assert [r.cached for r in results] == [True] * 5 + [False] * 5
        assert client.summary()["requests_sent"] == 5
        for i in range(10):
            assert srv.served_for(f"q{i}?") == 1
    lines = cache.read_text().splitlines()
    assert len(lines) == 11 and lines[5].endswith('"prom')  # the torn line stays, the next record starts fresh
    assert len(ResponseCache(cache)) == 10


def test_in_process_exception_after_n_items_then_resume(tmp_path, key):
    """An exception raised by the caller's code after N answers (a crash in the notebook) loses nothing."""
    cache = tmp_path / "cache.jsonl"
    with FakeOpenAIServer(api_key=key) as srv:
        client = make_client(config(srv, concurrency=1), cache)
        with pytest.raises(RuntimeError, match="boom"):
            for i, req in enumerate(requests_for(6)):
                client.complete([req])
                if i == 2:
                    raise RuntimeError("boom")
        assert srv.total_requests == 3
        make_client(config(srv), cache).complete(requests_for(6))
        assert srv.total_requests == 6 and all(srv.served_for(f"q{i}?") == 1 for i in range(6))


def test_gives_up_after_retries_and_does_not_cache_failures(tmp_path, key):
    cache = tmp_path / "cache.jsonl"
    always_500 = {"q1?": ["500"] * 10}
    with FakeOpenAIServer(faults=always_500, api_key=key) as srv:
        client = make_client(config(srv, max_retries=2), cache)
        res = client.complete(requests_for(2))
        assert res[0].ok and not res[1].ok and "http_500" in res[1].error and res[1].attempts == 3
        assert srv.requests_for("q1?") == 3 and client.summary()["failed_items"] == 1
        assert [r["item_id"] for r in cache_lines(cache)] == ["q0"]
    with FakeOpenAIServer(api_key=key) as srv:  # the endpoint recovered: only the failed item is sent
        res = make_client(config(srv), cache).complete(requests_for(2))
        assert all(r.ok for r in res) and srv.total_requests == 1


def test_client_errors_are_not_retried(tmp_path, key):
    with FakeOpenAIServer(faults={"q0?": ["400"]}, api_key=key) as srv:
        res = make_client(config(srv), tmp_path / "c.jsonl").complete(requests_for(2))
        assert not res[0].ok and "http_400" in res[0].error and res[1].ok
        assert srv.requests_for("q0?") == 1


def test_backoff_grows_with_jitter_and_honours_retry_after(tmp_path, key):
    waits: list[float] = []
    with FakeOpenAIServer(faults={"q0?": ["500", "500", "500", "429"]}, retry_after=0.3, api_key=key) as srv:
        cfg = config(srv, backoff_base_s=0.1, backoff_max_s=10.0)
        client = make_client(cfg, None, sleep=waits.append, seed=1)
        assert client.complete(requests_for(1))[0].ok
    assert len(waits) == 4
    for i, w in enumerate(waits[:3]):
        assert 0.5 * 0.1 * 2**i <= w <= 0.1 * 2**i
    assert waits[3] >= 0.3 and waits[3] <= 0.8  # Retry-After 0.3 s is a floor; base·2³ = 0.8 the ceiling
    capped = ChatClient(client.backend, ChatConfig(model="m", backoff_base_s=1.0, backoff_max_s=2.0), None)
    assert capped.backoff(10, retry_after=600) == 2.0


def test_reasoning_content_usage_and_cost(tmp_path, key):
    def answer(req):
        return {"content": "Final: \\boxed{B}", "reasoning_content": "TSH is high, T4 low.",
                "prompt_tokens": 1000, "completion_tokens": 500}

    with FakeOpenAIServer(answer=answer, api_key=key) as srv:
        cfg = config(srv, price_in_per_1m=0.5, price_out_per_1m=2.0, temperature=None, max_tokens=64)
        client = make_client(cfg, tmp_path / "c.jsonl")
        res = client.complete(requests_for(3))
        assert srv.bodies[0]["max_tokens"] == 64 and "temperature" not in srv.bodies[0]
    assert res[0].reasoning_content == "TSH is high, T4 low." and res[0].content == "Final: \\boxed{B}"
    s = client.summary()
    assert (s["prompt_tokens"], s["completion_tokens"]) == (3000, 1500)
    assert s["cost_usd"] == pytest.approx(3000 * 0.5e-6 + 1500 * 2e-6)
    stored = ResponseCache(tmp_path / "c.jsonl").get(client.key(requests_for(1)[0]))
    assert stored["reasoning_content"] == "TSH is high, T4 low." and stored["completion_tokens"] == 500


def test_cache_key_separates_model_purpose_and_params(tmp_path, key):
    cache = tmp_path / "c.jsonl"
    with FakeOpenAIServer(api_key=key) as srv:
        make_client(config(srv), cache).complete(requests_for(2))
        assert srv.total_requests == 2
        make_client(config(srv), cache).complete(requests_for(2, purpose="test/v2"))  # new prompt version
        assert srv.total_requests == 4
        make_client(config(srv, model="other-model"), cache).complete(requests_for(2))
        assert srv.total_requests == 6
        make_client(config(srv, temperature=0.7), cache).complete(requests_for(2))
        assert srv.total_requests == 8
        dup = requests_for(1) * 3  # identical requests in one batch are sent once
        make_client(config(srv, max_tokens=7), cache).complete(dup)
        assert srv.total_requests == 9


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="api_key"):
        ChatConfig.from_dict({"model": "m", "api_key": "sk-do-not-put-keys-in-configs"})
    with pytest.raises(ValueError, match="backend"):
        ChatConfig(model="m", backend="grpc")


@pytest.mark.slow
def test_local_backend_tiny_model_greedy_and_cached(tmp_path):
    model, tok = build_tiny_chat_model()
    client = make_client(LocalBackend(model, tok, name="tiny-llama", max_new_tokens=8), tmp_path / "c.jsonl")
    reqs = requests_for(2)
    first = client.complete(reqs)
    assert all(r.ok and r.completion_tokens <= 8 and r.prompt_tokens > 0 for r in first)
    again = make_client(LocalBackend(model, tok, max_new_tokens=8), None).complete(reqs)  # greedy: same text, no cache
    assert [r.content for r in again] == [r.content for r in first]
    backend = LocalBackend(model, tok, name="tiny-llama", max_new_tokens=8)
    cached = make_client(backend, tmp_path / "c.jsonl").complete(reqs)
    assert all(r.cached for r in cached) and [r.content for r in cached] == [r.content for r in first]


def test_two_clients_on_one_cache_never_pay_twice_and_a_held_cache_is_refused(tmp_path, key):
    """The cache file is claimed per batch and re-read: a client opened before another one answered reuses
    those answers (one request per item in all); while another process holds the cache, a call fails at once."""
    from clinical_r1.locks import OutputBusyError

    cache = tmp_path / "cache.jsonl"
    with FakeOpenAIServer(api_key=key) as srv:
        early = make_client(config(srv), cache)  # loaded an empty cache
        make_client(config(srv), cache).complete(requests_for(3))
        assert srv.total_requests == 3
        assert [r.content for r in early.complete(requests_for(3))] and srv.total_requests == 3
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import time
            from clinical_r1.locks import exclusive
            with exclusive({str(cache)!r}):
                print("held", flush=True)
                time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
                early.complete(requests_for(4))
        finally:
            holder.kill()
            holder.wait()
        assert srv.total_requests == 3
