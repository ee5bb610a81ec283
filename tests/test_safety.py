"""Failing loudly and safely (issue 14): one writer per output, no hang on a model name, values checked before
a run folder exists, no credential in any file, no failure that exits 0. Real processes, a real socket that
never answers, a real local OpenAI-compatible server.

    .venv/bin/pytest tests/test_safety.py -q
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from clinical_r1 import locks
from clinical_r1.cli import main as cli
from clinical_r1.pipeline import SecretParameterError, StageError, check_secrets, run_recipe
from openai_server import FakeOpenAIServer
from test_pipeline import make_notebook, write_recipe

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# ---------------------------------------------------------------------------------------------------
# One writer per output
# ---------------------------------------------------------------------------------------------------


def test_two_pipelines_on_one_folder_one_is_refused_at_once(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    make_notebook(nbs / "01_slow.ipynb", 'out_dir = ""\nseed = 0',
                  "import time, json\nfrom pathlib import Path\ntime.sleep(4)\n"
                  "Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
                  "Path(out_dir, 'data.json').write_text(json.dumps({'seed': seed}))")
    out = tmp_path / "results" / "shared"
    procs = []
    for seed in (1, 2):
        recipe = write_recipe(tmp_path / f"s{seed}", f"seed{seed}", {"01": {"seed": seed}})
        procs.append(subprocess.Popen([PY, "-m", "clinical_r1", "pipeline", "--recipe", str(recipe), "--out", str(out),
                                       "--notebooks", str(nbs), "--no-progress"], env=ENV, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.wait(timeout=120), p.stdout.read() + p.stderr.read(), p.pid) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    (ok_code, _, winner), (_, refused, _) = sorted(results, key=lambda r: r[0])
    assert f"in use by pid {winner}" in refused and str(out) in refused and "Traceback" not in refused
    status = json.loads((out / "pipeline.json").read_text())
    data = json.loads((out / "data.json").read_text())
    assert status["stages"]["01_slow"]["parameters"]["seed"] == data["seed"]  # the record and the data agree


def test_a_killed_owner_leaves_a_lock_that_is_recovered(tmp_path: Path, caplog) -> None:
    target = tmp_path / "run"
    holder = subprocess.Popen([PY, "-c", f"import time; from clinical_r1.locks import exclusive\n"
                                         f"with exclusive({str(target)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              env=ENV, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(locks.OutputBusyError, match=f"pid {holder.pid}"):
        with locks.exclusive(target):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    caplog.set_level(logging.INFO, logger="clinical_r1.locks")
    with locks.exclusive(target):  # the kernel dropped the dead owner's lock
        assert json.loads(locks.lock_path(target).read_text())["pid"] == os.getpid()
    assert f"recovered the lock of pid {holder.pid}" in caplog.text


def test_done_means_the_outputs_are_still_there_unchanged(tmp_path: Path) -> None:
    nbs = tmp_path / "notebooks"
    make_notebook(nbs / "01_write.ipynb", 'out_dir = ""\nvalue = 1',
                  "from pathlib import Path\nPath(out_dir).mkdir(parents=True, exist_ok=True)\n"
                  "Path(out_dir, 'a.txt').write_text(str(value))")
    recipe = write_recipe(tmp_path, "outs", {"01": {"value": 5}}, common={"out_dir": "{out}"})
    out = tmp_path / "results" / "outs"

    def runs() -> str:
        return json.loads((out / "pipeline.json").read_text())["stages"]["01_write"]["started"]

    run_recipe(recipe, notebooks_dir=nbs, progress=False)
    outputs = json.loads((out / "pipeline.json").read_text())["stages"]["01_write"]["outputs"]
    assert set(outputs) == {"a.txt", "notebooks/01_write.ipynb"} and outputs["a.txt"].startswith("sha256:")
    first = runs()
    time.sleep(1.1)
    run_recipe(recipe, notebooks_dir=nbs, progress=False)
    assert runs() == first  # done, outputs intact: skipped
    (out / "a.txt").write_text("tampered")
    time.sleep(1.1)
    run_recipe(recipe, notebooks_dir=nbs, progress=False)
    assert runs() != first and (out / "a.txt").read_text() == "5"  # a changed output is not "done"
    second = runs()
    (out / "a.txt").unlink()
    time.sleep(1.1)
    run_recipe(recipe, notebooks_dir=nbs, progress=False)
    assert runs() != second and (out / "a.txt").exists()


# ---------------------------------------------------------------------------------------------------
# No hang on a model name
# ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def silent_endpoint():
    """A local socket that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=2)
    for c in held:
        c.close()
    srv.close()


