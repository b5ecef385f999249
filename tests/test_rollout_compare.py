"""`rmft-api rollout`: one cache file name, and the policy against the agents, paired."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rmft_api.cli import app
from rmft_api.rollout_cache import CACHE_FILE
from rmft_api.store import RunLock


def test_rollout_command_caches_where_the_pipeline_does_and_pairs_the_agents(
    tmp_path: Path,
) -> None:
    out = tmp_path / "roll"
    args = ["rollout", "--out", str(out), "--policy", "agent/thompson", "--scenarios", "6"]
    args += ["--rollouts", "2", "--json", "--set", "rollout.cache=true"]
    args += ["--set", "env.horizon=10", "--set", "agents.seeds_per_scenario=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # One name for the response cache, `run` and `rollout` alike (was responses.jsonl here).
    assert (out / CACHE_FILE).is_file() and not (out / "responses.jsonl").exists()
    assert CACHE_FILE == "cache.jsonl"
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["policy"]["scenarios"] == 6
    for name, diff in report["differences"].items():
        expected = report["policy"]["mean"] - report["baselines"][name]["mean"]
        assert abs(diff["mean"] - expected) < 1e-9
        assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    assert "policy − ucb1 (paired)" in result.output


def test_a_second_rollout_on_the_same_out_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Two `rollout --out DIR` at once used to both run and pay twice: the second is refused."""
    out = tmp_path / "roll"
    out.mkdir()
    args = ["rollout", "--out", str(out), "--policy", "agent/thompson", "--scenarios", "2"]
    args += ["--rollouts", "1", "--set", "rollout.cache=true", "--set", "env.horizon=5"]
    with RunLock(out):  # the first run, still working
        result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "locked by pid" in str(result.exception) + result.output
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    # Once the first is done, the directory is free again.
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "episodes.jsonl").is_file()
