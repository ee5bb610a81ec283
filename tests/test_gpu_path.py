"""The GPU path, checked on CPU: the notebooks' Colab bootstrap, Unsloth-first imports in every GPU entry point,
one bf16 rule, vLLM evaluation wiring, the GPU benchmark's fair recipes and the GPU smoke command's refusal
without CUDA. Fakes stand in for what a CPU machine lacks (google.colab, nvidia-smi, pip, CUDA, unsloth).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PY = sys.executable


def first_code_cell(path: Path) -> str:
    return next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


BOOTSTRAP = first_code_cell(NOTEBOOKS[0])


# ---------------------------------------------------------------------------------------------------
# The bootstrap cell
# ---------------------------------------------------------------------------------------------------


def test_every_notebook_opens_with_the_same_bootstrap():
    assert len(NOTEBOOKS) == 8
    for p in NOTEBOOKS:
        assert first_code_cell(p) == BOOTSTRAP, f"{p.name}: its first code cell differs from {NOTEBOOKS[0].name}'s"
    assert "clinical_r1.gpu_stack import install" in BOOTSTRAP and "requirements-gpu-dev" not in BOOTSTRAP


def test_bootstrap_does_nothing_outside_colab_and_kaggle(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert "google.colab" not in sys.modules
    ns: dict = {}
    exec(compile(BOOTSTRAP, "bootstrap", "exec"), ns)
    assert Path.cwd() == tmp_path and list(tmp_path.iterdir()) == [] and "repo_url" not in ns


def test_bootstrap_does_nothing_in_kernels_the_pipeline_starts_on_kaggle(tmp_path, monkeypatch):
    from clinical_r1.pipeline import NO_BOOTSTRAP

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # papermill's kernels inherit it on Kaggle
    monkeypatch.setenv("CLINICAL_R1_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a bootstrap that runs stops at once
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(NO_BOOTSTRAP, raising=False)
    with pytest.raises(RuntimeError, match="No CUDA GPU is visible"):  # without the pipeline's variable it runs
        exec(compile(BOOTSTRAP, "bootstrap", "exec"), {})
    monkeypatch.setenv(NO_BOOTSTRAP, "1")  # what clinical_r1.pipeline sets for the kernels it starts
    ns: dict = {}
    exec(compile(BOOTSTRAP, "bootstrap", "exec"), ns)
    assert Path.cwd() == tmp_path and list(tmp_path.iterdir()) == [] and "repo_url" not in ns


DRIVER = textwrap.dedent("""
    import json, os, sys, types
    mode, cell = sys.argv[1], open(sys.argv[2]).read()
    sys.modules["google"] = types.ModuleType("google")
    sys.modules["google.colab"] = types.ModuleType("google.colab")  # what Colab's kernel has
    if mode != "plain":
        import torch  # a T4 as torch would see it (or a driver too old for this torch's CUDA)
        torch.cuda.is_available = lambda: mode == "t4"
        torch.cuda.get_device_name = lambda d=0: "Tesla T4"
        torch.cuda.get_device_capability = lambda d=0: (7, 5)
    exec(compile(cell, "bootstrap", "exec"), {"__name__": "__main__"})
    import clinical_r1
    print("RESULT " + json.dumps({"cwd": os.getcwd(), "clinical_r1": clinical_r1.__file__}))
