"""Errors end as one line and a failed run; keys reach nothing (issue 14, items 8 and 10).

`rmft-api run` in a subprocess against the loopback sandbox (real SDK, real HTTP): an unexpected
exception marks the run failed and leaves its scrubbed traceback in error.log; a key inside
base_url, typed into an `*_env` field, or holding a line break or a non-ASCII character appears
nowhere under the run directory, in its output, or in the error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rmft_api.config import config_from_dict
from rmft_api.credentials import looks_like_key, read_secret, scrub, scrub_url
from rmft_api.errors import ConfigError
from rmft_api.providers.registry import resolve
from rmft_api.run_state import load_state
from rmft_api.sandbox.server import SandboxServer
from rmft_api.store import RunPaths

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
max_retries = 0
[policy.sampling]
max_tokens = 48
[rollout]
scenarios = 3
rollouts_per_scenario = 1
[selection]
k = 1
drop_fallback = false
[iterations]
count = 1
[eval]
scenarios = 2
baselines = ["ucb1"]
[trainer]
kind = "openai"
n_epochs = 1
poll_interval_s = 0.05
max_poll_interval_s = 0.2
"""

FAST = {"validating_s": 0.05, "queued_s": 0.05, "steps": 3, "step_s": 0.02}


@pytest.fixture
def sandbox(start_sandbox: Callable[..., SandboxServer]) -> Callable[..., SandboxServer]:
    """A sandbox answering as Thompson sampling, its fine-tuning jobs quick."""

    def start(rules: list[dict[str, Any]] | None = None) -> SandboxServer:
        backing = resolve("agent/thompson", seed=0)
        return start_sandbox(backing, fine_tuning=FAST, faults={"rules": rules or []})

    return start


def write_config(tmp: Path, url: str) -> Path:
    path = tmp / "rmft.toml"
    path.write_text(CONFIG.format(runs=tmp / "runs", url=url))
    return path


def cli(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    for name in ("OPENAI_API_KEY", "RMFT_FAIL_AFTER"):
        if env is None or name not in env:
            merged.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=merged,
    )


def only_run(tmp: Path) -> RunPaths:
    [run] = [p for p in (tmp / "runs").iterdir() if p.is_dir()]
    return RunPaths(run)


