"""The GPU stack chooser (clinical_r1/gpu_stack.py), on CPU: a fake ``nvidia-smi`` on PATH prints what Colab's or
Kaggle's driver would, a stub pip records what it was asked to install, and every case asserts the file chosen.
Plus the vLLM fallback of a ``use_vllm: true`` recipe and of evaluation on the CUDA 12 stack (no vLLM).
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from clinical_r1 import gpu_stack
from clinical_r1.gpu_stack import STACKS, Gpu, GpuStackError, choose, cuda_major, install, parse_gpus

REPO = Path(__file__).resolve().parents[1]
CU13, CU12 = "requirements-gpu.txt", "requirements-gpu-cu12.txt"

# name, compute capability: what `nvidia-smi --query-gpu=...,compute_cap,name` prints for each
GPUS = {"T4": ("Tesla T4", "7.5"), "L4": ("NVIDIA L4", "8.9"), "A100": ("NVIDIA A100-SXM4-40GB", "8.0"),
        "H100": ("NVIDIA H100 80GB HBM3", "9.0"), "P100": ("Tesla P100-PCIE-16GB", "6.0"),
        "V100": ("Tesla V100-SXM2-16GB", "7.0")}
DRIVERS = {"535": "535.104.05", "550": "550.54.15", "565": "565.57.01", "570": "570.172.08", "580": "580.82.07",
           "590": "590.44.01"}
# CUDA 13 needs driver >= 580 and capability >= 7.5; CUDA 12 (minor-version compatibility) >= 525 and >= 7.0.
EXPECTED = {(d, g): (None if g == "P100" else CU13 if int(d) >= 580 and g != "V100" else CU12)
            for d in DRIVERS for g in GPUS}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A clone (the two requirements files and a setup file), a fake nvidia-smi on PATH and a stub pip."""
    home = tmp_path / "clinical-r1"
    home.mkdir()
    for f in (CU13, CU12):
        (home / f).write_text((REPO / f).read_text())
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    smi = bin_ / "nvidia-smi"
    smi.write_text('#!/bin/sh\nprintf "%s\\n" "$FAKE_SMI"\n')
    smi.chmod(0o755)
    log = tmp_path / "pip.log"
    pip = bin_ / "pip"
    pip.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    pip.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")

    class Machine:
        def __init__(self):
            self.home, self.log = home, log

        def gpu(self, *lines: str) -> None:
            monkeypatch.setenv("FAKE_SMI", "\n".join(lines))

        def install(self, torch=None) -> tuple[str, list[list[str]], str]:
            printed = []
            stack = install(home, pip=[str(pip)], out=printed.append, torch=torch)
            calls = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            return stack.requirements, calls, "\n".join(printed)

    return Machine()


def smi_line(driver: str, gpu: str) -> str:
    name, cap = GPUS[gpu]
    return f"{DRIVERS[driver]}, {cap}, {name}"


@pytest.mark.parametrize("driver,gpu", sorted(EXPECTED))
def test_each_driver_and_gpu_gets_its_stack(machine, driver, gpu):
    machine.gpu(smi_line(driver, gpu))
    want = EXPECTED[(driver, gpu)]
    if want is None:
        with pytest.raises(GpuStackError) as e:
            machine.install()
        msg = str(e.value)
        assert "\n" not in msg and "pick a T4" in msg and "compute capability 6.0" in msg and GPUS[gpu][0] in msg
        assert not machine.log.exists()  # nothing installed
        return
    chosen, calls, printed = machine.install()
    assert chosen == want
    assert calls == [["install", "-q", "-r", str(machine.home / want)],
                     ["install", "-q", "--no-deps", "-e", str(machine.home)]]
    stack = next(s for s in STACKS if s.requirements == want)
    assert f"GPU stack {stack.name} ({want}" in printed and DRIVERS[driver] in printed and GPUS[gpu][0] in printed
    assert ("vLLM 0.31.0" in printed) == (want == CU13) and ("no vLLM" in printed) == (want == CU12)


def test_the_choice_says_why(machine):
    machine.gpu(smi_line("550", "T4"))
    _, _, printed = machine.install()
    assert "driver 550.54.15 >= 525 and compute capability 7.5 >= 7.0; not cu13: driver < 580" in printed
    stack, why = choose(parse_gpus(smi_line("580", "V100")))
    assert stack.name == "cu12" and "not cu13: compute capability < 7.5" in why


