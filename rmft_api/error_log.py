"""Unexpected errors: one line for the user, the scrubbed traceback in the run's error.log.

An `RmftError` is expected and says what to do in one line. Anything else is a bug or a failure
nobody anticipated: its traceback goes to `<run>/error.log` (appended, scrubbed of credentials;
a temporary file when no run directory is known), and the user sees one line naming that file.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import traceback
from pathlib import Path

from rmft_api.credentials import scrub

ERROR_LOG = "error.log"
_MAX_LINE = 300
_LOGGED_AT = "_rmft_error_log"  # attribute set on an exception once its traceback is written


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, scrubbed and cut to a line's length."""
    text = str(exc).strip().splitlines()
    head = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    head = scrub(head)
    return head if len(head) <= _MAX_LINE else head[: _MAX_LINE - 1] + "…"


def write_error_log(exc: BaseException, run_dir: str | Path | None) -> Path:
    """Append `exc`'s scrubbed traceback to `run_dir`/error.log (once per exception); the path.

    Falls back to a file in the temporary directory when there is no run directory or it cannot
    be written.
    """
    logged = getattr(exc, _LOGGED_AT, None)
    if isinstance(logged, Path):
        return logged
    from rmft_api import __version__

    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    command = scrub(" ".join(["rmft-api", *sys.argv[1:]]))
    body = scrub("".join(traceback.format_exception(exc)))
    text = f"=== {when} rmft-api {__version__} (pid {os.getpid()}): {command}\n{body}\n"
    candidates = [Path(run_dir) / ERROR_LOG] if run_dir is not None else []
    candidates.append(Path(tempfile.gettempdir()) / f"rmft-api-error-{os.getpid()}.log")
    for path in candidates:
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(text)
        except OSError:
            continue
        setattr(exc, _LOGGED_AT, path)
        return path
    raise OSError(f"cannot write the error log to {candidates[-1]}")


class WorkingRun:
    """The run directory the current command works on, for the top-level handler."""

    directory: Path | None = None

    @classmethod
    def set(cls, directory: str | Path) -> None:
        cls.directory = Path(directory)
