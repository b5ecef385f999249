"""Iterative RMFT through Together AI: the real `together` SDK over real HTTP to the sandbox's
Together API (uploads, fine-tunes, OpenAI-compatible chat), two chained iterations, SIGKILLs
at every phase and between a job's create and its record, and refusals."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rmft_api.errors import QuotaExhaustedError, TrainingUnavailableError
from rmft_api.pipeline import Pipeline
from rmft_api.providers.registry import resolve
from rmft_api.run_state import load_state, open_run
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings
from rmft_api.schema import Episode, JobRef
from rmft_api.store import RunPaths, read_json, read_jsonl
from rmft_api.trainers.openai_ft_registry import REGISTRY_FILE, FineTuneRegistry
from tests.test_openai_path import FAST, cli, only_run

together = pytest.importorskip("together")

KEY = "tgp_v1_sandbox-test-key-1234567890"
BASE = "meta-llama/Llama-3.2-3B-Instruct"
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
spec = "openai/{base}"
base_url = "{root}/together/v1"
api_key_env = "TOGETHER_API_KEY"
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
kind = "together"
base_url = "{root}/together"
n_epochs = 1
lora_r = 4
poll_interval_s = 0.05
max_poll_interval_s = 0.2
timeout_s = 30
"""


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", KEY)


@pytest.fixture
def sandbox() -> Iterator[Callable[..., SandboxServer]]:
    servers: list[SandboxServer] = []

    def start(*, rules: list[dict[str, Any]] | None = None) -> SandboxServer:
        settings = SandboxSettings(fine_tuning=FAST, faults={"rules": rules or []})
        server = SandboxServer(settings, resolve("agent/thompson", seed=0))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def write_config(tmp: Path, server: SandboxServer) -> Path:
    path = tmp / "together.toml"
    path.write_text(CONFIG.format(runs=tmp / "runs", root=server.root_url, base=BASE))
    return path


def server_jobs(server: SandboxServer) -> list[Any]:
    client = together.Together(api_key=KEY, base_url=f"{server.root_url}/together", max_retries=0)
    # Listed newest first; created_at has whole seconds, so two jobs may tie on it.
    return list(reversed(client.fine_tuning.list().data))


def outcome(run: RunPaths, server: SandboxServer) -> dict[str, Any]:
    jobs = server_jobs(server)
    state = load_state(run)
    files = [f for f in server.state.files.files.values() if f.purpose == "fine-tune"]
    return {
        "selected": [
            [
                json.loads(x)["episode_id"]
                for x in run.iteration(i).selected.read_text().splitlines()
            ]
            for i in range(2)
        ],
        "train": [run.iteration(i).train.read_bytes() for i in range(2)],
        "jobs_on_server": len(jobs),
        "files_on_server": len(files),
        "chained": len(jobs) == 2 and jobs[1].from_checkpoint == jobs[0].x_model_output_name,
        "final_is_last_job": state.policy == f"openai/{jobs[-1].x_model_output_name}",
        "status": (state.status, state.phase, state.iteration),
    }


