"""Fault injection for the crash tests inside a trainer: `RMFT_KILL_AT=<point>` SIGKILLs this
process at that point, e.g. right after a job create returned and before its id is recorded
(the pipeline's own crash points between phases are `RMFT_KILL_AFTER`, pipeline.py);
`RMFT_HANG_AT=<point>` makes it hang there (a stuck training process)."""

from __future__ import annotations

import os
import signal
import time


def crash_point(point: str) -> None:
    """Die here when RMFT_KILL_AT names this point (tests only; a no-op otherwise)."""
    if os.environ.get("RMFT_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def hang_point(point: str) -> None:
    """Hang here, forever, when RMFT_HANG_AT names this point (tests only; a no-op otherwise)."""
    while os.environ.get("RMFT_HANG_AT") == point:
        time.sleep(3600)
