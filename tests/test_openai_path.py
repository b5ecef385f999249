"""Iterative RMFT through the OpenAI path: the real SDK over real HTTP to the sandbox, which
answers chats and runs fine-tuning jobs (simulated, or really trained on a tiny local model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rmft_api.pipeline import Pipeline
from rmft_api.providers.registry import resolve
from rmft_api.run_state import load_state, open_run
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings
from rmft_api.schema import Episode, JobRef
from rmft_api.store import RunPaths, read_json, read_jsonl

KEY = "sk-sandbox-test-key-1234567890"
FAST = {"validating_s": 0.05, "queued_s": 0.05, "steps": 3, "step_s": 0.02}

CONFIG = """
[run]
seed = 5
runs_dir = "{runs}"
[env]
preset = "easy"
horizon = 4
[prompt]
transcript = "single_turn"
[policy]
spec = "openai/gpt-4o-mini"
base_url = "{url}"
timeout_s = 10
max_retries = 3
[policy.sampling]
max_tokens = 48
[rollout]
scenarios = 6
rollouts_per_scenario = 2
[selection]
k = 1
drop_fallback = false
[iterations]
count = 2
[eval]
scenarios = 3
baselines = ["ucb1"]
[trainer]
kind = "openai"
n_epochs = 1
suffix = "rmft"
poll_interval_s = 0.05
max_poll_interval_s = 0.2
timeout_s = {trainer_timeout}
"""


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def sandbox() -> Iterator[Callable[..., SandboxServer]]:
    servers: list[SandboxServer] = []

    def start(
        backing: str = "agent/thompson",
        *,
        rules: list[dict[str, Any]] | None = None,
        served: dict[str, str] | None = None,
        **fine_tuning: Any,
    ) -> SandboxServer:
        settings = SandboxSettings(
            fine_tuning={**FAST, **fine_tuning}, faults={"rules": rules or []}
        )
        server = SandboxServer(
            settings,
            resolve(backing, seed=0),
            served={name: resolve(spec, seed=0) for name, spec in (served or {}).items()},
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def write_config(tmp: Path, url: str, *, trainer_timeout: float = 30) -> Path:
    path = tmp / "openai-path.toml"
    path.write_text(CONFIG.format(runs=tmp / "runs", url=url, trainer_timeout=trainer_timeout))
    return path


def server_jobs(server: SandboxServer) -> list[Any]:
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
    # Listed newest first (as OpenAI does); created_at has whole seconds, so two jobs may tie
    # on it and sorting by it is not creation order.
    return list(reversed(list(client.fine_tuning.jobs.list(limit=100))))


def server_files(server: SandboxServer) -> list[Any]:
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
    return list(client.files.list(purpose="fine-tune"))


def only_run(tmp: Path) -> RunPaths:
    [run] = [p for p in (tmp / "runs").iterdir() if p.is_dir()]
    return RunPaths(run)


def outcome(run: RunPaths, server: SandboxServer) -> dict[str, Any]:
    jobs = server_jobs(server)
    state = load_state(run)
    return {
        "selected": [
            [
                json.loads(line)["episode_id"]
                for line in run.iteration(i).selected.read_text().splitlines()
            ]
            for i in range(2)
        ],
        "train": [run.iteration(i).train.read_bytes() for i in range(2)],
        "jobs_on_server": len(jobs),
        "files_on_server": len(server_files(server)),
        "job_models": [j.model.split(":")[0] for j in jobs],
        "chained": jobs[1].model == jobs[0].fine_tuned_model if len(jobs) == 2 else None,
        "final_is_last_job": state.policy == f"openai/{jobs[-1].fine_tuned_model}",
        "status": (state.status, state.phase, state.iteration),
    }


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OPENAI_API_KEY": KEY, **(env or {})},
    )


def test_two_iterations_through_the_openai_path_with_real_training(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    from tests.bootstrap_fixture import speaking_model

    model = speaking_model()
    # The sandbox's base model is the offline bootstrap model (it speaks the answer format);
    # its jobs train that model for real with LoRA and serve the adapters under their ft: names.
    server = sandbox(f"hf/{model}", max_epochs=2)
    cfg, run = open_run(write_config(tmp_path, server.base_url))
    state = Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert (state.status, state.iteration) == ("completed", 2)

    jobs = server_jobs(server)
    assert len(jobs) == 2 and all(j.status == "succeeded" for j in jobs)
    assert jobs[0].model == "gpt-4o-mini"
    assert jobs[1].model == jobs[0].fine_tuned_model  # iteration 1 continues iteration 0's model
    assert state.policies == [
        "openai/gpt-4o-mini",
        f"openai/{jobs[0].fine_tuned_model}",
        f"openai/{jobs[1].fine_tuned_model}",
    ]
    it1 = read_jsonl(run.iteration(1).episodes, Episode)
    assert it1 and {e.policy_spec for e in it1} == {f"openai/{jobs[0].fine_tuned_model}"}
    for i in range(2):
        ref = read_json(run.iteration(i).job, JobRef)
        assert ref.job_id == jobs[i].id and ref.metadata["iteration"] == str(i)
        assert ref.trained_tokens and ref.trained_tokens > 0
    assert KEY not in "".join(p.read_text(errors="ignore") for p in run.root.rglob("*.json*"))

    status = cli("status", str(run.root), "--json")
    report = json.loads(status.stdout.strip().splitlines()[-1])
    assert [r["job_id"] for r in report["iterations"]] == [jobs[0].id, jobs[1].id]
    assert report["iterations"][1]["policy"] == f"openai/{jobs[0].fine_tuned_model}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An uninterrupted run: what every interrupted or faulted run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    settings = SandboxSettings(fine_tuning=FAST)
    with SandboxServer(settings, resolve("agent/thompson", seed=0)) as server:
        proc = cli("run", str(write_config(tmp, server.base_url)))
        assert proc.returncode == 0, proc.stderr
        yield outcome(only_run(tmp), server)


@pytest.mark.parametrize(
    "kill_after",
    [
        "0:evaluate",
        "0:rollout",
        "0:select",
        "0:export",
        "0:validate",
        "0:train",
        "1:rollout",
        "1:train",
        "2:evaluate",
    ],
)
def test_killed_after_any_phase_resumes_without_redoing_paid_work(
    tmp_path: Path,
    sandbox: Callable[..., SandboxServer],
    reference: dict[str, Any],
    kill_after: str,
) -> None:
    server = sandbox()
    config = write_config(tmp_path, server.base_url)
    killed = cli("run", str(config), env={"RMFT_KILL_AFTER": kill_after})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_run(tmp_path)
    resumed = cli("run", "--resume", str(run.root))
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, server) == reference
    assert reference["jobs_on_server"] == 2 and reference["files_on_server"] == 2


def test_job_created_on_the_server_while_the_client_timed_out_is_not_duplicated(
    tmp_path: Path, sandbox: Callable[..., SandboxServer], reference: dict[str, Any]
) -> None:
    rule = {
        "fault": "late_reply",
        "path": "/v1/fine_tuning/jobs",
        "method": "POST",
        "times": 1,
        "delay_s": 3,
    }
    server = sandbox(rules=[rule])
    proc = cli("run", str(write_config(tmp_path, server.base_url, trainer_timeout=0.5)))
    assert proc.returncode == 0, proc.stderr
    assert server.state.faults.injected["late_reply"] == 1
    assert outcome(only_run(tmp_path), server) == reference


def test_refused_fine_tuning_ends_the_run_naming_the_alternatives(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    rule = {"fault": "permission_denied", "path": "/v1/fine_tuning/jobs", "method": "POST"}
    server = sandbox(rules=[rule])
    proc = cli("run", str(write_config(tmp_path, server.base_url)))
    assert proc.returncode == 1
    assert "base_url" in proc.stderr and 'kind = "lora"' in proc.stderr
    assert "Traceback" not in proc.stderr and KEY not in proc.stderr
    state = load_state(only_run(tmp_path))
    assert (state.status, state.phase) == ("failed", "train")
    assert len(read_jsonl(only_run(tmp_path).iteration(0).episodes, Episode)) == 12  # kept
