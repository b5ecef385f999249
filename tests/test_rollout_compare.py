"""`rmft-api rollout`: one cache file name, and the policy against the agents, paired."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rmft_api.cli import app
from rmft_api.rollout_cache import CACHE_FILE


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