def test_a_hub_id_against_a_silent_hub_fails_within_seconds(tmp_path: Path, silent_endpoint: str) -> None:
    env = {**ENV, "HF_ENDPOINT": silent_endpoint, "HF_HOME": str(tmp_path / "hf"), "CLINICAL_R1_HUB_TIMEOUT": "3"}
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.monotonic()
    p = subprocess.run([PY, "-m", "clinical_r1", "crpo", "--config", "configs/cpu_demo_crpo.yaml",
                        "--set", "model.name=nonexistent/model", "--set", "model.init_adapter=null",
                        "--set", f"output_root={tmp_path / 'results'}"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [ln for ln in p.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "nonexistent/model" in errors[0] and "hf download" in errors[0]
    assert "local model folder" in errors[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "results").exists()  # no run folder for a start that failed
    assert elapsed < 60, elapsed  # imports + 3 s bound (was 250 s and counting)


def test_vllm_serving_folders_bound_the_wait_on_a_silent_hub(monkeypatch, tmp_path: Path,
                                                              silent_endpoint: str) -> None:
    from huggingface_hub import constants

    from clinical_r1 import models

    monkeypatch.setenv("HF_ENDPOINT", silent_endpoint)
    monkeypatch.setenv("CLINICAL_R1_HUB_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    t0 = time.monotonic()
    with pytest.raises(models.ModelError, match="nonexistent/model-xyz.*hub .* is unreachable"):
        models.serving_folders("nonexistent/model-xyz")  # what vLLM evaluation is given for a base model
    assert time.monotonic() - t0 < 10


def test_offline_uncached_hub_id_fails_at_once(monkeypatch, tmp_path: Path) -> None:
    from clinical_r1 import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(models.ModelError, match="HF_HUB_OFFLINE is set.*hf download"):
        models.check_model("nonexistent/model-xyz")
    assert time.monotonic() - t0 < 2


# ---------------------------------------------------------------------------------------------------
# Values checked before a run folder exists; user errors end with exit 2 and one line
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("trainer.learning_rate=-1e-3", "trainer.learning_rate"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size"),
    ("trainer.num_generations=3", "trainer.num_generations"),
    ("data.limit=abc", "data.limit"),
    ("reward.k=abc", "reward.k"),
    ("lora.r=abc", "lora.r"),
    ("trainer.max_steps", "trainer.max_steps"),  # not key=value
])
def test_bad_values_exit_2_with_one_line_naming_the_key(override: str, key: str, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert cli(["check-config", "configs/cpu_demo_crpo.yaml", "--set", override]) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and key in errors[0].getMessage() and "\n" not in errors[0].getMessage()
    assert not errors[0].exc_info  # no traceback without -v


def test_failed_start_leaves_no_run_folder_and_v_shows_the_traceback(tmp_path: Path, caplog) -> None:
    root = tmp_path / "results"
    assert cli(["crpo", "--config", "configs/cpu_demo_crpo.yaml", "--set", "trainer.learning_rate=-1e-3",
                "--set", f"output_root={root}"]) == 2
    assert cli(["crpo", "--config", "configs/cpu_demo_crpo.yaml", "--set", f"data.path={tmp_path}",
                "--set", "data.name=jsonl", "--set", f"output_root={root}", "-v"]) == 2
    err = [r for r in caplog.records if r.levelno >= logging.ERROR][-1]
    assert "data.path" in err.getMessage() and "is a folder" in err.getMessage() and err.exc_info
    assert cli(["sft", "--config", "configs/cpu_demo_sft.yaml", "--set", f"data.traces={tmp_path / 'no.jsonl'}",
                "--set", f"output_root={root}"]) == 2
    assert "data.traces" in [r for r in caplog.records if r.levelno >= logging.ERROR][-1].getMessage()
    assert not root.exists()


# ---------------------------------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params, rule", [
    ({"teacher": {"base_url": "http://user:Pl4ntedPass@host/v1"}}, "URL userinfo"),
    ({"teacher": {"extra_body": {"x": "abc123XYZ"}}}, "extra_body/headers"),
    ({"judge": {"headers": {"Authorization": "Basic Zm9vOmJhcg=="}}}, "extra_body/headers"),
    ({"note": "Bearer abcdefgh"}, "bearer token"),
    ({"note": "hf_Pl4ntedToken123"}, "Hugging Face token"),
    ({"api_key_env": "A1B2C3D4E5F6A7B8C9D0E1F2"}, "base64/hex value in a credential-named field"),
])
def test_the_filter_names_the_rule_and_never_the_value(params: dict, rule: str) -> None:
    with pytest.raises(SecretParameterError, match=f"rule: [^)]*{rule}") as err:
        check_secrets(params, "recipe x")
    for v in ("Pl4ntedPass", "abc123XYZ", "Zm9vOmJhcg", "abcdefgh", "Pl4ntedToken", "A1B2C3D4"):
        assert v not in str(err.value)
    check_secrets({"teacher": {"extra_body": {"thinking": {"type": "enabled"}, "top_k": 5}}}, "recipe x")


def test_planted_secrets_reach_no_file_the_pipeline_writes(tmp_path: Path, monkeypatch) -> None:
    key, url = "sk-Pl4ntedKey0123456789", "https://leakuser:Pl4ntedPass@api.example.org/v1"
    monkeypatch.setenv("PLANTED_API_KEY", key)
    monkeypatch.setenv("PLANTED_URL", url)
    nbs = tmp_path / "notebooks"
    make_notebook(nbs / "01_leak.ipynb", 'out_dir = ""\napi_key_env = ""',
                  "import os, logging\nfrom pathlib import Path\nimport clinical_r1\n"
                  "logging.basicConfig(level=logging.INFO)\nk, u = os.environ[api_key_env], os.environ['PLANTED_URL']\n"
                  "print('key', k, 'url', u)\nlogging.getLogger('clinical_r1.x').warning('calling %s with %s', u, k)\n"
                  "raise RuntimeError(f'HTTP 401 from {u} with key {k}')")
    recipe = write_recipe(tmp_path, "leak", {"01": {"api_key_env": "PLANTED_API_KEY"}}, common={"out_dir": "{out}"})
    with pytest.raises(StageError) as err:
        run_recipe(recipe, notebooks_dir=nbs, progress=False)
    written = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert any(p.suffix == ".ipynb" for p in written) and any(p.name == "pipeline.json" for p in written)
    for text in [str(err.value)] + [p.read_text(errors="replace") for p in written]:
        assert "Pl4ntedKey" not in text and "Pl4ntedPass" not in text
    assert "api.example.org" in str(err.value)  # redacted, not dropped


def test_an_interrupted_stage_is_scrubbed_and_marked_interrupted(tmp_path: Path, monkeypatch) -> None:
    import nbformat
    import papermill

    key = "sk-Pl4ntedKey0123456789"
    monkeypatch.setenv("PLANTED_API_KEY", key)
    monkeypatch.delenv("CLINICAL_R1_NO_BOOTSTRAP", raising=False)
    nbs = tmp_path / "notebooks"
    make_notebook(nbs / "01_stop.ipynb", 'out_dir = ""\napi_key_env = ""', "print('never run')")
    seen = {}

    def ctrl_c(_input, output, **_kw):  # the kernel printed the key, then Ctrl-C
        seen["no_bootstrap"] = os.environ.get("CLINICAL_R1_NO_BOOTSTRAP")  # what a started kernel would inherit
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            "print(k)", outputs=[nbformat.v4.new_output("stream", name="stdout", text=f"key {key}\n")])])
        nbformat.write(nb, output)
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", ctrl_c)
    recipe = write_recipe(tmp_path, "stop", {"01": {"api_key_env": "PLANTED_API_KEY"}}, common={"out_dir": "{out}"})
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, notebooks_dir=nbs, progress=False)
    assert seen["no_bootstrap"] == "1" and "CLINICAL_R1_NO_BOOTSTRAP" not in os.environ  # set for kernels only
    executed = list((tmp_path / "results").rglob("*.ipynb"))
    status = next((tmp_path / "results").rglob("pipeline.json"))
    assert len(executed) == 1 and "Pl4ntedKey" not in executed[0].read_text() and "key " in executed[0].read_text()
    entry = json.loads(status.read_text())["stages"]["01_stop"]
    assert entry["status"] == "interrupted" and entry["finished"] and "KeyboardInterrupt" in entry["error"]


