"""The generalization grid: variants of the task, each on held-out scenarios of its own, played
by a real classic-agent policy (agent/ucb1) through the real rollout engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rmft_api.config import Config, config_from_dict
from rmft_api.envs.scenarios import load_library
from rmft_api.errors import ConfigError, StateError
from rmft_api.evaluate import EvalMetrics, heldout_scenarios
from rmft_api.generalization import (
    GridEntry,
    check_grid_disjoint,
    describe_variant,
    evaluate_grid,
    grid_dir,
    grid_entries,
    grid_spent_usd,
    read_grid,
    variant_config,
)
from rmft_api.pipeline import training_scenarios
from rmft_api.providers.agent import AgentProvider
from rmft_api.providers.registry import resolve_policy, sampling_params
from rmft_api.rollout import read_episodes
from rmft_api.run_status import requests_usd
from rmft_api.store import RunPaths

TRAIN_CONTEXTS = ["buttons", "portfolio"]
GRID: list[dict[str, Any]] = [
    {"name": "horizon-2x", "horizon_factor": 2},
    {"name": "arms-8", "env": {"num_arms": 8}},
    {"name": "gaussian", "env": {"noise": "gaussian"}},
    {"name": "unseen", "unseen_contexts": True},
    {"name": "nonstationary", "env": {"kind": "ns", "num_switches": 2}},
]


def make_config(grid: list[dict[str, Any]] = GRID, **eval_keys: Any) -> Config:
    return config_from_dict(
        {
            "run": {"seed": 11},
            "env": {"preset": "easy", "horizon": 8},
            "prompt": {"transcript": "single_turn", "contexts": TRAIN_CONTEXTS},
            "policy": {"spec": "agent/ucb1"},
            "rollout": {"scenarios": 4},
            "eval": {"scenarios": 5, "baselines": ["ucb1", "uniform"], "grid": grid, **eval_keys},
        }
    )


def test_each_variant_changes_what_it_names_and_nothing_else() -> None:
    cfg = make_config()
    entries = {e.name: e for e in grid_entries(cfg)}
    assert entries["horizon-2x"].cfg.env.horizon == 16
    assert entries["arms-8"].cfg.env.num_arms == 8 and entries["arms-8"].cfg.env.horizon == 8
    assert entries["gaussian"].cfg.env.noise == "gaussian"
    assert entries["nonstationary"].cfg.env.kind == "ns"
    unseen = entries["unseen"].cfg.prompt.contexts
    assert set(unseen) == set(load_library()) - set(TRAIN_CONTEXTS) and unseen
    for entry in entries.values():
        # The task changes; the policy, sampling and agents do not; no grid inside a grid.
        assert entry.cfg.policy == cfg.policy and entry.cfg.agents == cfg.agents
        assert entry.cfg.eval.grid == [] and entry.cfg.eval.scenarios == 5
        assert entry.cfg.run.seed != cfg.run.seed
    assert len({e.cfg.run.seed for e in entries.values()}) == len(entries)
    assert describe_variant(entries["arms-8"]) == "mab K=8 T=8 bernoulli"


def test_a_variant_keeps_its_scenarios_when_the_grid_is_reordered() -> None:
    forward = {e.name: e.cfg.run.seed for e in grid_entries(make_config())}
    backward = {e.name: e.cfg.run.seed for e in grid_entries(make_config(GRID[::-1]))}
    assert forward == backward


def test_preset_variant_starts_from_the_preset_and_drops_baselines_that_do_not_apply() -> None:
    cfg = make_config([{"name": "experts", "env": {"preset": "fol-iid", "horizon": 6}}])
    (entry,) = grid_entries(cfg)
    assert (entry.cfg.env.kind, entry.cfg.env.num_arms, entry.cfg.env.horizon) == ("fol", 5, 6)
    assert entry.cfg.eval.baselines == ["uniform"]  # ucb1 does not play full information


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([{"name": "x", "env": {"num_arms": 1}}], r"grid variant 'x' env: key 'num_arms': got 1"),
        ([{"name": "x", "env": {"arms": 3}}], r"unknown key 'arms'; allowed keys here: .*num_arms"),
        ([{"name": "x", "horizon_factor": 20000}], r"horizon_factor"),
        ([{"name": "x"}, {"name": "x"}], r"names must be unique; repeated: x"),
        ([{"name": "../up"}], r"eval\.grid\[0\]\.name"),
        ([{"name": "x", "prompt": {"window": 0}}], r"grid variant 'x' prompt: key 'window'"),
    ],
)
def test_bad_variants_are_refused_when_the_config_is_loaded(
    grid: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(grid)


def test_unseen_contexts_need_named_training_contexts() -> None:
    data = make_config([]).model_dump(mode="json")
    data["prompt"]["contexts"] = []
    data["eval"]["grid"] = [{"name": "unseen", "unseen_contexts": True}]
    with pytest.raises(ConfigError, match=r"unseen_contexts needs prompt\.contexts"):
        config_from_dict(data)
    data["prompt"]["contexts"] = sorted(load_library())
    cfg = config_from_dict(data)
    with pytest.raises(ConfigError, match="nothing left to play"):
        variant_config(cfg, cfg.eval.grid[0])


def test_overlapping_seeds_are_refused() -> None:
    cfg = make_config()
    # A "variant" under the run's own seed would replay the main held-out scenarios.
    clash = GridEntry(variant=cfg.eval.grid[0], cfg=cfg)
    with pytest.raises(StateError, match="against the main held-out set"):
        check_grid_disjoint([clash], training_scenarios(cfg, 0), cfg)
    check_grid_disjoint(grid_entries(cfg), training_scenarios(cfg, 0), cfg)


def run_grid(cfg: Config, out: Path, provider: Any = None) -> dict[str, EvalMetrics]:
    return asyncio.run(
        evaluate_grid(
            provider or resolve_policy(cfg),
            grid_entries(cfg),
            iteration=0,
            out_dir=out,
            sampling=sampling_params(cfg),
        )
    )


def test_grid_plays_each_variant_on_its_own_scenarios(tmp_path: Path) -> None:
    cfg = make_config()
    results = run_grid(cfg, tmp_path / "grid")
    assert list(results) == [v["name"] for v in GRID]
    assert read_grid(tmp_path) == results
    seeds: dict[str, set[int]] = {}
    for name, metrics in results.items():
        episodes = read_episodes(tmp_path / "grid" / name / "episodes.jsonl")
        assert len(episodes) == 5 and metrics.complete == 5 and metrics.regret is not None
        assert metrics.parse_failure_rate == 0.0
        assert set(metrics.baselines) == {"ucb1", "uniform"}
        seeds[name] = {e.seed for e in episodes}
        by_name = {"horizon-2x": (4, 16), "arms-8": (8, 8)}
        k, horizon = by_name.get(name, (4, 8))
        assert all((e.num_arms, e.horizon, len(e.steps)) == (k, horizon, horizon) for e in episodes)
        if name == "unseen":
            assert not {e.context for e in episodes} & set(TRAIN_CONTEXTS)
        if name == "nonstationary":
            assert all(e.env == "ns" for e in episodes)
    main = {s.seed for s in heldout_scenarios(cfg)}
    train = {s.seed for i in range(3) for s in training_scenarios(cfg, i)}
    everything = [main, train, *seeds.values()]
    assert sum(len(s) for s in everything) == len(set().union(*everything))
    # Gaussian rewards are not 0/1 draws.
    gauss = read_episodes(tmp_path / "grid" / "gaussian" / "episodes.jsonl")
    assert any(0 < s.reward < 1 for e in gauss for s in e.steps)


def test_a_killed_grid_evaluation_resumes_where_it_stopped(tmp_path: Path) -> None:
    cfg = make_config(GRID[:2])
    first = run_grid(cfg, tmp_path)
    # Lose the second variant's metrics and its last episode, as a kill mid-variant would.
    (tmp_path / "arms-8" / "metrics.json").unlink()
    episodes = tmp_path / "arms-8" / "episodes.jsonl"
    lines = episodes.read_text().splitlines(keepends=True)
    episodes.write_text("".join(lines[:-1]))
    provider = resolve_policy(cfg)
    assert isinstance(provider, AgentProvider)
    again = run_grid(cfg, tmp_path, provider)
    # The lost episode's 8 rounds replay from the variant's response cache: nothing is asked.
    assert provider.requests == 0
    assert (tmp_path / "arms-8" / "cache.jsonl").is_file()
    assert again == first


def test_grid_spending_counts_towards_the_budget(tmp_path: Path) -> None:
    cfg = make_config(GRID[:2])
    run = RunPaths(tmp_path)
    run_grid(cfg, grid_dir(run.iteration(0).root))
    run_grid(cfg, grid_dir(run.iteration(1).root))
    assert grid_spent_usd(run) == 0.0  # classic agents cost nothing
    # Price every grid episode of iteration 1 at 1/4 dollar, as an API policy's would be.
    for path in grid_dir(run.iteration(1).root).glob("*/episodes.jsonl"):
        priced = [
            e.model_copy(update={"usage": e.usage.model_copy(update={"cost_usd": 0.25})})
            for e in read_episodes(path)
        ]
        path.write_text("".join(e.model_dump_json() + "\n" for e in priced))
    assert grid_spent_usd(run) == pytest.approx(0.25 * 2 * 5)
    # ... and shows in the iteration's $ of `rmft-api status`.
    assert requests_usd(run.iteration(1)) == pytest.approx(0.25 * 2 * 5)
    assert requests_usd(run.iteration(0)) == 0.0
