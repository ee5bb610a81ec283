"""Keep credentials out of messages, logs and result files.

    from clinical_r1.redact import redact, register_secret, redact_file
    register_secret(os.environ["DEEPSEEK_API_KEY"])      # done by clinical_r1.api when it reads a key
    redact("HTTP 401 from http://u:pw@host/v1")         # -> 'HTTP 401 from http://***@host/v1'
    redact_file("results/demo/notebooks/06_judge.ipynb") # rewrite a file in place if it holds a secret

What is removed: the userinfo of any URL (``scheme://user:password@host``), every value registered with
:func:`register_secret` (the API keys this process read, and the values of the usual key variables such
as ``HF_TOKEN``), and token-shaped strings (``sk-…``, ``hf_…``, ``ghp_…``, ``Bearer …``).
:func:`install` (run on ``import clinical_r1``) makes every log record of the process pass through
:func:`redact`, whichever library logs it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

MASK = "[REDACTED]"
# The environment variables that usually hold keys; their values are redacted wherever they appear.
KEY_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "ANTHROPIC_API_KEY",
                 "WANDB_API_KEY", "GITHUB_TOKEN")
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@")
# Every shape but AWS's holds a character base64 lacks (-, _ or a space); AWS's is anchored to word boundaries, or it
# matches inside the base64 of an image in an executed notebook (a run of zero bytes reads ...AAAAKIAAAAAAAAAAAAAAAA...).
TOKEN_SHAPES = re.compile(
    r"sk-[A-Za-z0-9_-]{10,}|sk_(?:live|test)_[A-Za-z0-9]{10,}|hf_[A-Za-z0-9]{10,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|\bAKIA[0-9A-Z]{16}\b|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}")

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every later message, log line and scrubbed file of this process."""
    if value and len(value) >= 6:  # shorter values would mask ordinary words
        with _lock:
            _secrets.add(value)


def register_env(*names: str) -> None:
    """Register the values of these environment variables (and of :data:`KEY_VARIABLES`)."""
    for n in (*KEY_VARIABLES, *names):
        register_secret(os.environ.get(n))


def redact(text: str, *extra: str | None) -> str:
    """``text`` without URL userinfo, registered secrets, ``extra`` values and token-shaped strings."""
    if not text:
        return text
    with _lock:
        values = sorted(_secrets | {e for e in extra if e}, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    text = URL_USERINFO.sub(r"\1***@", text)
    return TOKEN_SHAPES.sub(MASK, text)


def redact_file(path: str | os.PathLike) -> bool:
    """Rewrite a text file (atomically) if :func:`redact` changes it; returns whether it did."""
    from clinical_r1.files import write_text

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    clean = redact(text)
    if clean == text:
        return False
    write_text(clean, p)
    return True


class _Record(logging.LogRecord):
    """A log record whose message is redacted once, when it is made."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            msg = self.getMessage()
        except Exception:  # a malformed %-format: leave it to the handler, which reports it
            return
        clean = redact(msg)
        if clean != msg:
            self.msg, self.args = clean, ()


def install() -> None:
    """Make every log record of the process redacted (idempotent)."""
    register_env()
    if logging.getLogRecordFactory() is not _Record:
        logging.setLogRecordFactory(_Record)
