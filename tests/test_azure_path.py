"""Iterative RMFT through Azure OpenAI: the `openai` SDK's Azure client over real HTTP to the
sandbox's Azure data plane (`/openai/...?api-version=`, `api-key`), and each fine-tuned model
deployed through the sandbox's control plane before it plays; two chained iterations, SIGKILLs
at every phase (and between a deployment's PUT and its record), refusals and failed or
quota-refused deployments."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rmft_api.errors import (
    ConfigError,
    QuotaExhaustedError,
    TrainingError,
    TrainingUnavailableError,
)
from rmft_api.pipeline import Pipeline
from rmft_api.providers.registry import resolve
from rmft_api.run_state import load_state, open_run
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings
from rmft_api.schema import Episode, JobRef
from rmft_api.store import RunPaths, read_json, read_jsonl
from rmft_api.trainers.azure_deploy import DeploymentRegistry
from tests.test_openai_path import FAST, cli, only_run

KEY = "azure-sandbox-key-1234567890"
TOKEN = "eyJ-sandbox-management-token-0987654321"
ENV = {"AZURE_OPENAI_API_KEY": KEY, "AZURE_MANAGEMENT_TOKEN": TOKEN}
BASE = "gpt-4o-mini-2024-07-18"
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
spec = "azure/gpt-4o-mini"
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
[azure]
endpoint = "{root}"
api_version = "2025-04-01-preview"
subscription_id = "sub-0000"
resource_group = "rg-rmft"
account = "rmft-sandbox"
management_url = "{root}"
[trainer]
kind = "azure"
model = "{base}"
n_epochs = 1
suffix = "rmft"
training_type = "globalstandard"
deployment_capacity = 2
delete_superseded = {delete}
poll_interval_s = 0.05
max_poll_interval_s = 0.2
timeout_s = 30
"""


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def settings(**azure: Any) -> SandboxSettings:
    return SandboxSettings(
        fine_tuning=FAST,
        faults={"rules": azure.pop("rules", [])},
        azure={"deploy_s": 0.1, "deployments": {"gpt-4o-mini": BASE}, **azure},
    )


@pytest.fixture
def sandbox() -> Iterator[Callable[..., SandboxServer]]:
    servers: list[SandboxServer] = []

    def start(**azure: Any) -> SandboxServer:
        server = SandboxServer(settings(**azure), resolve("agent/thompson", seed=0))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def write_config(tmp: Path, server: SandboxServer, *, delete: bool = False) -> Path:
    path = tmp / "azure.toml"
    text = CONFIG.format(
        runs=tmp / "runs", root=server.root_url, base=BASE, delete=str(delete).lower()
    )
    path.write_text(text)
    return path


def server_jobs(server: SandboxServer) -> list[Any]:
    import openai

    client = openai.AzureOpenAI(
        azure_endpoint=server.root_url, api_version="2025-04-01-preview", api_key=KEY
    )
    # Listed newest first; created_at has whole seconds, so two jobs may tie on it.
    return list(reversed(list(client.fine_tuning.jobs.list(limit=100))))


def outcome(run: RunPaths, server: SandboxServer) -> dict[str, Any]:
    jobs = server_jobs(server)
    state = load_state(run)
    azure = server.state.azure
    assert azure is not None
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
        "job_models": [j.model.split(":")[0] for j in jobs],
        "chained": len(jobs) == 2 and jobs[1].model == jobs[0].fine_tuned_model,
        "deployments_created": azure.created,
        "deployed": sorted(
            (d.name.rsplit("-", 1)[1], d.model == j.fine_tuned_model)
            for d, j in zip(
                sorted((d for d in azure.deployments.values() if d.number), key=lambda d: d.name),
                jobs,
                strict=False,
            )
        ),
        "training_types": azure.training_types,
        "policies": [p.split("/")[0] + "/" + p.rsplit("-", 1)[-1] for p in state.policies],
        "status": (state.status, state.phase, state.iteration),
    }


