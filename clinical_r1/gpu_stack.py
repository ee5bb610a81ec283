"""Which GPU stack this machine can run, chosen from the NVIDIA driver and the GPU before torch is imported.

    python -m clinical_r1 gpu-stack                       # print the choice for this machine and why; install nothing
    python -m clinical_r1 gpu-stack resolve --python 3.12 # re-measure both files against PyPI (pip --dry-run, network)

    from clinical_r1.gpu_stack import install             # the notebooks' first cell (Colab / Kaggle)
    stack = install(home)                                 # choose, print why, pip install that file once

Two stacks, one requirements file each (a driver version cannot be an environment marker):

- ``cu13`` (``requirements-gpu.txt``): torch 2.13 with CUDA 13.0 wheels and vLLM 0.31; needs driver >= 580 and
  compute capability >= 7.5 (CUDA 13 dropped Volta and older).
- ``cu12`` (``requirements-gpu-cu12.txt``): torch 2.10 with CUDA 12.8 wheels, no vLLM (none in TRL 1.15's range
  resolves with a CUDA 12 torch on PyPI); needs driver >= 525 (CUDA 12.x minor-version compatibility) and compute
  capability >= 7.0 (PyTorch's CUDA 12.8 wheels dropped Maxwell and Pascal).

The first stack the machine satisfies wins. A GPU that neither supports (a P100, compute capability 6.0) stops with
one line saying to pick a T4. This module imports only the standard library: it runs in a fresh Colab kernel
before anything is installed, and importing torch there would pin that kernel to the preinstalled torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from clinical_r1.errors import ClinicalR1Error

REPO_ROOT = Path(__file__).resolve().parents[1]
QUERY = ["nvidia-smi", "--query-gpu=driver_version,compute_cap,name", "--format=csv,noheader"]
STAMP = ".clinical_r1_installed"  # under the clone: the installed file's name and sha256
CONSTRAINTS = ".clinical_r1_keep_torch.txt"  # under the clone: torch==<the preinstalled one>, passed to pip as -c
PICK_A_T4 = "Colab: Runtime > Change runtime type > T4 GPU; Kaggle: Settings > Accelerator > GPU T4 x2"


class GpuStackError(ClinicalR1Error, RuntimeError):
    """No GPU, or no stack this driver and GPU can run; the message says what to click."""


@dataclass(frozen=True)
class Stack:
    """One tested install: its requirements file and what the machine needs to run it."""

    name: str
    requirements: str  # file name at the repository root
    cuda: str  # the CUDA version of its torch wheels (from their nvidia-* dependencies)
    min_driver: int  # NVIDIA driver major version
    min_capability: tuple[int, int]  # lowest compute capability its torch wheels carry kernels for

    def pins(self, root: Path = REPO_ROOT) -> dict[str, str]:
        """``name -> version`` of the exactly pinned (``==``) packages in its requirements file."""
        out = {}
        for line in (root / self.requirements).read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
            if m:
                out[m.group(1).lower().replace("_", "-")] = m.group(2)
        return out


# In order of preference. Evidence for every number: README, "Which GPU stack".
STACKS: tuple[Stack, ...] = (
    Stack("cu13", "requirements-gpu.txt", cuda="13.0", min_driver=580, min_capability=(7, 5)),
    Stack("cu12", "requirements-gpu-cu12.txt", cuda="12.8", min_driver=525, min_capability=(7, 0)),
)


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str  # e.g. "550.54.15"
    capability: tuple[int, int]

    @property
    def driver_major(self) -> int:
        return int(self.driver.split(".")[0])


# ---------------------------------------------------------------------------------------------------
# Asking the driver
# ---------------------------------------------------------------------------------------------------


def parse_gpus(text: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=driver_version,compute_cap,name --format=csv,noheader`` lines -> GPUs."""
    gpus = []
    for line in filter(None, (x.strip() for x in text.splitlines())):
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) != 3 or not re.fullmatch(r"\d+(\.\d+)*", parts[0]) or not re.fullmatch(r"\d+\.\d+", parts[1]):
            raise GpuStackError(f"cannot read nvidia-smi's line {line!r} (expected: driver, compute capability, name)")
        major, minor = parts[1].split(".")
        gpus.append(Gpu(name=parts[2], driver=parts[0], capability=(int(major), int(minor))))
    return gpus


