"""`rmft-api parse-failures`: rejected replies by kind, lenient takes and truncations per phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from rmft_api.config import config_from_dict
from rmft_api.envs.scenarios import build_scenario
from rmft_api.envs.text import TextEpisode
from rmft_api.parse_failures import ParseFailureReport, phase_failures, render_parse_failures
from rmft_api.schema import Usage

CONFIG = """
[run]
seed = 1
runs_dir = "{runs}"
[env]
preset = "easy"
horizon = 3
[prompt]
transcript = "single_turn"
[parse]
max_reprompts = 1
fallback = "forfeit"
[policy]
spec = "scripted/garbage"
[rollout]
scenarios = 2
rollouts_per_scenario = 2
[iterations]
count = 1
[eval]
scenarios = 2
baselines = ["uniform"]
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
    )


def test_parse_failures_of_a_real_run_directory(tmp_path: Path) -> None:
    config = tmp_path / "rmft.toml"
    config.write_text(CONFIG.format(runs=tmp_path / "runs"))
    proc = cli("run", str(config))
    # Nothing parses, so selection keeps nothing: the run stops there, its episodes on disk.
    assert proc.returncode != 0 and "selection kept no episode" in proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    shown = cli("parse-failures", str(run), "--examples", "1", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout.strip().splitlines()[-1])
    phases = {(p["iteration"], p["phase"]): p for p in report["phases"]}
    assert set(phases) == {(0, "eval"), (0, "rollout")}
    for p, episodes in ((phases[0, "eval"], 2), (phases[0, "rollout"], 4)):
        assert p["episodes"] == episodes and p["rounds"] == 3 * episodes
        assert p["unparsed_rounds"] == p["rounds"] and p["lenient"] == 0
        # One reply and one re-prompted reply per round, both without a marker.
        assert p["attempts"] == p["failed"] == 2 * p["rounds"]
        (kind,) = p["kinds"]
        assert kind["category"] == "no_marker" and kind["count"] == p["failed"]
        assert kind["examples"] == ["I would rather not say which one."]
    assert "iter 0 · eval: 6 rounds, 6 unparsed (100.0%)" in shown.stdout
    missing = cli("parse-failures", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "not a run directory" in missing.stderr


def test_counts_by_kind_lenient_and_truncated() -> None:
    cfg = config_from_dict(
        {
            "env": {"kind": "mab", "num_arms": 3, "horizon": 4},
            "parse": {"answer_line": "unique_name", "max_reprompts": 0},
        }
    )
    scenario = build_scenario(cfg, split="train", index=0)
    names = scenario.context.arm_names
    ep = TextEpisode(scenario, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(0))
    ep.submit(f"ANSWER: I pick {names[0]}")  # lenient
    ep.submit(f"ANSWER: {names[0]} or {names[1]}", truncated=True)  # several names, cut
    ep.submit("Let me think about it", truncated=True)  # no marker, cut
    ep.submit(f"ANSWER: {names[2]}")
    record = ep.to_episode(
        episode_id="e", iteration=2, rollout=0, policy_spec="scripted/x", usage=Usage()
    )
    p = phase_failures([record], iteration=2, phase="eval")
    assert (p.rounds, p.attempts, p.failed, p.unparsed_rounds) == (4, 4, 2, 2)
    assert (p.lenient, p.truncated) == (1, 2)
    assert [(k.category, k.count, k.truncated) for k in p.kinds] == [
        ("no_marker", 1, 1),
        ("several_names", 1, 1),
    ]
    lines = render_parse_failures(ParseFailureReport(run="r", phases=[p]))
    assert lines[0].startswith("iter 2 · eval: 4 rounds, 2 unparsed (50.0%), 1 lenient (25.0%)")
