"""A stop request: how `rmft-api cancel` reaches the process working on a run.

`cancel` writes `<run>/stop.json` atomically (who asked, when). The running pipeline checks for
it before every paid request (rollouts, evaluations, the grid: `Ledger.admit`), between polls of
a fine-tuning job and between phases; on seeing it, it cancels the live job, marks the run
`stopped` and removes the file. A request older than the lock of the process that finds it (left
by a process that died before honouring it) is stale: `--resume` removes it and continues.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime

from rmft_api.errors import StateError, StopRequested
from rmft_api.schema import SCHEMA_VERSION, Record
from rmft_api.store import RunPaths, read_json, write_json_atomic

STOP_MESSAGE = "cancelled by the user (rmft-api cancel); `rmft-api run --resume` continues it"


class StopRequest(Record):
    schema_version: int = SCHEMA_VERSION
    requested_at: float  # time.time()
    requested_at_utc: str
    pid: int  # of the `rmft-api cancel` that asked
    host: str


def request_stop(run: RunPaths) -> StopRequest:
    """Ask the process holding the run to stop (atomic write; a second request replaces it)."""
    now = time.time()
    request = StopRequest(
        requested_at=now,
        requested_at_utc=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    write_json_atomic(run.stop_request, request)
    return request


def pending_stop(run: RunPaths) -> StopRequest | None:
    if not run.stop_request.is_file():
        return None
    try:
        return read_json(run.stop_request, StopRequest)
    except StateError:
        if not run.stop_request.is_file():
            return None  # honoured (removed) meanwhile
        # Unreadable, but it was still written to ask for a stop.
        return StopRequest(requested_at=time.time(), requested_at_utc="", pid=0, host="")


def clear_stop(run: RunPaths) -> None:
    run.stop_request.unlink(missing_ok=True)


class StopGate:
    """The running pipeline's view of stop requests made after it took the run lock."""

    def __init__(self, run: RunPaths, *, since: float) -> None:
        self.run = run
        self.since = since
        request = pending_stop(run)
        if request is not None and request.requested_at < since:
            clear_stop(run)  # stale: its process died before honouring it

    def requested(self) -> bool:
        return self.run.stop_request.is_file()

    def check(self) -> None:
        """Raise StopRequested when a stop was asked for."""
        if self.requested():
            raise StopRequested(f"run {self.run.run_id} {STOP_MESSAGE}")
