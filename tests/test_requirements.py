"""The pinned GPU stacks hold together: every pin in requirements-gpu.txt (CUDA 13) and requirements-gpu-cu12.txt
(CUDA 12) satisfies the ranges its neighbours declare. Offline: the ranges are recorded below from the packages' own
metadata (``pip install --dry-run --report`` of each file for CPython 3.11 and 3.12 on manylinux x86_64, PyPI only;
``python -m clinical_r1 gpu-stack resolve`` re-measures; README, "Which GPU stack"). Re-record them when a pin moves.
"""

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "requirements-gpu.txt"
CU12 = REPO / "requirements-gpu-cu12.txt"
DEV = REPO / "requirements-gpu-dev.txt"
CPU = REPO / "requirements.txt"

# What each pinned release declares about its neighbours (Requires-Dist; TRL's vLLM range is its `vllm` extra).
DECLARED: dict[tuple[str, str], dict[str, str]] = {
    ("unsloth", "2026.10.9"): {
        "trl": "!=0.19.0,<=1.15.0,>=0.18.2",
        "transformers": "!=4.53.0,!=4.54.0,!=4.55.0,!=4.55.1,!=4.57.0,!=4.57.4,!=4.57.5,!=5.0.0,!=5.1.0,<=5.17.0,>=4.52.4",
        "datasets": "!=4.0.*,!=4.1.0,!=4.4.*,!=4.5.0,<5.0.0,>=3.4.1",
        "torch": "<2.15.0,>=2.4.0",
        "peft": "!=0.11.0,>=0.18.0",
        "accelerate": ">=0.34.1",
        "bitsandbytes": "!=0.46.0,!=0.48.0,>=0.45.5",
    },
    ("unsloth-zoo", "2026.10.9"): {
        "trl": "!=0.19.0,<=1.15.0,>=0.18.2",
        "transformers": "!=4.53.0,!=4.54.0,!=4.55.0,!=4.55.1,!=4.57.4,!=4.57.5,!=5.0.0,!=5.1.0,<=5.17.0,>=4.52.4",
        "datasets": "!=4.0.*,!=4.1.0,!=4.4.*,!=4.5.0,<5.0.0,>=3.4.1",
        "torch": "<2.15.0,>=2.4.0",
    },
    ("trl", "1.15.0"): {
        "vllm": "<=0.31.0,>=0.21.0",  # extra "vllm": the vLLM releases TRL 1.15 supports
        "transformers": ">=4.56.2",
        "accelerate": ">=1.4.0",
        "datasets": ">=4.7.0",
        "peft": ">=0.13.0",
    },
    ("vllm", "0.31.0"): {
        "torch": "==2.13.0",
        "transformers": "<5.18.0,>=5.10.4",
    },
    ("peft", "0.21.2"): {"torch": ">=1.13.0", "accelerate": ">=0.21.0"},
    ("xformers", "0.0.35"): {"torch": ">=2.10"},
    ("bitsandbytes", "0.50.2"): {"torch": "<3,>=2.4"},
}
# The CUDA major of each torch release as PyPI serves it for manylinux x86_64 (its nvidia-*-cuNN / nvidia-cuda-runtime
# dependencies in the dry-run report): torch 2.11 is the first with CUDA 13 wheels.
TORCH_CUDA_ON_PYPI = {"2.10.0": 12, "2.11.0": 13, "2.13.0": 13}
# Requires-Python of the pins that bind it: TRL 1.15 (and 1.16, the CPU stack) need Python >= 3.11, so
# requirements-gpu.txt does not resolve for CPython 3.10 (measured: "No matching distribution found for trl==1.15.0").
REQUIRES_PYTHON = {"trl": ">=3.11", "vllm": "<3.15,>=3.10", "unsloth": "<3.15,>=3.9", "transformers": ">=3.10.0"}
DEV_ONLY = {"jupyterlab", "ipykernel", "papermill", "pytest", "hypothesis", "notebook", "jupyter-client"}


def parse(path: Path) -> dict[str, Requirement]:
    """Requirements of a file by canonical name, following ``-r`` includes; comments and blank lines skipped."""
    out: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out.update(parse(path.parent / line[3:].strip()))
            continue
        req = Requirement(line)
        out[canonicalize_name(req.name)] = req
    return out