def test_installs_once_per_file_content_and_again_when_the_stack_changes(machine):
    machine.gpu(smi_line("550", "T4"))
    machine.install()
    _, calls, printed = machine.install()  # a restart: same machine, same file
    assert len(calls) == 2 and "installing" not in printed
    machine.gpu(smi_line("580", "T4"))  # another runtime (a newer driver) with the same clone
    chosen, calls, _ = machine.install()
    assert chosen == CU13 and calls[2] == ["install", "-q", "-r", str(machine.home / CU13)]


@pytest.mark.parametrize("preinstalled,stack_file,kept", [
    (("2.10.0+cu128", 12), CU12, True),    # a CUDA 12.8 torch 2.10 (the PyTorch index's) on a 550 driver
    (("2.10.0", 12), CU12, True),          # PyPI's torch 2.10 (no local tag; nvidia-*-cu12 dependencies)
    (("2.13.0", 13), CU13, True),
    (("2.9.0+cu126", 12), CU12, False),    # another release: pip replaces it
    (("2.13.0+cu129", 12), CU13, False),   # the right release for the other CUDA: reinstalled explicitly
    (("2.10.0+cpu", None), CU12, False),
])
def test_a_preinstalled_torch_is_kept_only_when_it_is_the_stacks(machine, preinstalled, stack_file, kept):
    machine.gpu(smi_line("580" if stack_file == CU13 else "550", "T4"))
    chosen, calls, printed = machine.install(torch=preinstalled)
    assert chosen == stack_file
    main = next(c for c in calls if "-r" in c)
    if kept:
        assert main[-2:] == ["-c", str(machine.home / gpu_stack.CONSTRAINTS)]
        assert (machine.home / gpu_stack.CONSTRAINTS).read_text() == f"torch=={preinstalled[0]}\n"
        assert f"keeping the preinstalled torch {preinstalled[0]}" in printed
    else:
        assert "-c" not in main and f"replacing the preinstalled torch {preinstalled[0]}" in printed
    force = [c for c in calls if "--force-reinstall" in c]
    same_release_other_build = {"2.13.0+cu129": "2.13.0", "2.10.0+cpu": "2.10.0"}  # pip would keep these: forced
    assert force == ([["install", "-q", "--force-reinstall", "--no-deps", f"torch=={same_release_other_build[preinstalled[0]]}"]]
                     if preinstalled[0] in same_release_other_build else [])


def test_several_gpus_the_oldest_decides(machine):
    machine.gpu(smi_line("580", "T4"), smi_line("580", "T4"))  # Kaggle's T4 x2
    assert machine.install()[0] == CU13
    stack, _ = choose(parse_gpus("\n".join([smi_line("580", "H100"), smi_line("580", "V100")])))
    assert stack.name == "cu12"


def test_no_gpu_old_driver_and_unreadable_output(machine, monkeypatch):
    machine.gpu("")
    with pytest.raises(GpuStackError, match="No CUDA GPU is visible"):
        machine.install()
    machine.gpu("470.82.01, 7.5, Tesla T4")
    with pytest.raises(GpuStackError, match=r"driver 470.82.01 on Tesla T4 is older than any GPU stack needs \(>= 525\)"):
        machine.install()
    machine.gpu("Tesla T4, 550.54.15, 15360 MiB")  # the old query's field order
    with pytest.raises(GpuStackError, match="cannot read nvidia-smi's line"):
        machine.install()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GpuStackError, match="No CUDA GPU is visible"):
        gpu_stack.query_gpus()


def test_a_driver_without_compute_cap_is_too_old():
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 2, "", 'Field "compute_cap" is not a valid field to query.')

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpu_stack.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
        with pytest.raises(GpuStackError, match="too old to report compute capability"):
            gpu_stack.query_gpus(run)


