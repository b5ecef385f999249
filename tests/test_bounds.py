"""Validate before paying, and stream what is allowed (issue 14, item 9): bad sizes are config
errors naming the key (tests/test_config.py has the rest); the scenarios of a large M are built as
they are played, so a huge M with a small budget stops on the budget, quickly and in little
memory."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rmft_api.config import config_from_dict
from rmft_api.envs.scenarios import ScenarioRange, build_scenario, build_scenarios
from rmft_api.errors import ConfigError
from rmft_api.evaluate import check_disjoint, heldout_scenarios
from rmft_api.providers.registry import resolve
from rmft_api.rollout_report import rollout_and_compare


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"trainer": {"kind": "together", "batch_size": 0}},
            "key 'trainer.batch_size': got 0; Input should be greater than or equal to 1, or 'max'",
        ),
        (
            {"rollout": {"scenarios": 100_000, "rollouts_per_scenario": 20}},
            "2,000,000 episodes per iteration; at most 1,000,000",
        ),
        (
            {"eval": {"grid": [{"name": "big", "scenarios": 10**7}]}},
            "key 'eval.grid[0].scenarios'",
        ),
    ],
)
def test_bad_sizes_are_refused_at_load_naming_the_key(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    assert expected in str(caught.value)


def test_rollout_flags_obey_the_config_bounds(tmp_path: Path) -> None:
    cfg = config_from_dict({"policy": {"spec": "agent/ucb1"}})
    with pytest.raises(ConfigError, match=r"--scenarios / --rollouts: key 'scenarios': got 10"):
        rollout_and_compare(cfg, out_dir=tmp_path / "r", scenarios=10**9)
    assert not (tmp_path / "r").exists()


def test_a_scenario_range_builds_only_what_is_asked_for() -> None:
    cfg = config_from_dict({"run": {"seed": 3}})
    scenarios = build_scenarios(cfg, split="train", count=10**6, start=10**6)
    assert isinstance(scenarios, ScenarioRange) and len(scenarios) == 10**6
    assert scenarios._recent == {}  # nothing built yet
    third = scenarios[2]
    again = build_scenario(cfg, split="train", index=10**6 + 2)
    assert (third.scenario_id, third.seed) == (again.scenario_id, again.seed)
    assert (third.instance.means == again.instance.means).all()  # type: ignore[union-attr]
    assert scenarios[-1].index == 2 * 10**6 - 1
    assert list(scenarios.ids())[:2] == ["train-1000000", "train-1000001"]
    assert len(scenarios._recent) == 2
    # The disjointness check streams the training seeds without building a scenario.
    check_disjoint(scenarios, heldout_scenarios(cfg))
    assert len(scenarios._recent) == 2


WRAPPER = """
import resource, subprocess, sys
try:
    proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)
except subprocess.TimeoutExpired:
    print("timed out"); sys.exit(3)
sys.stderr.write(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, proc.returncode)
"""


def test_a_hundred_thousand_scenarios_and_a_small_budget_stop_on_the_budget_in_little_memory(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    server = start_sandbox(resolve("agent/ucb1", seed=0))
    rollout = [
        *("rollout", "--out", str(tmp_path / "r"), "--policy", "openai/gpt-4o-mini"),
        *("--scenarios", "100000", "--rollouts", "1"),
        *("--set", f"policy.base_url={server.base_url}", "--set", "budget.max_usd=0.0005"),
        *("--set", "env.horizon=20", "--set", "policy.concurrency=8"),
    ]
    # A wrapper process runs the CLI as its only child, so its rusage is the CLI's peak RSS.
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "rmft_api.cli", *rollout],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    peak_kb, rc = map(int, proc.stdout.split())
    assert rc == 1, proc.stderr
    assert "error: budget.max_usd" in proc.stderr
    assert 0 < server.state.completions < 200
    # The old code built all 100,000 scenarios (about 1 GB, a minute) before the first request.
    assert peak_kb < 250_000