def pinned(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def conflicts(reqs: dict[str, Requirement]) -> list[str]:
    """Each (declaring package, dependency) where the file's pin lies outside the recorded declared range."""
    bad = []
    for (name, version), ranges in DECLARED.items():
        if name not in reqs or pinned(reqs[name]) != version:
            continue
        for dep, spec in ranges.items():
            dep = canonicalize_name(dep)
            v = pinned(reqs[dep]) if dep in reqs else None
            if v is not None and v not in SpecifierSet(spec):
                bad.append(f"{name}=={version} declares {dep}{spec}, the file pins {dep}=={v}")
    return bad


def test_runtime_pins_fit_what_each_pinned_release_declares():
    reqs = parse(RUNTIME)
    for name in ("unsloth", "unsloth-zoo", "trl", "transformers", "vllm", "torch", "peft", "datasets"):
        assert pinned(reqs[name]), f"{name} must be pinned exactly in {RUNTIME.name}"
        assert (name, pinned(reqs[name])) in DECLARED or name in ("transformers", "torch", "datasets"), \
            f"{name}=={pinned(reqs[name])}: record its declared ranges in DECLARED (see the module docstring)"
    assert conflicts(reqs) == []


def test_cu12_pins_fit_what_each_pinned_release_declares_and_torch_is_a_cuda_12_build():
    reqs = parse(CU12)
    for name in ("unsloth", "unsloth-zoo", "trl", "transformers", "torch", "peft", "datasets", "xformers", "bitsandbytes"):
        assert pinned(reqs[name]), f"{name} must be pinned exactly in {CU12.name}"
    assert conflicts(reqs) == []
    assert TORCH_CUDA_ON_PYPI[pinned(reqs["torch"])] == 12 and TORCH_CUDA_ON_PYPI[pinned(parse(RUNTIME)["torch"])] == 13
    assert "vllm" not in reqs  # none in TRL 1.15's range resolves with a CUDA 12 torch from PyPI (measured)


def test_the_two_stacks_differ_only_in_torch_vllm_and_xformers():
    cu13, cu12 = parse(RUNTIME), parse(CU12)
    differ = {n for n in set(cu13) | set(cu12) if str(cu13.get(n, "")) != str(cu12.get(n, ""))}
    assert differ == {"torch", "vllm", "xformers"}


@pytest.mark.parametrize("dep,bad_version", [("torch", "2.3.0"), ("transformers", "5.18.0"), ("trl", "1.16.0")])
def test_the_check_catches_a_cu12_pin_outside_a_declared_range(dep, bad_version):
    reqs = parse(CU12)
    reqs[dep] = Requirement(f"{dep}=={bad_version}")
    assert any(dep in c for c in conflicts(reqs))


def test_vllm_sits_inside_trls_supported_range():
    reqs = parse(RUNTIME)
    trl, vllm = pinned(reqs["trl"]), pinned(reqs["vllm"])
    assert vllm in SpecifierSet(DECLARED[("trl", trl)]["vllm"])
    assert pinned(reqs["torch"]) in SpecifierSet(DECLARED[("vllm", vllm)]["torch"])


@pytest.mark.parametrize("dep,bad_version", [("vllm", "0.33.0"), ("trl", "1.16.0"), ("transformers", "5.18.0"),
                                             ("torch", "2.14.0"), ("datasets", "5.0.0")])
def test_the_check_catches_a_pin_outside_a_declared_range(dep, bad_version):
    reqs = parse(RUNTIME)
    reqs[dep] = Requirement(f"{dep}=={bad_version}")
    if dep == "trl":  # a moved TRL pin is unknown to DECLARED; Unsloth's cap still catches it
        assert any(c.startswith("unsloth==") and "trl" in c for c in conflicts(reqs))
    else:
        assert any(f"{dep}=={bad_version}" in c for c in conflicts(reqs))


def test_runtime_leaves_the_notebook_server_alone_and_dev_adds_it():
    runtime, dev = parse(RUNTIME), parse(DEV)
    for f in (RUNTIME, CU12):
        assert not DEV_ONLY & set(parse(f)), f"{f.name} must not install {sorted(DEV_ONLY & set(parse(f)))}"
    assert {"papermill", "ipykernel", "jupyterlab", "pytest"} <= set(dev)
    assert "-r requirements-gpu.txt" in DEV.read_text()
    assert {k: str(v.specifier) for k, v in runtime.items()} == {k: str(dev[k].specifier) for k in runtime}


def test_gpu_and_cpu_stacks_share_torch_transformers_and_the_libraries_between():
    """The CPU stack (tests, demo) differs from the GPU one only where Unsloth forces it (TRL 1.15 vs 1.16)."""
    gpu, cpu = parse(RUNTIME), parse(CPU)
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "gguf"):
        assert pinned(gpu[name]) == pinned(cpu[name]), name
    assert "unsloth" not in cpu and "vllm" not in cpu  # CUDA-only packages stay out of the CPU stack


def test_python_floor_matches_what_the_pins_require():
    import tomllib

    floor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    for py in ("3.10", "3.11", "3.12"):
        ok_pins = all(py + ".0" in SpecifierSet(s) for s in REQUIRES_PYTHON.values())
        assert (py + ".0" in SpecifierSet(floor)) == ok_pins, (py, floor)
