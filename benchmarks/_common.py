"""Shared by the benchmark scripts: the environment record, the results file, latency summaries, a table.

Every script writes ``benchmarks/results/<name>-<YYYY-MM-DD>.json`` (atomically: a temporary file, then
``os.replace``) holding ``environment()`` (date, CPU, load, command, and the package's provenance record) and its
measurements, and prints a short table. Scripts run as ``python benchmarks/<script>.py`` from the repo root.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict[str, Any] | None:
    """Name, memory and capability of CUDA device 0, or ``None`` without CUDA (torch is imported lazily)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from clinical_r1.models import bf16_supported

    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
            "bf16": bf16_supported(0), "count": torch.cuda.device_count(), "cuda": torch.version.cuda,
            "driver": _nvml_driver()}


def _nvml_driver() -> str | None:
    """The NVIDIA driver version (NVML, package nvidia-ml-py), or ``None`` without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    finally:
        pynvml.nvmlShutdown()


def environment(with_gpu: bool = False) -> dict[str, Any]:
    """Date, CPU, load and command, plus :func:`clinical_r1.records.provenance` (commit, dirty, versions, device):
    what makes a number reproducible."""
    from clinical_r1.records import provenance

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu": _cpu_model(),
        "cpu_usable": usable,
        "torch_threads": _torch_threads(),
        "load_average_1_5_15min": _load_average(),  # other work on the machine slows CPU timings
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "provenance": provenance(REPO_ROOT),
    }
    if with_gpu:
        env["gpu"] = gpu_info()
    return env


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return sys.modules["torch"].get_num_threads()


def result_path(name: str, date: str | None = None, results_dir: Path = RESULTS_DIR) -> Path:
    return results_dir / f"{name}-{date or _dt.date.today().isoformat()}.json"


def write_result(name: str, payload: Mapping[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``<results_dir>/<name>-<date>.json`` atomically; returns the path."""
    from clinical_r1.files import write_json

    return write_json(payload, result_path(name, results_dir=Path(results_dir) if results_dir else RESULTS_DIR))


def latest_result(name: str, results_dir: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest ``<name>-<date>.json`` (by the date in its name), or ``None`` when there is none."""
    files = sorted(Path(results_dir or RESULTS_DIR).glob(f"{name}-????-??-??.json"))
    if not files:
        return None
    return files[-1], json.loads(files[-1].read_text(encoding="utf-8"))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Mean, p50, p95 and max of per-item latencies, in milliseconds."""
    a = np.asarray(seconds, dtype=float) * 1e3
    if a.size == 0:
        raise ValueError("no latencies to summarize")
    return {"n": int(a.size), "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "max_ms": float(a.max())}


def table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width text table (numbers formatted to 4 significant figures)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    return "\n".join(lines)


def process_tree(root: int) -> set[int]:
    """``root`` and every process below it (Linux ``/proc``): vLLM runs its engine in child processes."""
    pids, todo = set(), [root]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the process ended while we looked
                continue
    return pids


class PeakGpuMemory:
    """Peak GPU memory of one process tree, sampled in a thread every ``interval`` seconds.

    ``scope`` says what was measured: ``process`` (NVML's per-process usage, summed over ``root`` and its
    children, on every GPU: what this run holds, whoever else shares the GPU), or ``device`` (used memory of
    device 0 from ``cudaMemGetInfo``, everything on the GPU) when NVML is missing (``pip install nvidia-ml-py``)
    or does not report per-process usage (some containers hide other PID namespaces).
    """

    def __init__(self, root: int | None = None, interval: float = 0.2):
        self.root, self.interval = root or os.getpid(), interval
        self.peak, self.scope = 0, "process"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except (ImportError, OSError) as e:  # no package, or no driver library
            self._nvml, self.scope, self.why_device = None, "device", f"NVML unavailable: {e}"
        except Exception as e:  # pynvml.NVMLError subclasses Exception only
            self._nvml, self.scope, self.why_device = None, "device", f"NVML failed: {e}"

    def sample(self) -> int:
        """Bytes in use now, in this object's scope."""
        if self.scope == "process":
            pids, used, seen = process_tree(self.root), 0, False
            for h in self._handles:
                for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(h):
                    if p.pid in pids and p.usedGpuMemory is not None:
                        used, seen = used + int(p.usedGpuMemory), True
            if seen or not self._cuda_context_exists():
                return used  # 0 until this process touches the GPU
            # CUDA is in use here, but NVML lists nothing for this process tree: device-wide from now on
            self.scope, self.why_device = "device", "NVML lists no usage for this process tree"
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    @staticmethod
    def _cuda_context_exists() -> bool:
        torch = sys.modules.get("torch")
        return bool(torch is not None and torch.cuda.is_initialized())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakGpuMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())
        if self._nvml is not None:
            self._nvml.nvmlShutdown()

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_gpu_memory_gb": self.peak / 1e9, "gpu_memory_scope": self.scope}
        if self.scope == "device":
            out["gpu_memory_scope_reason"] = self.why_device
        return out