""")


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A fake Colab: a git repository holding this working tree (the clone URL), fake nvidia-smi and pip."""
    root = tmp_path_factory.mktemp("colab")
    src = root / "origin"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file() and not f.startswith(("results/", "figures/")):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((REPO / f).read_bytes())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=src, check=True)
    subprocess.run([*git, "add", "-A"], cwd=src, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=src, check=True)
    bin_ = root / "bin"
    bin_.mkdir()
    (bin_ / "nvidia-smi").write_text("#!/bin/sh\necho '550.54.15, 7.5, Tesla T4'\n")  # driver, capability, name
    (bin_ / "nvidia-smi").chmod(0o755)
    (root / "fake_pip.py").write_text("import json, os, sys\n"
                                      "open(os.environ['FAKE_PIP_LOG'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (root / "driver.py").write_text(DRIVER)
    (root / "cell.py").write_text(BOOTSTRAP)
    (root / "content").mkdir()
    return root


def run_cell(colab, mode="t4", gpu=True, repo=True, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CLINICAL_R1_REPO", "KAGGLE_KERNEL_RUN_TYPE")}
    env.update(CLINICAL_R1_HOME=str(colab / "content" / "clinical-r1"), FAKE_PIP_LOG=str(colab / "pip.log"),
               CLINICAL_R1_PIP=f"{PY} {colab / 'fake_pip.py'}", OMP_NUM_THREADS="1", **env_extra)
    env["PATH"] = (f"{colab / 'bin'}:" if gpu else "") + "/usr/bin:/bin"
    if repo:
        env["CLINICAL_R1_REPO"] = str(colab / "origin")
    proc = subprocess.run([PY, str(colab / "driver.py"), mode, str(colab / "cell.py")], cwd=colab / "content",
                          env=env, capture_output=True, text=True, timeout=300)
    result = next((json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    return proc, result


def test_bootstrap_stops_without_a_gpu_before_cloning(colab):
    proc, _ = run_cell(colab, gpu=False)
    assert proc.returncode != 0 and "No CUDA GPU is visible" in proc.stderr
    assert "Runtime > Change runtime type" in proc.stderr
    assert not (colab / "content" / "clinical-r1").exists()


def test_bootstrap_asks_for_the_repository_url(colab):
    proc, _ = run_cell(colab, repo=False)
    assert proc.returncode != 0 and "CLINICAL_R1_REPO" in proc.stderr and "Which repository?" in proc.stderr
    assert not (colab / "content" / "clinical-r1").exists()


def test_bootstrap_on_first_contact_and_after_a_restart(colab):
    home = colab / "content" / "clinical-r1"
    proc, res = run_cell(colab)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPU stack cu12 (requirements-gpu-cu12.txt" in proc.stdout  # the stack for a 550 driver, and why
    assert "driver 550.54.15 >= 525 and compute capability 7.5 >= 7.0; not cu13: driver < 580" in proc.stdout
    assert "torch 2." in proc.stdout and "CUDA" in proc.stdout and "bf16: False" in proc.stdout
    assert (home / ".git").is_dir()
    assert res["cwd"] == str(home / "notebooks")
    assert res["clinical_r1"] == str(home / "clinical_r1" / "__init__.py")  # importable in the same kernel
    calls = [json.loads(x) for x in (colab / "pip.log").read_text().splitlines()]
    assert calls == [["install", "-q", "-r", str(home / "requirements-gpu-cu12.txt")],
                     ["install", "-q", "--no-deps", "-e", str(home)]]  # the chosen runtime file only
    assert "replacing the preinstalled torch 2.13.0" in proc.stdout  # this venv's CPU torch is not the stack's

    proc, res = run_cell(colab)  # a restart: a fresh kernel in /content, the clone already there
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res["cwd"] == str(home / "notebooks") and res["clinical_r1"].startswith(str(home))
    assert len((colab / "pip.log").read_text().splitlines()) == len(calls)  # nothing reinstalled
    assert "installing" not in proc.stdout


def test_bootstrap_explains_a_torch_that_sees_no_gpu(colab):
    proc, _ = run_cell(colab, mode="old-driver")
    assert proc.returncode != 0 and "sees no CUDA device" in proc.stderr and "cu12 stack (NVIDIA driver >= 525)" in proc.stderr


# ---------------------------------------------------------------------------------------------------
# Unsloth before transformers / TRL / PEFT
# ---------------------------------------------------------------------------------------------------

STUB = textwrap.dedent("""
    import json, os, sys
    seen = sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules)
    with open(os.environ["UNSLOTH_STUB_OUT"], "w") as f:
        json.dump(seen, f)
    os._exit(17)  # stop here: this stub records the import order, it cannot train
""")
FAKE_CUDA = "import torch; torch.cuda.is_available = lambda: True; torch.cuda.get_device_capability = lambda d=0: (8, 0)\n"


@pytest.fixture(scope="module")
def stub_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stub")
    (d / "unsloth").mkdir()
    (d / "unsloth" / "__init__.py").write_text(STUB)
    return d


def imported_before_unsloth(stub_dir, tmp_path, code: str, cwd: Path = REPO) -> list[str]:
    out = tmp_path / "seen.json"
    env = {**os.environ, "PYTHONPATH": str(stub_dir), "UNSLOTH_STUB_OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([PY, "-c", FAKE_CUDA + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, f"the stub unsloth was never imported:\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_the_recorder_sees_a_wrong_order(stub_dir, tmp_path):
    assert imported_before_unsloth(stub_dir, tmp_path, "import transformers, unsloth") == ["transformers"]


@pytest.mark.parametrize("stage,recipe", [("sft", "configs/t4_16gb_sft.yaml"), ("crpo", "configs/t4_16gb_crpo.yaml"),
                                          ("crpo", "configs/paper_3b_crpo.yaml")])
def test_cli_imports_unsloth_first(stub_dir, tmp_path, stage, recipe):
    code = (f"import sys, runpy; sys.argv = ['clinical_r1', '{stage}', '--config', '{recipe}', '--set', "
            f"'output_root={tmp_path}', '--set', 'model.backend=unsloth']; runpy.run_module('clinical_r1', run_name='__main__')")
    assert imported_before_unsloth(stub_dir, tmp_path, code) == []


@pytest.mark.parametrize("number,recipe_param,recipe", [("03", "sft_config", "../configs/t4_16gb_sft.yaml"),
                                                        ("04", "crpo_config", "../configs/t4_16gb_crpo.yaml")])
def test_training_notebooks_import_unsloth_first(stub_dir, tmp_path, number, recipe_param, recipe):
    """Notebooks 03/04 with a GPU recipe: their cells in order up to the training call, as a kernel runs them."""
    path = next(p for p in NOTEBOOKS if p.name.startswith(number))
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    upto = next(i for i, c in enumerate(cells) if "run_sft(" in c or "run_crpo(" in c)
    params = next(i for i, c in enumerate(cells) if c.lstrip().startswith(("out_dir", "splits_dir")))
    cells.insert(params + 1, f"{recipe_param} = {recipe!r}\nout_dir = {str(tmp_path)!r}\n")
    script = tmp_path / "nb.py"
    script.write_text("\n".join(cells[: upto + 2]))
    code = f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"
    assert imported_before_unsloth(stub_dir, tmp_path, code, cwd=REPO / "notebooks") == []


def test_gpu_benchmark_worker_imports_unsloth_first(stub_dir, tmp_path):
    spec = {"variant": "unsloth", "G": 4, "steps": 1, "recipe": {"model": {"backend": "unsloth"}}}
    code = ("import sys, runpy; sys.argv = ['crpo_step_gpu.py', '--worker', " + repr(json.dumps(spec))
            + f", '--worker-out', '{tmp_path / 'w.json'}']; runpy.run_path('benchmarks/crpo_step_gpu.py', run_name='__main__')")
    assert imported_before_unsloth(stub_dir, tmp_path, code) == []


# ---------------------------------------------------------------------------------------------------
# Precision, vLLM wiring
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("capability,bf16", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_follows_compute_capability_not_torch(monkeypatch, capability, bf16):
    import torch

    from clinical_r1 import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=0: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers (emulation)
    assert models.bf16_supported() is bf16
    assert models.torch_dtype("auto") == (torch.bfloat16 if bf16 else torch.float16)


def test_no_code_asks_torch_for_bf16():
    """``torch.cuda.is_bf16_supported()`` says True on a T4: only ``models.bf16_supported`` decides."""
    offenders = [str(p.relative_to(REPO)) for d in ("clinical_r1", "benchmarks") for p in (REPO / d).rglob("*.py")
                 if "is_bf16_supported()" in p.read_text().replace("``torch.cuda.is_bf16_supported()``", "")]
    assert offenders == []


def test_vllm_engines_round_the_lora_rank(monkeypatch, tmp_path):
    """``VLLMBackend.from_path`` builds the engine with an allowed ``max_lora_rank`` and the LoRA unmerged."""
    import types

    from clinical_r1 import generate, models

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 24, "base_model_name_or_path": "b"}))
    built = {}
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = lambda **kw: built.update(kw) or types.SimpleNamespace(get_tokenizer=lambda: None)
    fake_lora = types.ModuleType("vllm.lora.request")
    fake_lora.LoRARequest = lambda name, i, path: ("lora", path)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", fake_lora)
    monkeypatch.setattr(models, "serving_folders", lambda p, **k: ("/base", str(p)))
    engine = generate.VLLMBackend.from_path(adapter)
    assert built["max_lora_rank"] == 32 and built["enable_lora"] and built["model"] == "/base"
    assert built["dtype"] == "float16"  # no CUDA here: not bf16
    assert engine.lora_request == ("lora", str(adapter))


def test_evaluation_passes_paths_so_vllm_can_build_its_engine(monkeypatch, tmp_path):
    """``study.evaluate_methods`` opens one engine per method from its path (vLLM where installed)."""
    from clinical_r1 import generate, study

    opened = []

    class Engine:
        name = "vllm"

        def close(self):
            opened.append("closed")

    monkeypatch.setattr(generate, "open_engine", lambda ref, **kw: opened.append(ref) or Engine())
    monkeypatch.setattr(generate, "generate", lambda model, *a, **k: opened.append(type(model).__name__))
    monkeypatch.setattr(study, "eval_sets", lambda d: {})
    assert study.evaluate_methods({"m": {"model": "some/model", "prompt": "cot"}}, tmp_path, tmp_path,
                                  base_model="b") == []
    assert opened == ["some/model", "closed"]


def test_evaluation_limit_and_dtype_reach_generation(monkeypatch, tmp_path):
    """A method's ``dtype`` reaches its engine, and ``limit`` cuts every evaluation set to its first questions."""
    from clinical_r1 import generate, study
    from clinical_r1.errors import UsageError

    seen = []

    class Stop(Exception):
        pass

    def fake_generate_sets(model, tok, jobs, *a, **k):
        seen.append([r["id"] for ds, _, _ in jobs for r in ds])
        raise Stop

    monkeypatch.setattr(generate, "open_engine", lambda ref, **kw: seen.append(kw["dtype"]))
    monkeypatch.setattr(generate, "generate_sets", fake_generate_sets)
    rows = [{"id": f"q{i}", "question": "?", "options": ["a", "b"], "answer": "A"} for i in range(5)]
    monkeypatch.setattr(study, "eval_sets", lambda d: {"set": rows})
    with pytest.raises(Stop):
        study.evaluate_methods({"m": {"model": "some/model", "prompt": "cot", "dtype": "bfloat16"}}, tmp_path,
                               tmp_path, base_model="b", limit=2)
    assert seen == ["bfloat16", ["q0", "q1"]]
    with pytest.raises(UsageError, match="eval_limit=0"):
        study.evaluate_methods({"m": {"model": "some/model", "prompt": "cot"}}, tmp_path, tmp_path, base_model="b",
                               limit=0)


# ---------------------------------------------------------------------------------------------------
# The GPU benchmark's recipe and the GPU smoke command
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import crpo_step_gpu

    return crpo_step_gpu


def _spec(tmp_path, **kw):
    return {"model_ref": "embedded:smollm2-135m-instruct", "steps": 3, "prompts_per_step": None,
            "max_completion_length": None, "no_repeat": False, "max_prompt_length": 1024, "load_in_4bit": False,
            "vllm_memory": 0.35, "config": None, "smoke": True, "runs_dir": str(tmp_path), "G": 5, **kw}


def test_benchmark_variants_share_batch_shape_optimiser_and_dtype(bench, tmp_path):
    for config in (None, str(REPO / "configs/t4_16gb_crpo.yaml"), str(REPO / "configs/paper_3b_crpo.yaml")):
        recipes = {v: bench.bench_recipe(_spec(tmp_path, variant=v, config=config)) for v in bench.VARIANTS}
        shared = [{k: r["trainer"].get(k) for k in bench.PINNED} | {"dtype": r["model"]["dtype"]} for r in recipes.values()]
        assert all(s == shared[0] for s in shared), config
        assert all(r["trainer"]["optim"] and r["trainer"]["weight_decay"] is not None for r in recipes.values())
        assert recipes["unsloth"]["model"]["backend"] == "unsloth" and recipes["trl"]["model"]["backend"] == "transformers"
    paper = bench.bench_recipe(_spec(tmp_path, variant="trl", config=str(REPO / "configs/paper_3b_crpo.yaml"), G=None))
    raw = __import__("yaml").safe_load((REPO / "configs/paper_3b_crpo.yaml").read_text())["trainer"]
    for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "optim", "weight_decay"):
        assert paper["trainer"][k] == raw[k], k  # the recipe's own shape and optimiser


def test_benchmark_vllm_variant_keeps_a_16bit_base(bench, tmp_path):
    """TRL's colocated vLLM cannot take a 4-bit transformers policy (config validation refuses it)."""
    from clinical_r1.config import load_config

    for spec in ({"config": str(REPO / "configs/t4_16gb_crpo.yaml")}, {"load_in_4bit": True}):
        recipes = {v: bench.bench_recipe(_spec(tmp_path, variant=v, smoke=False, **spec)) for v in ("trl", "vllm")}
        assert recipes["trl"]["model"]["load_in_4bit"] is True and recipes["vllm"]["model"]["load_in_4bit"] is False
        load_config(recipes["vllm"], stage="crpo")


def test_benchmark_fills_the_papers_generation_batch(bench, tmp_path):
    from clinical_r1.config import load_config, trainer_args
    from clinical_r1.data import load_benchmark

    cfg = bench.bench_recipe(_spec(tmp_path, variant="trl", config=str(REPO / "configs/paper_3b_crpo.yaml"), G=None))
    need = bench.questions_needed(trainer_args(load_config(cfg, stage="crpo"), cpu_safe=True), steps=3)
    assert need["per_generation"] == 512  # 2,560 completions per rollout / G 5
    sample = load_benchmark("sample")
    ds = bench.fill_questions(sample, need["needed"], repeat=True)
    assert len(ds) >= need["needed"] and len(set(ds["id"])) == len(ds)
    with pytest.raises(SystemExit, match="draws 512 prompts"):
        bench.fill_questions(sample, need["needed"], repeat=False)


def test_gpu_smoke_refuses_without_cuda():
    proc = subprocess.run([PY, "benchmarks/gpu_smoke.py"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and "nothing was run" in proc.stderr


def test_gpu_smoke_steps_are_valid_recipes(tmp_path):
    """Every training step of the smoke builds its TRL config with the installed TRL (``--dry-run``)."""
    proc = subprocess.run([PY, "benchmarks/gpu_smoke.py", "--dry-run", "--work-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [line.split(":")[0] for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert names == ["sft", "crpo-transformers", "crpo-unsloth", "crpo-vllm", "crpo-unsloth-vllm", "eval", "score",
                     "merge"]
    assert [n for n in names if f"{n}: " in proc.stdout and proc.stdout.split(f"{n}: ", 1)[1].split("\n")[0].endswith(
        "[needs vLLM]")] == ["crpo-vllm", "crpo-unsloth-vllm"]
    assert proc.stdout.count("    ok: ") == 5


def test_gpu_memory_is_counted_per_process_tree(bench, monkeypatch):
    """NVML usage of this process and its children counts; another process on the same GPU does not."""
    import time
    import types

    import _common

    child = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(50):  # the child appears in /proc/<pid>/task/*/children once it runs
            if child.pid in _common.process_tree(os.getpid()):
                break
            time.sleep(0.1)
        assert child.pid in _common.process_tree(os.getpid())
        usage = [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * 10**9),
                 types.SimpleNamespace(pid=child.pid, usedGpuMemory=2 * 10**9),
                 types.SimpleNamespace(pid=1, usedGpuMemory=50 * 10**9)]  # someone else's process
        nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
                                     nvmlDeviceGetHandleByIndex=lambda i: i,
                                     nvmlDeviceGetComputeRunningProcesses=lambda h: usage)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        with _common.PeakGpuMemory(interval=0.01) as mem:
            time.sleep(0.05)
        assert mem.record() == {"peak_gpu_memory_gb": 5.0, "gpu_memory_scope": "process"}
    finally:
        child.kill()
        child.wait()