def query_gpus(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[Gpu]:
    """The machine's GPUs as the driver reports them; :class:`GpuStackError` when there is none."""
    no_gpu = f"No CUDA GPU is visible (nvidia-smi lists none). {PICK_A_T4}. Then run this cell again."
    if not shutil.which(QUERY[0]):
        raise GpuStackError(no_gpu)
    proc = run(QUERY, capture_output=True, text=True)
    if proc.returncode != 0 and "compute_cap" in (proc.stdout + proc.stderr):
        raise GpuStackError("This NVIDIA driver is too old to report compute capability (nvidia-smi has no "
                            f"compute_cap field before driver 510); no stack runs on it. {PICK_A_T4}.")
    gpus = parse_gpus(proc.stdout) if proc.returncode == 0 else []
    if not gpus:
        raise GpuStackError(no_gpu)
    return gpus


# ---------------------------------------------------------------------------------------------------
# Choosing
# ---------------------------------------------------------------------------------------------------


def supports(stack: Stack, gpus: Sequence[Gpu]) -> bool:
    return all(g.driver_major >= stack.min_driver and g.capability >= stack.min_capability for g in gpus)


def choose(gpus: Sequence[Gpu], stacks: Sequence[Stack] = STACKS) -> tuple[Stack, str]:
    """The first stack every GPU can run and a sentence saying why; :class:`GpuStackError` (one line) otherwise."""
    gpu = min(gpus, key=lambda g: (g.capability, g.driver_major))  # the most limiting one decides
    cap = "{}.{}".format(*gpu.capability)
    for i, stack in enumerate(stacks):
        if supports(stack, gpus):
            why = (f"driver {gpu.driver} >= {stack.min_driver} and compute capability {cap} >= "
                   f"{stack.min_capability[0]}.{stack.min_capability[1]}")
            skipped = [f"not {s.name}: " + ("driver < " + str(s.min_driver) if gpu.driver_major < s.min_driver
                                            else f"compute capability < {s.min_capability[0]}.{s.min_capability[1]}")
                       for s in stacks[:i]]
            return stack, "; ".join([why, *skipped])
    lowest = min(s.min_capability for s in stacks)
    if gpu.capability < lowest:
        raise GpuStackError(f"{gpu.name} (compute capability {cap}) is older than any GPU stack supports (PyTorch's "
                            f"CUDA 12.8 and 13 wheels start at {lowest[0]}.{lowest[1]}): pick a T4 instead. {PICK_A_T4}.")
    oldest = min(s.min_driver for s in stacks)
    raise GpuStackError(f"NVIDIA driver {gpu.driver} on {gpu.name} is older than any GPU stack needs (>= {oldest}): "
                        f"pick another GPU runtime. {PICK_A_T4}.")


def describe(stack: Stack, gpus: Sequence[Gpu], why: str, root: Path = REPO_ROOT) -> str:
    pins = stack.pins(root)
    vllm = f"vLLM {pins['vllm']}" if "vllm" in pins else "no vLLM (generation through Unsloth / transformers)"
    names = ", ".join(sorted({g.name for g in gpus}))
    return (f"GPU stack {stack.name} ({stack.requirements}: torch {pins.get('torch')}, CUDA {stack.cuda}, {vllm}) "
            f"for {len(gpus)} x {names}, driver {gpus[0].driver}: {why}")


# ---------------------------------------------------------------------------------------------------
# The preinstalled torch, read from its metadata (never imported)
# ---------------------------------------------------------------------------------------------------


def cuda_major(version: str, requires: Sequence[str] = ()) -> int | None:
    """CUDA major of a torch build: its local tag (``2.10.0+cu128`` -> 12), else its ``nvidia-*-cuNN`` /
    ``nvidia-cuda-runtime==NN.*`` dependencies (PyPI wheels carry no tag); ``None`` for a CPU build or unknown."""
    tag = version.partition("+")[2]
    if tag:
        m = re.fullmatch(r"cu(\d+?)(\d)", tag)
        return int(m.group(1)) if m else None
    majors = set()
    for r in requires:
        name = re.match(r"\s*([A-Za-z0-9_.\-]+)", r)
        if not name or not name.group(1).lower().startswith("nvidia-"):
            continue
        m = re.search(r"-cu(\d+)$", name.group(1).lower())
        if m:
            majors.add(int(m.group(1)))
        elif name.group(1).lower() == "nvidia-cuda-runtime" and (v := re.search(r"==\s*(\d+)\.", r)):
            majors.add(int(v.group(1)))
    return max(majors) if majors else None


def installed_torch() -> tuple[str, int | None] | None:
    """(version, CUDA major) of the torch installed in this interpreter, or ``None``; torch is not imported."""
    try:
        dist = importlib.metadata.distribution("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist.version, cuda_major(dist.version, dist.requires or [])


def keeps_torch(stack: Stack, torch: tuple[str, int | None] | None, root: Path = REPO_ROOT) -> bool:
    """Whether a preinstalled torch already is the stack's: the pinned release, built for the stack's CUDA major."""
    if torch is None:
        return False
    version, major = torch
    return version.partition("+")[0] == stack.pins(root).get("torch") and major == int(stack.cuda.split(".")[0])


def vllm_installed() -> bool:
    """vLLM importable here (without importing it: the CUDA 12 stack has none)."""
    return importlib.util.find_spec("vllm") is not None


# ---------------------------------------------------------------------------------------------------
# Installing
# ---------------------------------------------------------------------------------------------------


def install(home: str | os.PathLike, pip: Sequence[str] | None = None,
            run: Callable[..., subprocess.CompletedProcess] = subprocess.run, out: Callable[[str], None] = print,
            torch: tuple[str, int | None] | None | str = "installed") -> Stack:
    """Choose the stack for this machine, print the choice and why, and ``pip install`` its file and the package
    from the clone at ``home``, once per content of that file (a stamp under ``home``).

    A preinstalled torch that already is the stack's (same release, same CUDA major) is kept: it goes to pip as a
    constraint, so nothing replaces it and the kernel needs no restart for torch. ``pip``: the pip command
    (default this interpreter's; the environment variable ``CLINICAL_R1_PIP`` replaces it, for tests).
    """
    home = Path(home)
    gpus = query_gpus(run)
    stack, why = choose(gpus)
    out(describe(stack, gpus, why, home))
    req = home / stack.requirements
    want = f"{stack.requirements} {hashlib.sha256(req.read_bytes()).hexdigest()}"
    stamp = home / STAMP
    if stamp.is_file() and stamp.read_text() == want:
        return stack
    pip = list(pip or os.environ.get("CLINICAL_R1_PIP", "").split() or [sys.executable, "-m", "pip"])
    torch = installed_torch() if torch == "installed" else torch
    args = ["install", "-q", "-r", str(req)]
    if keeps_torch(stack, torch, home):
        (home / CONSTRAINTS).write_text(f"torch=={torch[0]}\n")
        args += ["-c", str(home / CONSTRAINTS)]
        out(f"keeping the preinstalled torch {torch[0]} (it is this stack's torch)")
    elif torch is not None:
        out(f"replacing the preinstalled torch {torch[0]} (CUDA {torch[1] or '?'}) with the stack's torch "
            f"{stack.pins(home).get('torch')} (CUDA {stack.cuda})")
        if torch[0].partition("+")[0] == stack.pins(home).get("torch"):  # same release, other CUDA: pip would keep it
            run([*pip, "install", "-q", "--force-reinstall", "--no-deps", f"torch=={torch[0].partition('+')[0]}"],
                check=True)
    out(f"installing {stack.requirements} (a few minutes, once) ...")
    run([*pip, *args], check=True)
    run([*pip, "install", "-q", "--no-deps", "-e", str(home)], check=True)
    stamp.write_text(want)
    return stack


# ---------------------------------------------------------------------------------------------------
# Re-measuring the files against PyPI (network; not part of the offline tests)
# ---------------------------------------------------------------------------------------------------

PLATFORMS = [f"manylinux_2_{i}_x86_64" for i in range(35, 16, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64",
                                                                      "manylinux1_x86_64"]


def resolve(stack: Stack, python: str, root: Path = REPO_ROOT) -> dict[str, object]:
    """``pip install --dry-run --report`` of the stack's file against PyPI alone, for manylinux x86_64 and
    CPython ``python``: the resolved torch, its CUDA major (from its nvidia-* dependencies) and vLLM."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-",
           "--only-binary=:all:", "--python-version", python, "--isolated", "--index-url", "https://pypi.org/simple",
           *[a for p in PLATFORMS for a in ("--platform", p)], "-r", str(root / stack.requirements)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"stack": stack.name, "python": python, "resolved": False, "error": proc.stderr.strip()[-2000:]}
    dists = {i["metadata"]["name"].lower(): i["metadata"] for i in json.loads(proc.stdout)["install"]}
    torch = dists["torch"]
    return {"stack": stack.name, "python": python, "resolved": True, "packages": len(dists),
            "torch": torch["version"], "torch_cuda_major": cuda_major(torch["version"], torch.get("requires_dist", [])),
            "vllm": dists.get("vllm", {}).get("version"), "transformers": dists["transformers"]["version"],
            "trl": dists["trl"]["version"]}