def everything_under(root: Path) -> str:
    """Every file under `root`, decoded leniently, as one text to search."""
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(root.rglob("*")) if p.is_file()
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The error's lines (the rest of stderr is the run's progress)."""
    lines = proc.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), len(lines))
    return [line for line in lines[start:] if line.strip()]


# ---------------------------------------------------------------- item 8: one top-level handler


def test_an_unexpected_error_fails_the_run_in_one_line_with_the_traceback_in_error_log(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    server = sandbox()
    config = write_config(tmp_path, server.base_url)
    proc = cli("run", str(config), env={"RMFT_FAIL_AFTER": "0:rollout"})
    assert proc.returncode == 1, proc.stderr
    [line] = error_lines(proc)
    run = only_run(tmp_path)
    log = run.root / "error.log"
    assert line.startswith("error: unexpected RuntimeError: injected fault after 0:rollout")
    assert str(log) in line
    assert "Traceback" not in proc.stdout + proc.stderr
    state = load_state(run)
    assert state.status == "failed"
    assert state.message is not None and "unexpected RuntimeError: injected fault" in state.message
    assert str(log) in state.message
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: injected fault after 0:rollout" in text
    assert server.state.completions > 0  # the run had paid for its rollouts


def test_a_non_ascii_key_is_one_line_naming_the_variable(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    key = "sk-tëst-non-ascii-key-0123456789"
    server = sandbox()
    config = write_config(tmp_path, server.base_url)
    proc = cli("run", str(config), env={"OPENAI_API_KEY": key})
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc)
    assert "OPENAI_API_KEY holds a non-ASCII character" in line
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "tëst" not in output and "0123456789" not in output
    assert server.state.completions == 0
    state = load_state(only_run(tmp_path))
    assert state.status == "failed" and "OPENAI_API_KEY" in (state.message or "")


# ---------------------------------------------------------------- item 10: secrets


def test_a_key_in_base_url_is_refused_and_appears_nowhere(tmp_path: Path) -> None:
    userinfo_key = "sk-userinfo-SECRET-0123456789"
    config = write_config(tmp_path, f"http://rmft:{userinfo_key}@127.0.0.1:9/v1?api-key=SECRET2")
    proc = cli("run", str(config))
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc)
    assert "policy" in line and "http://***@127.0.0.1:9/v1?api-key=***" in line
    assert "SECRET" not in proc.stdout + proc.stderr and "rmft:" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_key_with_a_line_break_is_refused_naming_the_variable_and_appears_nowhere(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    server = sandbox()
    config = write_config(tmp_path, server.base_url)
    first, second = "sk-first-half-0123456789", "second-half-SECRET-9876543210"
    proc = cli("run", str(config), env={"OPENAI_API_KEY": f"{first}\n{second}"})
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc)
    assert "OPENAI_API_KEY holds a line break at character 25" in line
    assert server.state.completions == 0  # refused before any request
    run = only_run(tmp_path)
    for where in (everything_under(run.root), proc.stdout + proc.stderr):
        assert "SECRET" not in where and "first-half" not in where
    state = load_state(run)
    assert state.status == "failed" and "OPENAI_API_KEY" in (state.message or "")


def test_error_texts_written_by_a_rollout_carry_no_url_credential(
    tmp_path: Path, sandbox: Callable[..., SandboxServer]
) -> None:
    """A server's error quoting a URL with a key in it (a redirect, a proxy's message) is
    masked before it reaches episodes.jsonl, state.json or the terminal."""
    leaky = "upstream https://me:sandbox-SECRET@proxy.example/v1?api-key=sandbox-SECRET failed"
    server = sandbox(rules=[{"fault": "server_error", "every": 2, "message": leaky}])
    config = write_config(tmp_path, server.base_url)
    proc = cli("run", str(config), env={"RMFT_FAIL_AFTER": "0:evaluate"})
    assert proc.returncode == 1, proc.stderr
    run = only_run(tmp_path)
    episodes = run.iteration(0).eval_episodes.read_text()
    assert "server error 500" in episodes
    assert "upstream https://***@proxy.example/v1?api-key=*** failed" in episodes
    for where in (everything_under(run.root), proc.stdout + proc.stderr):
        assert "sandbox-SECRET" not in where


@pytest.mark.parametrize(
    ("key", "section"),
    [
        ("policy.api_key_env", {}),
        ("trainer.api_key_env", {"kind": "openai"}),
        ("trainer.api_key_env", {"kind": "together"}),
        ("trainer.api_key_env", {"kind": "azure", "model": "gpt-4o-mini-2024-07-18"}),
        ("azure.api_key_env", {}),
        ("azure.ad_token_env", {}),
        ("azure.management_token_env", {}),
    ],
)
def test_a_key_typed_into_an_env_field_is_refused_unseen(key: str, section: dict[str, str]) -> None:
    typed = "sk-proj-typed-into-the-field-0123456789"
    table, field = key.split(".")
    with pytest.raises(ConfigError) as caught:
        config_from_dict({table: {**section, field: typed}})
    message = str(caught.value)
    assert key in message and "NAME of an environment variable" in message
    assert "typed" not in message and "0123456789" not in message


def test_a_key_in_an_env_field_of_the_cli_reaches_no_file_and_no_output(tmp_path: Path) -> None:
    typed = "tgp_v1_TypedTogetherKey0123456789abcdef"
    config = tmp_path / "rmft.toml"
    config.write_text(f'[run]\nruns_dir = "{tmp_path / "runs"}"\n')
    proc = cli(
        "run",
        str(config),
        "--set",
        "trainer.kind=together",
        "--set",
        f"trainer.api_key_env={typed}",
    )
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "trainer.api_key_env" in line and "not shown" in line
    assert "TypedTogetherKey" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()


def test_env_names_and_key_shapes() -> None:
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "my_gateway_key", "KEY_2", "GW"):
        assert not looks_like_key(name), name
    for value in (
        "sk-abc",
        "sk_live_0123",
        "3f2a9c0d4e5b6a7f8c9d0e1f2a3b4c5d",  # an Azure key: 32 hex digits
        "AbCdEfGh12345678",
        "key with spaces",
        "line\nbreak",
        "x" * 65,
    ):
        assert looks_like_key(value), value


def test_scrub_masks_urls_keys_and_remembered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scrub_url("https://u:p4ss@host.example/v1?api-version=1&api-key=abc") == (
        "https://***@host.example/v1?api-version=1&api-key=***"
    )
    assert scrub_url("https://host/x?sig=s1&key=k&token=t&se=2030") == (
        "https://host/x?sig=***&key=***&token=***&se=2030"
    )
    assert scrub_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("MY_GATEWAY_TOKEN", "gw-secret-value")
    text = scrub(
        "failed: POST http://me:pw@h/v1 Bearer abc.def sk-live12345678 gw-secret-value "
        "b'second\\nhalf-of-it'"
    )
    assert text == "failed: POST http://***@h/v1 Bearer *** *** *** b'second\\nhalf-of-it'"
    monkeypatch.setenv("ODD_KEY", "first-part-x\nsecond-part-y")
    with pytest.raises(ConfigError, match="ODD_KEY holds a line break at character 13 of 26"):
        read_secret("ODD_KEY")
    assert scrub("saw first-part-x and second-part-y") == "saw *** and ***"