def test_api_error_and_judge_cli_redact_url_userinfo(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("PLANTED_KEY_ENV", "sk-Pl4ntedKey0123456789")
    gens, items = tmp_path / "gens.jsonl", tmp_path / "items.jsonl"
    gens.write_text(json.dumps({"id": "q1", "sample": 0, "text": "<dx>x</dx><conclusion>A</conclusion>", "model": "m"}) + "\n")
    items.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "q1", "question": "Q?", "options": ["a", "b"], "answer": "A"}).encode() + b"\n")
    with FakeOpenAIServer(api_key="another-key") as srv:  # refuses our key: a fatal 401
        host = srv.base_url.split("://", 1)[1]
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"model": "j", "base_url": f"http://leakuser:Pl4ntedPass@{host}",
                                       "api_key_env": "PLANTED_KEY_ENV", "judge_mode": "generate"}))
        code = cli(["judge", "--generations", str(gens), "--items", str(items), "--config", str(cfg),
                           "--metrics", "backtracking", "--cache", str(tmp_path / "cache.jsonl"),
                           "--out", str(tmp_path / "out.jsonl")])
    assert code == 2
    assert "401" in caplog.text and "Pl4ntedPass" not in caplog.text and "Pl4ntedKey" not in caplog.text
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.name != "judge.yaml":
            assert "Pl4ntedPass" not in p.read_text(errors="replace")