def test_cuda_major_from_the_local_tag_or_the_nvidia_dependencies():
    assert cuda_major("2.10.0+cu128") == 12 and cuda_major("2.13.0+cu130") == 13 and cuda_major("2.10.0+cpu") is None
    # torch 2.10.0 and 2.11.0 from PyPI, as their Requires-Dist reads (pip --dry-run --report, measured)
    assert cuda_major("2.10.0", ['nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"',
                                 'nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux"', "filelock"]) == 12
    assert cuda_major("2.11.0", ['nvidia-cuda-runtime==13.0.96; platform_system == "Linux"',
                                 'nvidia-cusparselt-cu13==0.8.0; platform_system == "Linux"', "sympy>=1.13.3"]) == 13
    assert cuda_major("2.13.0", ["filelock", "sympy"]) is None  # a CPU wheel


def test_stacks_match_their_files():
    """The torch each stack's file pins, its vLLM, and the thresholds the README's table states."""
    cu13, cu12 = (s.pins() for s in STACKS)
    assert cu13["torch"] == "2.13.0" and cu13["vllm"] == "0.31.0"
    assert cu12["torch"] == "2.10.0" and "vllm" not in cu12
    readme = (REPO / "README.md").read_text()
    for s in STACKS:
        pins = s.pins()
        row = (f"| >= {s.min_driver} | `{s.name}` (`{s.requirements}`) | {pins['torch']} | {s.cuda} | "
               f"{pins.get('vllm', 'none')} |")
        assert row in readme, row


def test_the_module_never_imports_torch():
    code = ("import sys; import clinical_r1.gpu_stack as g; g.installed_torch(); g.vllm_installed(); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------
# Without vLLM (the CUDA 12 stack): training and evaluation fall back and say so
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("installed", [False, True])
def test_a_use_vllm_recipe_falls_back_without_vllm(monkeypatch, caplog, installed):
    from clinical_r1 import crpo
    from clinical_r1.config import load_config

    monkeypatch.setattr(crpo, "vllm_installed", lambda: installed)
    for recipe in ("configs/t4_16gb_crpo.yaml", "configs/paper_3b_crpo.yaml"):
        cfg = load_config(REPO / recipe, ["trainer.use_vllm=true"], stage="crpo")
        with caplog.at_level(logging.WARNING, logger="clinical_r1"):
            caplog.clear()
            out = crpo.generation_engine(cfg)
        assert out["trainer"]["use_vllm"] is installed
        assert cfg["trainer"]["use_vllm"] is True  # the input config is left as it was
        said = "trainer.use_vllm=true but vLLM is not installed" in caplog.text
        assert said is (not installed)
        if not installed:
            assert "requirements-gpu-cu12.txt" in caplog.text and "Unsloth" in caplog.text


def test_evaluation_says_which_engine_it_opens(monkeypatch, caplog):
    from clinical_r1 import generate

    monkeypatch.setattr(generate, "vllm_available", lambda: False)
    tok = type("Tok", (), {"eos_token_id": 2, "pad_token_id": 0})()
    monkeypatch.setattr(generate, "load_for_inference", lambda m, **kw: (object(), tok))
    with caplog.at_level(logging.INFO, logger="clinical_r1"):
        engine = generate.open_engine("some/model")
    assert engine.name == "transformers" and "vLLM not available" in caplog.text


def test_gpu_smoke_skips_the_vllm_steps_on_a_stack_without_vllm_and_records_the_stack(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_smoke

    steps = gpu_smoke.plan(tmp_path, "m")
    for s in steps:
        s.status = "pass" if s.name == "sft" else s.status
    by_name = {s.name: s for s in steps}
    assert gpu_smoke.ready(by_name["crpo-vllm"], steps, has_vllm=False) == "vLLM is not installed (the CUDA 12 stack has none)"
    assert gpu_smoke.ready(by_name["crpo-unsloth-vllm"], steps, has_vllm=True) is None
    assert gpu_smoke.ready(by_name["crpo-unsloth"], steps, has_vllm=False) is None
    assert "--backend" in by_name["eval"].argv and by_name["eval"].argv[by_name["eval"].argv.index("--backend") + 1] == "auto"
    rec = gpu_smoke.stack_record()  # this CPU venv: torch 2.13.0 without CUDA wheels or vLLM: neither file
    assert rec["torch"].startswith("2.13.0") and rec["vllm"] is None and rec["requirements"] is None
