"""The package's one error base: every error it raises for bad input or a failed job is a ``ClinicalR1Error``.

    from clinical_r1.errors import ClinicalR1Error
    try:
        run_crpo("configs/cpu_demo_crpo.yaml", {"reward.k": -1})
    except ClinicalR1Error as e:
        print(e.file, e.row, e.field, e)      # where, when the error knows it; the message says it too

The command line (:mod:`clinical_r1.cli`) turns a :class:`JobFailed` into exit 1 and any other
``ClinicalR1Error`` into exit 2 with one line naming the file, row and field. Each module keeps its own
subclass (``DataError``, ``ConfigError``, ...), which also derives from the matching built-in type
(``ValueError``, ``RuntimeError``), so ``except ValueError`` still catches a bad value.
"""

from __future__ import annotations

import os
from typing import Any


class ClinicalR1Error(Exception):
    """Bad input or a failed job. ``file``, ``row`` and ``field``, when given, are kept as attributes and
    lead the message: ``ClinicalR1Error("missing field", file="a.jsonl", row=3, field="answer")`` reads
    ``a.jsonl: row 3: field 'answer': missing field``."""

    def __init__(self, message: Any = "", *, file: str | os.PathLike | None = None, row: int | None = None,
                 field: str | None = None):
        self.file = str(file) if file is not None else None
        self.row, self.field = row, field
        where = [self.file] if self.file is not None else []
        where += [f"row {row}"] if row is not None else []
        where += [f"field '{field}'"] if field is not None else []
        super().__init__(": ".join([*where, str(message)]) if where else message)


class JobFailed(ClinicalR1Error, RuntimeError):
    """The command ran but produced nothing usable; the message says how many items failed and where."""


class DataError(ClinicalR1Error, ValueError):
    """A malformed input row or file; the message names the file, the row and the field."""


class ConfigError(ClinicalR1Error, ValueError):
    """A training config that cannot run: unknown key, bad value, inconsistent settings. Here, not in
    :mod:`clinical_r1.config`, because the modules config builds on (monitors) raise it too."""


class UsageError(ClinicalR1Error, ValueError):
    """A bad name, option or setting given by the user: an unknown benchmark, prompt kind or key; exit 2."""


class UnknownName(UsageError, KeyError):
    """An unknown registry name (reward, preset, judge metric, split); also a ``KeyError``."""

    __str__ = Exception.__str__  # the message, without KeyError's quotes
