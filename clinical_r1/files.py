"""Reading and writing the package's files: atomic writes, JSON/JSONL/YAML (and the checks of a mapping read
from one), sha256.

    from clinical_r1.files import write_json, read_jsonl
    write_json({"accuracy": 0.5}, "results/x/medqa.metrics.json")

Every writer goes through :func:`atomic_path`: the content is written to a temporary file in the same folder,
fsynced, and renamed over the target (``os.replace``), so a crash leaves the old file or none, never half a
file. What a result records about itself (provenance, timestamps, status files) is :mod:`clinical_r1.records`;
this module is the floor everything stands on and imports nothing of the package but its errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from clinical_r1.errors import ClinicalR1Error, DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark (Windows editors) is not data


# ---------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (pandas, matplotlib); renamed over
    ``path`` when the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Write a UTF-8 text file atomically: ``write(f)`` fills the open temporary file."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        write(f)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """One JSON document, indented, non-ASCII kept, anything else (paths, dates) as ``str``."""
    return write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", path)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_yaml(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: yaml.safe_dump(obj, f, sort_keys=False, allow_unicode=True))


def write_csv(df: Any, path: str | os.PathLike, **kw: Any) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given)."""
    kw.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kw)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **kw: Any) -> Path:
    """A matplotlib figure; the format comes from ``path``'s suffix."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."), **kw)
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


class RowError(ClinicalR1Error):
    """One unreadable row of a file (raised and caught inside the readers, which add file and row)."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_name, reason


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row number, parsed JSON object, or a :class:`RowError`) from a .jsonl, .json (a list)
    or .parquet file; a bad JSONL line is yielded as a ``RowError`` so the caller can skip or raise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".parquet":
        import pandas as pd

        yield from enumerate(pd.read_parquet(path).to_dict("records"), start=1)
        return
    data = path.read_bytes()
    data = data[3:] if data.startswith(BOM) else data
    if suffix == ".json" and data.lstrip()[:1] == b"[":
        try:
            rows = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: byte {e.start}: not valid UTF-8") from e
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
        yield from enumerate(rows, start=1)
        return
    for i, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, RowError("bytes", f"not valid UTF-8 at byte {e.start} of the line")
            continue
        try:
            yield i, json.loads(text)
        except json.JSONDecodeError as e:
            yield i, RowError("json", f"invalid JSON ({e.msg} at column {e.colno})")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a JSONL file; a malformed line raises :class:`DataError` naming file and row."""
    rows = []
    for i, obj in iter_rows(path):
        if isinstance(obj, RowError):
            raise DataError(obj.reason, file=path, row=i)
        rows.append(obj)
    return rows


def read_json(path: str | os.PathLike) -> Any:
    """One JSON document; invalid JSON raises :class:`DataError` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"line {e.lineno}: invalid JSON ({e.msg})", file=path) from None


def read_yaml(path: str | os.PathLike, what: str = "YAML file",
              error: type[ClinicalR1Error] = ClinicalR1Error) -> dict[str, Any]:
    """A YAML mapping; a missing file, invalid YAML or a non-mapping raises ``error`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        raise error(f"{p}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{p}: a {what} must be a YAML mapping, got {type(data).__name__}")
    return data


def check_keys(data: Mapping[str, Any], allowed: set[str], where: str,
               error: type[ClinicalR1Error] = ClinicalR1Error) -> None:
    """A mapping read from a file has only ``allowed`` keys; otherwise ``error`` names ``where`` and the extra keys."""
    extra = sorted(set(data) - allowed)
    if extra:
        raise error(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def parameter_mapping(value: Any, where: str, error: type[ClinicalR1Error] = ClinicalR1Error) -> dict[str, Any]:
    """A mapping of parameter names (Python identifiers) to values, ``{}`` for None; otherwise ``error`` names ``where``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{where} must be a mapping of parameter names to values, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise error(f"{where}: parameter names must be Python identifiers, got {bad}")
    return dict(value)


# ---------------------------------------------------------------------------------------------------
# Hashes
# ---------------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    """Sorted keys, non-ASCII kept: the text that :func:`sha256_json` hashes (the API cache's keys since
    its first release, so the form must not change)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def sha256_json(obj: Any) -> str:
    """The sha256 of ``obj``'s canonical JSON: equal objects hash equal whatever their key order."""
    return sha256_text(canonical_json(obj))