# ---------------------------------------------------------------------------------------------------
# No failure that exits 0
# ---------------------------------------------------------------------------------------------------


def test_judge_cli_exits_1_when_every_request_failed(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("PLANTED_KEY_ENV", "k")
    gens, items = tmp_path / "gens.jsonl", tmp_path / "items.jsonl"
    gens.write_text("".join(json.dumps({"id": f"q{i}", "sample": 0, "text": "x", "model": "m"}) + "\n" for i in (1, 2)))
    items.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "options": ["a", "b"], "answer": "A"})
                             + "\n" for i in (1, 2)))

    def run(faults) -> int:
        with FakeOpenAIServer(faults=faults, api_key="k") as srv:
            cfg = tmp_path / "judge.yaml"
            cfg.write_text(yaml.safe_dump({"model": "j", "base_url": srv.base_url, "api_key_env": "PLANTED_KEY_ENV",
                                           "judge_mode": "generate", "max_retries": 0}))
            return cli(["judge", "--generations", str(gens), "--items", str(items), "--config", str(cfg), "--metrics",
                               "backtracking", "--cache", str(tmp_path / f"c{time.time()}.jsonl"),
                               "--out", str(tmp_path / "out.jsonl")])

    caplog.set_level(logging.INFO)
    assert run(lambda prompt, attempt: "400") == 1
    assert "all 2 judge requests failed" in caplog.records[-1].getMessage()
    assert run(lambda prompt, attempt: "400" if "Q1?" in prompt else None) == 0
    last = caplog.records[-1].getMessage()
    assert "1 of 2 judge requests failed" in last and str(tmp_path / "out.jsonl") in last


