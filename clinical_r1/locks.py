"""One writer per output: an OS file lock (``fcntl.flock``) beside a run folder or an output file.

    from clinical_r1.locks import exclusive
    with exclusive("results/demo"):             # lock file results/.demo.lock, held until the block ends
        ...                                      # a second process gets OutputBusyError at once

The lock lives in a sibling file ``.<name>.lock`` (so deleting or swapping the output itself never drops
it) that holds the owner's pid, host and start time. The kernel releases a ``flock`` when its process
dies, however it dies, so the lock of a killed run is free at once: the next writer takes it, logging
the dead owner's pid (a stale lock is recovered, never trusted). Within one process the lock is
re-entrant: a stage that locks its output inside a pipeline run that already holds it goes on.
Locks are advisory and local: they guard against two runs on one machine, not against NFS clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

from clinical_r1.errors import ClinicalR1Error

log = logging.getLogger(__name__)

_held: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth) held by this process
_guard = threading.Lock()


class OutputBusyError(ClinicalR1Error, RuntimeError):
    """Another live process owns this output; the message names its pid and the output."""


def lock_path(target: str | os.PathLike) -> Path:
    """``results/demo`` -> ``results/.demo.lock``; ``out/medqa.jsonl`` -> ``out/.medqa.jsonl.lock``."""
    p = Path(target).resolve()
    return p.with_name(f".{p.name}.lock")


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exclusive(target: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold the lock of ``target`` (a folder or a file) for the block; raise :class:`OutputBusyError` at once
    when another process holds it."""
    path = lock_path(target)
    with _guard:
        if path in _held:  # re-entrant within this process
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield path
        finally:
            _release(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        o = _owner(path)
        raise OutputBusyError(
            f"{what} {Path(target)} is in use by pid {o.get('pid', '?')} on {o.get('host', '?')} (since "
            f"{o.get('started', '?')}; lock {path}); wait for it to finish, stop it, or write elsewhere") from None
    previous = _owner(path)
    if previous.get("pid") and previous.get("pid") != os.getpid():
        alive = previous.get("host") == socket.gethostname() and _alive(int(previous["pid"]))
        log.info("%s %s: recovered the lock of pid %s (%s)", what, target, previous["pid"],
                 "still running but no longer holding it" if alive else "not running any more")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
    with _guard:
        _held[path] = (fd, 1)
    try:
        yield path
    finally:
        _release(path)


def _release(path: Path) -> None:
    with _guard:
        fd, depth = _held[path]
        if depth > 1:
            _held[path] = (fd, depth - 1)
            return
        del _held[path]
    os.close(fd)  # closing the descriptor drops the flock; the file stays (removing it would race a new owner)