def test_two_chained_iterations_through_azure_with_deployments(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    server = sandbox()
    cfg, run = open_run(write_config(tmp_path, server))
    state = Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert (state.status, state.iteration) == ("completed", 2)
    jobs = server_jobs(server)
    assert [j.status for j in jobs] == ["succeeded", "succeeded"]
    assert jobs[0].model == BASE and jobs[1].model == jobs[0].fine_tuned_model  # continued
    azure = server.state.azure
    assert azure is not None and azure.training_types == ["globalstandard", "globalstandard"]
    registry = read_json(run.root / "azure" / "deployments.json", DeploymentRegistry)
    names = [d.name for d in registry.deployments]
    assert [d.model for d in registry.deployments] == [j.fine_tuned_model for j in jobs]
    assert all(d.state == "Succeeded" and d.capacity == 2 for d in registry.deployments)
    assert all(d.hosting_usd_per_hour == 1.70 for d in registry.deployments)
    assert state.policies == ["azure/gpt-4o-mini", *(f"azure/{n}" for n in names)]
    assert azure.created == 2 and set(azure.deployments) == {"gpt-4o-mini", *names}
    # Iteration 1 was played by iteration 0's deployment, through the data plane.
    it1 = read_jsonl(run.iteration(1).episodes, Episode)
    assert it1 and {e.policy_spec for e in it1} == {f"azure/{names[0]}"}
    assert server.state.requests[f"/openai/deployments/{names[0]}/chat/completions"] > 0
    for i in range(2):
        ref = read_json(run.iteration(i).job, JobRef)
        assert ref.backend == "azure" and ref.job_id == jobs[i].id
        assert ref.metadata["iteration"] == str(i) and ref.result_policy == f"azure/{names[i]}"
    text = "".join(p.read_text(errors="ignore") for p in run.root.rglob("*.json*"))
    assert KEY not in text and TOKEN not in text

    # Deleting on request: every deployment of the run, recorded; the base one is not ours.
    listed = cli("deployments", str(run.root), "--json", env=ENV)
    assert listed.returncode == 0, listed.stderr
    assert "$1.70/hour" in listed.stdout and "reported" in listed.stdout
    deleted = cli("deployments", str(run.root), "--delete", env=ENV)
    assert deleted.returncode == 0, deleted.stderr
    assert set(azure.deployments) == {"gpt-4o-mini"} and azure.deletes == 2
    registry = read_json(run.root / "azure" / "deployments.json", DeploymentRegistry)
    assert all(d.deleted_at is not None for d in registry.deployments)


def test_superseded_deployments_are_deleted_when_configured(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    server = sandbox()
    cfg, run = open_run(write_config(tmp_path, server, delete=True))
    state = Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert state.status == "completed"
    azure = server.state.azure
    assert azure is not None and azure.created == 2 and azure.deletes == 1
    assert set(azure.deployments) == {"gpt-4o-mini", state.policy.removeprefix("azure/")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("azure-reference")
    with SandboxServer(settings(), resolve("agent/thompson", seed=0)) as server:
        proc = cli("run", str(write_config(tmp, server)), env=ENV)
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
        ("RMFT_KILL_AT", "azure:deployment-created"),
        ("RMFT_KILL_AFTER", "0:train"),
        pytest.param("RMFT_KILL_AFTER", "1:rollout", marks=pytest.mark.slow),
        ("RMFT_KILL_AFTER", "1:train"),
        pytest.param("RMFT_KILL_AFTER", "2:evaluate", marks=pytest.mark.slow),
    ],
)
def test_killed_at_any_phase_resumes_with_one_job_and_one_deployment_per_iteration(
    tmp_path: Path,
    sandbox: Callable[..., SandboxServer],
    reference: dict[str, Any],
    variable: str,
    point: str,
) -> None:
    server = sandbox()
    config = write_config(tmp_path, server)
    killed = cli("run", str(config), env={**ENV, variable: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_run(tmp_path)
    resumed = cli("run", "--resume", str(run.root), env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, server) == reference
    assert reference["jobs_on_server"] == 2 and reference["deployments_created"] == 2
    assert reference["chained"]


def test_job_created_while_the_client_timed_out_is_found_not_duplicated(
    tmp_path: Path, sandbox: Callable[..., SandboxServer], reference: dict[str, Any]
) -> None:
    rule = {
        "fault": "late_reply",
        "path": "/openai/fine_tuning/jobs",
        "method": "POST",
        "times": 1,
        "delay_s": 3,
    }
    server = sandbox(rules=[rule])
    config = write_config(tmp_path, server)
    text = config.read_text().replace("timeout_s = 30", "timeout_s = 0.5")
    config.write_text(text)
    proc = cli("run", str(config), env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert server.state.faults.injected["late_reply"] == 1
    assert outcome(only_run(tmp_path), server) == reference


def test_a_job_create_that_finishes_late_gives_exactly_one_job_per_iteration(
    tmp_path: Path, sandbox: Callable[..., SandboxServer], reference: dict[str, Any]
) -> None:
    """Azure answers the first job create 500 but makes the job 1.5 s later: the trainer finds
    it by its metadata while polling and never sends the create again."""
    rule = {
        "fault": "late_create",
        "path": "/openai/fine_tuning/jobs",
        "method": "POST",
        "times": 1,
        "delay_s": 1.5,
    }
    server = sandbox(rules=[rule])
    proc = cli("run", str(write_config(tmp_path, server)), env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert server.state.faults.injected["late_create"] == 1
    assert outcome(only_run(tmp_path), server) == reference


def test_training_not_available_ends_the_run_with_the_alternatives(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    rule = {"fault": "training_not_available", "path": "/openai/fine_tuning/jobs", "method": "POST"}
    server = sandbox(rules=[rule])
    cfg, run = open_run(write_config(tmp_path, server))
    with pytest.raises(TrainingUnavailableError, match="training_not_available") as caught:
        Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert 'kind = "together"' in str(caught.value) and KEY not in str(caught.value)
    assert server.state.faults.injected["training_not_available"] == 1
    state = load_state(run)
    assert (state.status, state.phase) == ("failed", "train")
    assert len(read_jsonl(run.iteration(0).episodes, Episode)) == 12


@pytest.mark.parametrize(
    ("fault", "error", "words"),
    [("failed", TrainingError, "deploy it again"), ("quota", QuotaExhaustedError, "quota")],
)
def test_a_failed_or_refused_deployment_ends_the_run_and_resuming_deploys_once(
    tmp_path: Path,
    sandbox: Callable[..., SandboxServer],
    fault: str,
    error: type[Exception],
    words: str,
) -> None:
    server = sandbox(faults=[{"fault": fault, "at": [1]}])
    cfg, run = open_run(write_config(tmp_path, server))
    with pytest.raises(error, match=words):
        Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    state = load_state(run)
    assert (state.status, state.phase, state.iteration) == ("failed", "train", 0)
    assert len(server_jobs(server)) == 1  # the trained model is kept
    azure = server.state.azure
    assert azure is not None
    # The fault hits only the first creation: resuming deploys the same job's model once more.
    state = Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    assert state.status == "completed" and len(server_jobs(server)) == 2
    names = {d for d in azure.deployments if d != "gpt-4o-mini"}
    assert len(names) == 2


def test_missing_azure_settings_are_refused_before_anything_is_paid(
    tmp_path: Path, sandbox: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = sandbox()
    monkeypatch.delenv("AZURE_MANAGEMENT_TOKEN")
    cfg, run = open_run(write_config(tmp_path, server))
    with pytest.raises(ConfigError, match="AZURE_MANAGEMENT_TOKEN is not set"):
        Pipeline(cfg, run).run_to_end()
    assert server.state.completions == 0


def test_entra_tokens_and_the_data_planes_refusals(
    sandbox: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import httpx2

    from rmft_api.config import AzureConfig, config_from_dict
    from rmft_api.envs.preview import preview_prompt
    from rmft_api.providers.base import SamplingParams

    server = sandbox()
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "entra-token-for-the-sandbox")
    azure = AzureConfig(endpoint=server.root_url, auth="entra")
    provider = resolve("azure/gpt-4o-mini", azure=azure)
    chat = preview_prompt(config_from_dict({"env": {"preset": "easy"}})).messages
    [reply] = asyncio.run(provider.generate([chat], SamplingParams(max_tokens=16)))
    assert reply.error is None and reply.text
    assert server.state.requests["/openai/deployments/gpt-4o-mini/chat/completions"] == 1
    url = f"{server.root_url}/openai/deployments/gpt-4o-mini/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx2.post(url, json=body, headers={"api-key": KEY}).status_code == 404  # no version
    versioned = f"{url}?api-version=2025-04-01-preview"
    assert httpx2.post(versioned, json=body).status_code == 401  # no credential
    missing = versioned.replace("gpt-4o-mini", "not-deployed")
    assert httpx2.post(missing, json=body, headers={"api-key": KEY}).status_code == 404
    monkeypatch.delenv("AZURE_OPENAI_AD_TOKEN")
    with pytest.raises(ConfigError, match="AZURE_OPENAI_AD_TOKEN is not set"):
        resolve("azure/gpt-4o-mini", azure=azure)


def test_cancelling_an_azure_job(tmp_path: Path, sandbox: Callable[..., SandboxServer]) -> None:
    from rmft_api.config import AzureConfig, AzureTrainerConfig
    from rmft_api.trainers.azure_ft import AzureFineTuner

    server = sandbox()
    azure = AzureConfig(
        endpoint=server.root_url,
        subscription_id="s",
        resource_group="g",
        account="a",
        management_url=server.root_url,
    )
    trainer = AzureFineTuner(
        AzureTrainerConfig(model=BASE), azure=azure, run_id="run-c", state_dir=tmp_path
    )
    train = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    train.write_text((json.dumps(row) + "\n") * 10)
    ref = trainer.submit(train, base_policy="azure/gpt-4o-mini", iteration=0, out_dir=tmp_path)
    assert ref.backend == "azure"
    assert trainer.cancel(ref).status == "cancelled"
    assert [j.status for j in server_jobs(server)] == ["cancelled"]
    trainer.close()


def test_a_deployment_that_does_not_come_up_in_time_ends_the_run_and_is_kept(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    server = sandbox(deploy_s=30)
    config = write_config(tmp_path, server)
    config.write_text(
        config.read_text().replace("timeout_s = 30", "timeout_s = 30\ndeployment_timeout_s = 0.5")
    )
    cfg, run = open_run(config)
    with pytest.raises(TrainingError, match=r"still Creating after 0\.5s"):
        Pipeline(cfg, run, poll_interval_s=0.05).run_to_end()
    azure = server.state.azure
    assert azure is not None and azure.created == 1  # recorded and kept, not duplicated
    registry = read_json(run.root / "azure" / "deployments.json", DeploymentRegistry)
    assert [d.state for d in registry.deployments] == ["Creating"]