def test_a_split_that_fails_while_writing_leaves_the_old_set(tmp_path: Path, monkeypatch) -> None:
    from clinical_r1 import data
    from clinical_r1.study import prepare_data

    out = tmp_path / "splits"
    sizes = {"sft": 4, "rl": 4, "dev": 2}
    prepare_data(out, train_benchmark="sample", split_sizes=sizes, seed=0)
    (out / "traces_sft.jsonl").write_text("{}\n")  # another stage's file: carried over
    before = {p.name: p.read_bytes() for p in out.glob("*.jsonl")} | {"manifest.json": (out / "manifest.json").read_bytes()}
    real = data.write_jsonl
    calls = []

    def failing(rows, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real(rows, path)

    monkeypatch.setattr(data, "write_jsonl", failing)
    with pytest.raises(OSError, match="injected"):
        prepare_data(out, train_benchmark="sample", split_sizes=sizes, seed=1)
    monkeypatch.setattr(data, "write_jsonl", real)
    after = {p.name: p.read_bytes() for p in out.glob("*.jsonl")} | {"manifest.json": (out / "manifest.json").read_bytes()}
    assert after == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".splits.new")]
    manifest = prepare_data(out, train_benchmark="sample", split_sizes=sizes, seed=1)
    assert manifest["seed"] == 1 and (out / "traces_sft.jsonl").read_text() == "{}\n"
    assert data.load_split(out, "sft") is not None


def test_an_evaluation_set_without_a_valid_row_is_an_error(tmp_path: Path) -> None:
    from clinical_r1.data import DataError
    from clinical_r1.study import prepare_data

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "", "options": [], "answer": "A"}) + "\n")
    with pytest.raises(DataError, match="no valid row"):
        prepare_data(tmp_path / "s", train_benchmark="sample", split_sizes={"sft": 4, "rl": 4, "dev": 2},
                     eval_benchmarks={"jsonl": str(bad)})
    assert not (tmp_path / "s").exists()


def test_distill_cli_fails_loudly(tmp_path: Path, monkeypatch, caplog) -> None:
    """distill: all requests failed -> exit 1 naming where; an item without an answer -> exit 2, one line."""
    monkeypatch.setenv("PLANTED_KEY_ENV", "k")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "q1", "question": "Q1?", "options": ["a", "b"], "answer": "A"}) + "\n")
    caplog.set_level(logging.INFO)
    with FakeOpenAIServer(faults=lambda prompt, attempt: "400", api_key="k") as srv:
        cfg = tmp_path / "teacher.yaml"
        cfg.write_text(yaml.safe_dump({"model": "t", "base_url": srv.base_url, "api_key_env": "PLANTED_KEY_ENV",
                                       "max_retries": 0}))
        args = ["--items", str(items), "--config", str(cfg), "--out", str(tmp_path / "traces.jsonl"),
                "--cache", str(tmp_path / "cache.jsonl")]
        assert cli(["distill", *args]) == 1
        assert "all 1 teacher requests failed" in caplog.records[-1].getMessage()
        items.write_text(json.dumps({"id": "q1", "question": "Q1?", "options": ["a", "b"]}) + "\n")
        assert cli(["distill", *args]) == 2
        assert "item row 1: missing field 'answer'" in caplog.records[-1].getMessage()


def test_generate_bad_settings_are_user_errors() -> None:
    from clinical_r1.cli import run_cli
    from clinical_r1.generate import GenerationError, generate

    with pytest.raises(GenerationError, match="would be identical"):
        generate(object(), None, [], "x.jsonl", n=2, temperature=0.0)
    assert run_cli(lambda: generate(object(), None, [], "x.jsonl", n=2, temperature=0.0)) == 2


def test_redaction_leaves_base64_image_data_intact():
    """A run of zero bytes in an inline PNG encodes as ...AAAAKIAAAAAAAAAAAAAAAA...: the AWS key shape must not match
    inside it (it used to, and corrupted the executed notebooks' figures); a real key on its own is still masked."""
    import base64

    from clinical_r1.redact import MASK, redact

    data = base64.b64encode(b"\x89PN" + b"\x00" * 6 + b"\x00\xa2\x00" + b"\x00" * 48).decode("ascii")
    assert "AKIA" in data
    assert redact(f'"image/png": "{data}"') == f'"image/png": "{data}"'
    assert redact("key AKIAABCDEFGHIJKLMNOP here") == f"key {MASK} here"
