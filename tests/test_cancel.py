"""`rmft-api cancel` against a live `rmft-api run` (a subprocess, the real SDK over real HTTP to
the sandbox): the run stops before its next paid request, its state says stopped, and a job the
trainer's registry holds but job.json does not is cancelled on the server too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai

from rmft_api.ledger import Ledger, ledger_path
from rmft_api.providers.registry import resolve
from rmft_api.run_state import load_state
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings
from rmft_api.store import RunPaths
from tests.test_openai_path import FAST, KEY, cli, only_run, write_config

CHAT = "/v1/chat/completions"


def start_sandbox(**settings: object) -> SandboxServer:
    server = SandboxServer(SandboxSettings(**settings), resolve("agent/thompson", seed=0))
    server.start()
    return server


def wait_until(check: Callable[[], bool], *, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rmft_api.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": KEY},
    )


def started_run(tmp_path: Path) -> RunPaths:
    runs = tmp_path / "runs"
    wait_until(lambda: runs.is_dir() and any(runs.iterdir()), within_s=60, what="the run dir")
    return only_run(tmp_path)


def in_phase(run: RunPaths, phase: str, file: Path) -> bool:
    return run.state_json.is_file() and load_state(run).phase == phase and file.is_file()


def test_cancel_stops_a_live_run_before_its_next_paid_request(tmp_path: Path) -> None:
    server = start_sandbox(latency_ms=300, fine_tuning=FAST)
    try:
        config = write_config(tmp_path, server.base_url)
        text = config.read_text().replace("max_retries = 3\n", "max_retries = 3\nconcurrency = 1\n")
        config.write_text(text.replace("scenarios = 6", "scenarios = 40"))
        live = popen("run", str(config))
        try:
            run = started_run(tmp_path)
            wait_until(
                lambda: in_phase(run, "rollout", run.iteration(0).episodes),
                within_s=120,
                what="the training rollout",
            )
            cancel = popen("cancel", str(run.root), "--wait", "20")
            # The moment the stop request is written (cancel's start-up takes a while).
            wait_until(
                lambda: run.stop_request.exists() or cancel.poll() is not None,
                within_s=60,
                what="the stop request",
            )
            served_before = server.state.requests[CHAT]
            cancel_out, cancel_err = cancel.communicate(timeout=30)
            served_after = server.state.requests[CHAT]
            _, err = live.communicate(timeout=10)  # it has stopped already
        finally:
            if live.poll() is None:
                live.kill()
        assert cancel.returncode == 0, cancel_err
        assert f"pid {live.pid} stopped" in cancel_out
        assert served_after <= served_before + 1  # the request in flight, nothing new
        assert live.returncode == 1 and "cancelled by the user" in err
        assert "Traceback" not in err and KEY not in err
        state = load_state(run)
        assert (state.status, state.phase) == ("stopped", "rollout")
        assert "cancelled by the user" in (state.message or "")
        assert not run.stop_request.exists()
        time.sleep(0.5)  # nothing is sent after the process is gone
        assert server.state.requests[CHAT] == served_after
        # Every request sent was recorded in the ledger first.
        assert Ledger(ledger_path(run.root)).requests() >= served_after
    finally:
        server.stop()


def test_cancel_cancels_a_job_that_only_the_registry_holds(tmp_path: Path) -> None:
    server = start_sandbox(fine_tuning={**FAST, "steps": 500, "step_s": 0.1})
    try:
        config = write_config(tmp_path, server.base_url)
        killed = cli("run", str(config), env={"RMFT_KILL_AT": "train:submitted"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        run = only_run(tmp_path)
        assert not run.iteration(0).job.exists()  # killed before job.json
        client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
        [job] = client.fine_tuning.jobs.list().data
        assert job.status not in ("cancelled", "succeeded")

        cancelled = cli("cancel", str(run.root))
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"job {job.id} is cancelled" in cancelled.stdout
        assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
        assert load_state(RunPaths(run.root)).status == "stopped"
    finally:
        server.stop()


def test_cancel_stops_a_live_run_waiting_on_its_job_and_cancels_the_job(tmp_path: Path) -> None:
    server = start_sandbox(fine_tuning={**FAST, "steps": 500, "step_s": 0.1})
    try:
        config = write_config(tmp_path, server.base_url)
        live = popen("run", str(config))
        try:
            run = started_run(tmp_path)
            job_file = run.iteration(0).job
            wait_until(lambda: in_phase(run, "train", job_file), within_s=120, what="the job")
            cancelled = cli("cancel", str(run.root), "--wait", "20")
            _, err = live.communicate(timeout=10)
        finally:
            if live.poll() is None:
                live.kill()
        assert cancelled.returncode == 0, cancelled.stderr
        client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
        [job] = client.fine_tuning.jobs.list().data
        assert job.status == "cancelled"
        assert f"job {job.id} is cancelled" in cancelled.stdout
        assert live.returncode == 1 and "cancelled by the user" in err
        state = load_state(run)
        assert (state.status, state.phase) == ("stopped", "train")
    finally:
        server.stop()
