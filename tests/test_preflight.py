"""The date-aware OpenAI path: shutdown dates read from /v1/models refuse a run before anything
is paid, `rmft-api doctor` runs the same check, and a refusal to train is final."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rmft_api.config import config_from_dict
from rmft_api.errors import ConfigError, TrainingUnavailableError
from rmft_api.pipeline import Pipeline
from rmft_api.preflight import doctor, parse_shutdown, root_base, run_preflight
from rmft_api.providers.registry import resolve
from rmft_api.run_state import load_state, open_run
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings
from rmft_api.schema import Episode
from rmft_api.store import read_jsonl
from tests.test_openai_path import FAST, KEY, cli, only_run, write_config

SHUTDOWN = "2027-01-14"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def dated_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    servers: list[SandboxServer] = []

    def start(*, rules: list[dict[str, Any]] | None = None) -> SandboxServer:
        settings = SandboxSettings(
            fine_tuning=FAST,
            faults={"rules": rules or []},
            shutdown_dates={"gpt-4o-mini": SHUTDOWN},
        )
        server = SandboxServer(settings, resolve("agent/thompson", seed=0))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_a_run_needing_a_model_past_its_shutdown_is_refused_before_any_paid_request(
    tmp_path: Path, dated_sandbox: Callable[..., SandboxServer]
) -> None:
    server = dated_sandbox()
    cfg, run = open_run(write_config(tmp_path, server.base_url))
    # 2 iterations × 1 day + 1 day margin from 2027-01-12 reaches 2027-01-15 > 2027-01-14.
    pipeline = Pipeline(cfg, run, today=lambda: dt.date(2027, 1, 12))
    with pytest.raises(TrainingUnavailableError) as caught:
        pipeline.run_to_end()
    message = str(caught.value)
    assert SHUTDOWN in message and "gpt-4o-mini" in message and "2027-01-15" in message
    assert 'kind = "azure"' in message and 'kind = "together"' in message
    assert 'kind = "lora"' in message
    requests = server.state.requests
    assert requests["/v1/models"] == 1
    assert requests["/v1/chat/completions"] == 0 and server.state.completions == 0
    assert requests["/v1/files"] == 0 and requests["/v1/fine_tuning/jobs"] == 0
    state = load_state(run)
    assert (state.status, state.iteration, state.phase) == ("failed", 0, "evaluate")
    assert state.message is not None and SHUTDOWN in state.message


def test_the_same_run_passes_the_preflight_when_it_ends_before_the_shutdown(
    tmp_path: Path, dated_sandbox: Callable[..., SandboxServer]
) -> None:
    server = dated_sandbox()
    cfg, _ = open_run(write_config(tmp_path, server.base_url))
    report = run_preflight(
        cfg, policy=cfg.policy.spec, iterations_left=2, today=dt.date(2027, 1, 10)
    )
    assert report.ok and report.needed_until == dt.date(2027, 1, 13)
    [check] = report.checks  # policy and trainer share the server and the model
    assert check.shutdown_date == dt.date(2027, 1, 14) and check.listed_as == "gpt-4o-mini"
    # A resumed run with one iteration left needs the model one day less.
    later = run_preflight(
        cfg, policy=cfg.policy.spec, iterations_left=1, today=dt.date(2027, 1, 11)
    )
    assert later.ok and later.needed_until == dt.date(2027, 1, 13)


def test_fine_tuned_models_inherit_their_base_models_shutdown() -> None:
    cfg = config_from_dict({"iterations": {"count": 3}})
    listed = {"gpt-4o-mini-2024-07-18": "2027-01-14", "gpt-4.1-mini": None}
    report = run_preflight(
        cfg,
        policy="openai/ft:gpt-4o-mini-2024-07-18:org:rmft:abc123",
        iterations_left=3,
        today=dt.date(2027, 1, 1),
        list_models=lambda url: listed,
    )
    assert report.ok  # needed until 2027-01-05
    refused = run_preflight(
        cfg,
        policy="openai/ft:gpt-4o-mini-2024-07-18:org:rmft:abc123",
        iterations_left=3,
        today=dt.date(2027, 1, 10),
        list_models=lambda url: listed,
    )
    assert not refused.ok
    assert "ft:gpt-4o-mini-2024-07-18:org:rmft:abc123 shuts down on 2027-01-14" in (
        refused.refusal()
    )
    assert root_base("ft:gpt-4o-mini-2024-07-18:org::x:ckpt-step-9") == "gpt-4o-mini-2024-07-18"
    assert parse_shutdown("2027-01-14T00:00:00Z") == dt.date(2027, 1, 14)
    assert parse_shutdown(1_800_000_000) == dt.date(2027, 1, 15)
    assert parse_shutdown(None) is None


def test_servers_without_dates_or_without_a_model_list_are_noted_not_refused() -> None:
    from rmft_api.errors import ProviderError

    cfg = config_from_dict({"policy": {"base_url": "http://127.0.0.1:9/v1"}})

    def unreachable(url: str) -> dict[str, str | None]:
        raise ProviderError("connection refused")

    report = doctor(cfg, today=dt.date(2027, 1, 10), list_models=unreachable)
    assert report.ok and "could not read the model list" in report.notes[0]
    local = config_from_dict(
        {"policy": {"spec": "agent/ucb1"}, "trainer": {"kind": "lora"}, "iterations": {"count": 1}}
    )
    assert doctor(local, today=dt.date(2027, 1, 10)).checks == []  # nothing hosted to check


def test_doctor_command_runs_the_preflight_alone(
    tmp_path: Path, dated_sandbox: Callable[..., SandboxServer]
) -> None:
    server = dated_sandbox()
    config = write_config(tmp_path, server.base_url)
    refused = cli("doctor", str(config), "--today", "2027-01-12")
    assert refused.returncode == 1, refused.stdout
    assert SHUTDOWN in refused.stderr and "Traceback" not in refused.stderr
    assert "REFUSED" in refused.stdout
    fine = cli("doctor", str(config), "--today", "2026-12-02", "--json")
    assert fine.returncode == 0, fine.stderr
    assert '"needed_until":"2026-12-05"' in fine.stdout.splitlines()[-1]
    assert server.state.completions == 0 and server.state.requests["/v1/files"] == 0
    assert not (tmp_path / "runs").exists()  # doctor starts no run


def test_training_not_available_ends_the_run_at_the_first_refusal_with_nothing_lost(
    tmp_path: Path, dated_sandbox: Callable[..., SandboxServer]
) -> None:
    rule = {"fault": "training_not_available", "path": "/v1/fine_tuning/jobs", "method": "POST"}
    server = dated_sandbox(rules=[rule])
    cfg, run = open_run(write_config(tmp_path, server.base_url))
    with pytest.raises(TrainingUnavailableError) as caught:
        Pipeline(cfg, run, today=lambda: dt.date(2026, 12, 2)).run_to_end()
    message = str(caught.value)
    assert "training_not_available" in message and 'kind = "azure"' in message
    assert KEY not in message
    assert server.state.faults.injected["training_not_available"] == 1  # never retried
    state = load_state(only_run(tmp_path))
    assert (state.status, state.phase) == ("failed", "train")
    assert len(read_jsonl(run.iteration(0).episodes, Episode)) == 12  # kept
    assert run.iteration(0).train.is_file()


def test_hosted_runs_missing_their_settings_are_named_before_they_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rmft_api.config import load_config
    from rmft_api.preflight import check_preflight
    from tests.test_bootstrap import ROOT

    for name in ("AZURE_OPENAI_API_KEY", "AZURE_MANAGEMENT_TOKEN", "TOGETHER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    azure = load_config(ROOT / "configs" / "azure.toml", overrides=["azure.account=''"])
    report = doctor(azure, today=dt.date(2026, 12, 2), list_models=lambda url: {})
    assert not report.ok and report.checks == []  # nothing hosted by OpenAI to date-check
    assert any("AZURE_OPENAI_API_KEY is not set" in p for p in report.problems)
    assert any("AZURE_MANAGEMENT_TOKEN is not set" in p for p in report.problems)
    assert any("azure.account is not set" in p for p in report.problems)
    together_cfg = load_config(ROOT / "configs" / "together.toml")
    with pytest.raises(ConfigError, match="TOGETHER_API_KEY is not set"):
        check_preflight(
            together_cfg,
            policy=together_cfg.policy.spec,
            iterations_left=3,
            today=dt.date(2026, 12, 2),
            list_models=lambda url: {},
        )
    monkeypatch.setenv("TOGETHER_API_KEY", "tgp_v1_x")
    ready = doctor(together_cfg, today=dt.date(2026, 12, 2), list_models=lambda url: {})
    assert ready.ok and ready.problems == []


def test_replicas_are_checked_on_the_first_one() -> None:
    seen: list[str] = []

    def lister(url: str) -> dict[str, str | None]:
        seen.append(url)
        return {"gpt-4o-mini": None}

    cfg = config_from_dict(
        {
            "policy": {"base_urls": ["http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1"]},
            "trainer": {"kind": "lora"},
        }
    )
    report = doctor(cfg, today=dt.date(2026, 12, 2), list_models=lister)
    assert report.ok and seen == ["http://127.0.0.1:9001/v1"]