def test_two_chained_iterations_through_together(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    server = sandbox()
    cfg, run = open_run(write_config(tmp_path, server))
    state = Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert (state.status, state.iteration) == ("completed", 2)
    jobs = server_jobs(server)
    assert [j.status for j in jobs] == ["completed", "completed"]
    assert jobs[0].model == BASE and jobs[0].from_checkpoint is None
    assert jobs[1].from_checkpoint == jobs[0].x_model_output_name  # continues iteration 0
    assert jobs[1].training_type is not None and jobs[1].training_type.type == "Lora"
    assert state.policies == [
        f"openai/{BASE}",
        f"openai/{jobs[0].x_model_output_name}",
        f"openai/{jobs[1].x_model_output_name}",
    ]
    # Iteration 1 was played by iteration 0's model, through Together's chat endpoint.
    it1 = read_jsonl(run.iteration(1).episodes, Episode)
    assert it1 and {e.policy_spec for e in it1} == {state.policies[1]}
    assert server.state.requests["/together/v1/chat/completions"] > 0
    for i in range(2):
        ref = read_json(run.iteration(i).job, JobRef)
        assert ref.backend == "together" and ref.job_id == jobs[i].id
        assert ref.status == "succeeded" and ref.trained_tokens and ref.checkpoints
        assert ref.metadata["suffix"] == jobs[i].suffix
    assert KEY not in "".join(p.read_text(errors="ignore") for p in run.root.rglob("*.json*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("together-reference")
    settings = SandboxSettings(fine_tuning=FAST)
    with SandboxServer(settings, resolve("agent/thompson", seed=0)) as server:
        proc = cli("run", str(write_config(tmp, server)), env={"TOGETHER_API_KEY": KEY})
        assert proc.returncode == 0, proc.stderr
        yield outcome(only_run(tmp), server)


@pytest.mark.parametrize(
    ("variable", "point"),
    [
        pytest.param("RMFT_KILL_AFTER", "0:evaluate", marks=pytest.mark.slow),
        pytest.param("RMFT_KILL_AFTER", "0:rollout", marks=pytest.mark.slow),
        pytest.param("RMFT_KILL_AFTER", "0:select", marks=pytest.mark.slow),
        pytest.param("RMFT_KILL_AFTER", "0:export", marks=pytest.mark.slow),
        pytest.param("RMFT_KILL_AFTER", "0:validate", marks=pytest.mark.slow),
        ("RMFT_KILL_AT", "together:job-created"),
        ("RMFT_KILL_AFTER", "0:train"),
        pytest.param("RMFT_KILL_AFTER", "1:rollout", marks=pytest.mark.slow),
        ("RMFT_KILL_AFTER", "1:train"),
        pytest.param("RMFT_KILL_AFTER", "2:evaluate", marks=pytest.mark.slow),
    ],
)
def test_killed_at_any_phase_resumes_with_exactly_one_job_per_iteration(
    tmp_path: Path,
    sandbox: Callable[..., SandboxServer],
    reference: dict[str, Any],
    variable: str,
    point: str,
) -> None:
    server = sandbox()
    config = write_config(tmp_path, server)
    killed = cli("run", str(config), env={"TOGETHER_API_KEY": KEY, variable: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_run(tmp_path)
    resumed = cli("run", "--resume", str(run.root), env={"TOGETHER_API_KEY": KEY})
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, server) == reference
    assert reference["jobs_on_server"] == 2 and reference["files_on_server"] == 2
    assert reference["chained"] and reference["final_is_last_job"]


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [
        ("permission_denied", TrainingUnavailableError, ('kind = "azure"', 'kind = "lora"')),
        ("insufficient_quota", QuotaExhaustedError, ("add credit",)),
    ],
)
def test_refusals_end_the_run_with_the_message_and_nothing_lost(
    tmp_path: Path,
    sandbox: Callable[..., SandboxServer],
    fault: str,
    error: type[Exception],
    words: tuple[str, ...],
) -> None:
    rule = {"fault": fault, "path": "/together/v1/fine-tunes", "method": "POST"}
    server = sandbox(rules=[rule])
    cfg, run = open_run(write_config(tmp_path, server))
    with pytest.raises(error) as caught:
        Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert all(w in str(caught.value) for w in words) and KEY not in str(caught.value)
    assert server.state.faults.injected[fault] == 1  # never retried
    state = load_state(run)
    assert (state.status, state.phase) == ("failed", "train")
    assert len(read_jsonl(run.iteration(0).episodes, Episode)) == 12
    assert server_jobs(server) == []


LATE_CREATE = {
    "fault": "late_create",
    "path": "/together/v1/fine-tunes",
    "method": "POST",
    "times": 1,
    "delay_s": 1.5,
}


def test_a_job_create_that_finishes_late_gives_exactly_one_job_per_iteration(
    tmp_path: Path, sandbox: Callable[..., SandboxServer], reference: dict[str, Any]
) -> None:
    """Together answers the first create 500 but makes the job 1.5 s later: found by its
    suffix while polling, never created twice."""
    server = sandbox(rules=[LATE_CREATE])
    proc = cli("run", str(write_config(tmp_path, server)), env={"TOGETHER_API_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    assert server.state.faults.injected["late_create"] == 1
    assert outcome(only_run(tmp_path), server) == reference


def test_a_create_later_than_the_settle_window_stops_the_run_and_resume_finds_the_job(
    tmp_path: Path, sandbox: Callable[..., SandboxServer], reference: dict[str, Any]
) -> None:
    server = sandbox(rules=[{**LATE_CREATE, "delay_s": 2.0}])
    config = write_config(tmp_path, server)
    config.write_text(config.read_text() + "create_settle_s = 0.3\n")
    stopped = cli("run", str(config), env={"TOGETHER_API_KEY": KEY})
    assert stopped.returncode == 1
    assert "rmft-api run --resume" in stopped.stderr and "not sent again" in stopped.stderr
    assert "Traceback" not in stopped.stderr and KEY not in stopped.stderr
    run = only_run(tmp_path)
    assert (load_state(run).status, load_state(run).phase) == ("failed", "train")
    deadline = time.monotonic() + 10
    while not server_jobs(server):  # the late job turns up
        assert time.monotonic() < deadline, "the late job never appeared"
        time.sleep(0.05)
    resumed = cli("run", "--resume", str(run.root), env={"TOGETHER_API_KEY": KEY})
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, server) == reference


def test_cancel_stops_the_job_and_a_new_submit_is_a_new_attempt(
    tmp_path: Path, start_sandbox: Callable[..., SandboxServer]
) -> None:
    from rmft_api.config import TogetherTrainerConfig
    from rmft_api.trainers.together_ft import TogetherFineTuner

    server = start_sandbox(
        resolve("agent/thompson", seed=0),
        fine_tuning={**FAST, "steps": 50, "step_s": 0.1},
    )
    train = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    train.write_text(json.dumps(row) + "\n")
    config = TogetherTrainerConfig(base_url=f"{server.root_url}/together")
    trainer = TogetherFineTuner(config, run_id="run-cancel", state_dir=tmp_path / "state")
    ref = trainer.submit(train, base_policy=f"openai/{BASE}", iteration=0, out_dir=tmp_path)
    again = trainer.submit(train, base_policy=f"openai/{BASE}", iteration=0, out_dir=tmp_path)
    assert again.job_id == ref.job_id  # re-attached, not created twice
    cancelled = trainer.cancel(ref)
    assert cancelled.status == "cancelled" and trainer.poll(cancelled).status == "cancelled"
    retried = trainer.submit(train, base_policy=f"openai/{BASE}", iteration=0, out_dir=tmp_path)
    assert retried.job_id != ref.job_id and retried.metadata["suffix"] != ref.metadata["suffix"]
    assert len(server_jobs(server)) == 2
    trainer.close()


def test_cancel_finds_and_cancels_a_job_whose_create_was_never_answered(tmp_path: Path) -> None:
    """Killed between Together's create and the id's record: the registry holds only the intent;
    `rmft-api cancel` finds the job by its suffix, records its id and cancels it (so a resume
    starts a new attempt rather than re-attaching to the cancelled job)."""
    settings = SandboxSettings(fine_tuning={**FAST, "steps": 400, "step_s": 0.1})
    with SandboxServer(settings, resolve("agent/thompson", seed=0)) as server:
        config = write_config(tmp_path, server)
        env = {"TOGETHER_API_KEY": KEY}
        killed = cli("run", str(config), env={**env, "RMFT_KILL_AT": "together:job-created"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        run = only_run(tmp_path)
        registry = read_json(run.root / "together" / REGISTRY_FILE, FineTuneRegistry)
        assert [j.job_id for j in registry.jobs] == [None]
        [job] = server_jobs(server)
        assert job.status not in ("cancelled", "completed")
        cancelled = cli("cancel", str(run.root), env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"job {job.id} is cancelled" in cancelled.stdout
        assert [j.status for j in server_jobs(server)] == ["cancelled"]
        registry = read_json(run.root / "together" / REGISTRY_FILE, FineTuneRegistry)
        assert [(j.job_id, j.status) for j in registry.jobs] == [(job.id, "cancelled")]
        assert load_state(run).status == "stopped"


def test_the_preflight_notes_togethers_model_list_instead_of_failing(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    import datetime as dt

    from rmft_api.preflight import doctor

    server = sandbox()
    cfg, _ = open_run(write_config(tmp_path, server))
    report = doctor(cfg, today=dt.date(2026, 12, 2))
    assert report.ok and report.checks == []
    assert "could not read the model list" in report.notes[0]
    assert server.state.requests["/together/v1/models"] >= 1
