"""What a result or a run folder records about itself: where it came from, when, and how far its run got.

    from clinical_r1.records import provenance, utc_now, read_status, STATUS_FILE
    write_json({"accuracy": 0.5, "created": utc_now(), "provenance": provenance()}, "results/x/medqa.metrics.json")
    status = read_status(Path("results/demo") / STATUS_FILE)      # {} before the first stage ran

- :func:`provenance`: the one record of where a result came from (commit, dirty tree, library versions, device),
  used by run folders, evaluation results, the pipeline status and the benchmarks. The device part is
  :func:`clinical_r1.models.device_info`, which knows torch; importing this module imports no torch.
- :func:`utc_now` and :func:`repo_relative`: the timestamps and paths a record holds.
- ``pipeline.json`` (:data:`STATUS_FILE`, a recipe or grid run's stages) and ``done.json`` (:data:`DONE_FILE`, a
  finished grid run): written by :mod:`clinical_r1.pipeline` and :mod:`clinical_r1.grid`, read by them and by
  :mod:`clinical_r1.summary` through :func:`read_status`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from clinical_r1.errors import DataError
from clinical_r1.files import REPO_ROOT
from clinical_r1.models import device_info

STATUS_FILE = "pipeline.json"
DONE_FILE = "done.json"
# the libraries whose versions a result records
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth_zoo", "vllm",
             "papermill", "numpy", "bitsandbytes", "triton", "deepspeed", "clinical-r1")


def git_state(repo: str | os.PathLike = REPO_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty"}``: HEAD and whether tracked files differ from it (``None`` outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def provenance(repo: str | os.PathLike = REPO_ROOT) -> dict[str, Any]:
    """Where a result came from, one schema everywhere: ``commit``, ``dirty``, ``versions``, ``device``."""
    return {**git_state(repo), "versions": library_versions(), "device": device_info()}


def utc_now() -> str:
    """Now in UTC, to the second (ISO 8601): every ``created``, ``started`` and ``finished`` a record holds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository (POSIX form) when it is absolute and lies inside it, else as given: paths
    in records and committed results carry no machine's folders (a model name such as ``embedded:smollm2-135m`` or
    a relative path is left as it is, whatever the working directory)."""
    if not os.path.isabs(os.fspath(path)):
        return os.fspath(path)
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def read_status(path: Path) -> dict[str, Any]:
    """A status file (``pipeline.json``, ``done.json``); ``{}`` when it does not exist yet."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"status file is not valid JSON ({e}); delete it to start over", file=path) from None
