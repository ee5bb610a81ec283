"""How every command line of the package ends: exit 0 (done), 1 (the job failed), 2 (a user error).

    from clinical_r1.cli import JobFailed, add_verbose, run_cli
    def main(argv=None) -> int:
        a = parser.parse_args(argv)
        return run_cli(lambda: work(a), verbose=a.verbose)

A user error (a bad recipe value, a missing or wrong file, an output in use, a bad key) prints one line
naming the key or file, redacted, and exits 2; the traceback only with ``-v``. A job that failed as a
whole (every judge request failed, no generation written) raises :class:`JobFailed` and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from clinical_r1.redact import redact

log = logging.getLogger("clinical_r1")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JobFailed(RuntimeError):
    """The command ran but produced nothing usable; the message says how many items failed and where."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The package's error types for bad input, plus the OS errors of a missing or wrong path."""
    from clinical_r1.api import FatalAPIError, MissingAPIKeyError
    from clinical_r1.config import ConfigError
    from clinical_r1.crpo import DatasetError
    from clinical_r1.data import ContaminationError, DataError
    from clinical_r1.evaluate import EvaluationError
    from clinical_r1.generate import GenerationError
    from clinical_r1.locks import OutputBusyError
    from clinical_r1.models import ModelError
    from clinical_r1.pipeline import PipelineError  # its StageError (a notebook failed) is caught first: exit 1
    from clinical_r1.sft import TraceError

    return (ConfigError, DatasetError, DataError, ContaminationError, ModelError, TraceError, GenerationError,
            EvaluationError, OutputBusyError, MissingAPIKeyError, FatalAPIError, PipelineError,
            FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def one_line(e: BaseException) -> str:
    text = " | ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return redact(f"{type(e).__name__}: {text}")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for user errors")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(job: Callable[[], Any], verbose: bool = False) -> int:
    """Run ``job`` and turn its failure into an exit code: 2 for a user error, 1 for a failed job or stage."""
    from clinical_r1.pipeline import StageError

    try:
        job()
    except StageError as e:
        log.error("%s", redact(str(e)), exc_info=verbose)
        return 1
    except JobFailed as e:
        log.error("%s", one_line(e), exc_info=verbose)
        return 1
    except user_errors() as e:
        log.error("%s", one_line(e), exc_info=verbose)
        return 2
    return 0


def exit_with(job: Callable[[], Any], verbose: bool = False) -> None:
    sys.exit(run_cli(job, verbose))


def module_entry(main: Callable[[list[str]], Any]) -> None:
    """The ``python -m clinical_r1.<module>`` entry points: one logging setup, ``-v`` honoured anywhere on
    the line, and the exit codes of :func:`run_cli`."""
    argv = sys.argv[1:]
    verbose = "-v" in argv or "--verbose" in argv
    argv = [x for x in argv if x not in ("-v", "--verbose")]
    setup_logging(verbose)
    sys.exit(run_cli(lambda: main(argv), verbose))
