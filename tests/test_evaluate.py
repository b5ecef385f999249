"""Held-out evaluation statistics: the resampling unit, paired differences, the agents' seeds,
K·MinFrac with forfeits, and what global-quantile selection keeps. Real episodes come from the
real rollout engine (scripted and classic-agent providers); hand-made ones where a case must be
exact."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmft_api import regret
from rmft_api.agent_plays import play_agent
from rmft_api.config import Config, config_from_dict
from rmft_api.envs.base import child_rng
from rmft_api.evaluate import EvalMetrics, evaluate_policy, heldout_scenarios, summarize
from rmft_api.providers.registry import resolve_policy, sampling_params
from rmft_api.rollout import read_episodes
from rmft_api.schema import Attempt, Episode, Step
from rmft_api.selection import select_episodes
from rmft_api.store import read_json

SCENARIOS, ROLLOUTS, HORIZON, GAP = 40, 4, 20, 0.2


def _cfg(tmp: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "run": {"seed": 11, "runs_dir": str(tmp)},
        "env": {"kind": "mab", "num_arms": 5, "horizon": HORIZON, "gap": GAP},
        "prompt": {"transcript": "single_turn", "contexts": ["buttons"]},
        "eval": {"scenarios": SCENARIOS, "rollouts_per_scenario": ROLLOUTS},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def _evaluate(cfg: Config, spec: str, out: Path) -> EvalMetrics:
    provider = resolve_policy(cfg, spec=spec)

    async def go() -> EvalMetrics:
        try:
            return await evaluate_policy(
                provider, cfg, iteration=0, out=out, sampling=sampling_params(cfg)
            )
        finally:
            await provider.aclose()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def first_arm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, EvalMetrics, Path]:
    """scripted/first on 40 held-out scenarios × 4 episodes: the 4 episodes of a scenario are
    identical (regret 0 or gap·T), the most correlated a scenario's episodes can be."""
    tmp = tmp_path_factory.mktemp("first")
    cfg = _cfg(tmp, eval={"baselines": ["ucb1", "thompson", "uniform"]})
    out = tmp / "eval" / "episodes.jsonl"
    return cfg, _evaluate(cfg, "scripted/first", out), out


def test_the_ci_resamples_scenarios_not_episodes(
    first_arm: tuple[Config, EvalMetrics, Path],
) -> None:
    cfg, metrics, out = first_arm
    episodes = sorted(read_episodes(out), key=lambda e: (e.scenario_index, e.rollout))
    values = [e.regret for e in episodes]
    ids = [e.scenario_id for e in episodes]
    assert len(set(ids)) == SCENARIOS and len(values) == SCENARIOS * ROLLOUTS
    assert metrics.regret is not None
    assert (metrics.regret.n, metrics.regret.scenarios) == (SCENARIOS * ROLLOUTS, SCENARIOS)
    rng = child_rng(cfg.run.seed, 0xE7A1, 0)  # evaluate's stream for iteration 0
    expected = regret.scenario_bootstrap_ci(values, ids, rng)
    assert (metrics.regret.ci_low, metrics.regret.ci_high) == (expected.low, expected.high)
    # Resampling the 160 episodes as if independent (the old unit) gives an interval about
    # √4 = 2 times too narrow here.
    _, low, high = regret.bootstrap_ci(values, child_rng(cfg.run.seed, 0xE7A1, 0))
    assert metrics.regret.ci_high - metrics.regret.ci_low > 1.6 * (high - low)


def test_baselines_average_several_agent_seeds(
    first_arm: tuple[Config, EvalMetrics, Path],
) -> None:
    cfg, metrics, _ = first_arm
    seeds = cfg.agents.seeds_per_scenario
    assert seeds == 10 and metrics.baseline_seeds == seeds
    scenarios = heldout_scenarios(cfg)
    plays = [play_agent("thompson", s, cfg) for s in scenarios]
    assert all(p.curves.shape == (seeds, HORIZON) for p in plays)
    thompson = metrics.baselines["thompson"]
    assert (thompson.n, thompson.scenarios) == (SCENARIOS * seeds, SCENARIOS)
    assert thompson.mean == pytest.approx(np.mean([p.mean_regret for p in plays]))
    # Seed 0 alone is the single play earlier versions used; the mean over ten differs from it.
    single = cfg.model_copy(
        update={"agents": cfg.agents.model_copy(update={"seeds_per_scenario": 1})}
    )
    one = [play_agent("thompson", s, single).mean_regret for s in scenarios]
    assert one == [float(p.final[0]) for p in plays]
    assert np.mean(one) != pytest.approx(thompson.mean)


def test_policy_minus_agent_is_paired_per_scenario(
    first_arm: tuple[Config, EvalMetrics, Path],
) -> None:
    _, metrics, _ = first_arm
    assert metrics.regret is not None
    for name in ("ucb1", "thompson", "uniform"):
        d = metrics.differences[name]
        assert d.scenarios == SCENARIOS
        assert d.mean == pytest.approx(metrics.regret.mean - metrics.baselines[name].mean)
        assert d.ci_low <= d.mean <= d.ci_high


def test_paired_differences_cancel_what_the_scenarios_share() -> None:
    rng = child_rng(1)
    base = {f"s{i}": float(v) for i, v in enumerate(rng.uniform(0, 20, 50))}
    shifted = {k: v + 1.0 for k, v in base.items()}
    d = regret.paired_difference_ci(shifted, base, child_rng(2))
    assert d is not None and d.mean == pytest.approx(1.0)
    assert d.high - d.low < 1e-9  # the shared spread is gone; an unpaired CI would span ±3
    assert regret.paired_difference_ci({"a": 1.0}, {"b": 1.0}, rng) is None


# ---------------------------------------------------------------- hand-made episodes


def _episode(cfg: Config, index: int, actions: list[int | None], *, rollout: int = 0) -> Episode:
    """An episode of held-out scenario `index` playing `actions` (None = forfeited round)."""
    scenario = heldout_scenarios(cfg)[index]
    means = scenario.instance.means  # type: ignore[union-attr]
    steps = []
    for t, a in enumerate(actions):
        best = float(means[t].max())
        steps.append(
            Step(
                t=t,
                prompt="",
                attempts=[Attempt(reply="")],
                action=a,
                status="ok" if a is not None else "forfeit",
                expected_reward=float(means[t, a]) if a is not None else 0.0,
                best_expected_reward=best,
            )
        )
    total = sum(s.best_expected_reward - s.expected_reward for s in steps)
    return Episode(
        episode_id=f"{scenario.scenario_id}-r{rollout}",
        scenario_id=scenario.scenario_id,
        scenario_index=index,
        rollout=rollout,
        seed=scenario.seed,
        split="heldout",
        env="mab",
        num_arms=scenario.instance.num_arms,
        horizon=len(actions),
        context="buttons",
        arm_names=list(scenario.context.arm_names),
        policy_spec="hand",
        template_hash="x",
        system_prompt="",
        steps=steps,
        regret=total,
        realised_regret=total,
    )


def test_forfeited_rounds_are_not_pulls_of_arm_0(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        env={"num_arms": 2, "horizon": 4},
        eval={"scenarios": 1, "rollouts_per_scenario": 1, "baselines": []},
    )
    # Two forfeits, then arm 1 twice: arm 0 was never pulled, so K·MinFrac is 0. Counting the
    # forfeits as arm 0 (as before) made it look perfectly even: 2 · 2/4 = 1.
    episode = _episode(cfg, 0, [None, None, 1, 1])
    metrics = summarize([episode], heldout_scenarios(cfg), cfg, iteration=0, policy="hand")
    assert metrics.k_min_frac == 0.0
    assert metrics.parse_failure_rate == 0.5


def test_lenient_rate_counts_rounds_taken_from_a_sentence(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        env={"num_arms": 2, "horizon": 4},
        eval={"scenarios": 1, "rollouts_per_scenario": 1, "baselines": []},
    )
    episode = _episode(cfg, 0, [0, 1, 1, 0])
    steps = [s.model_copy(update={"lenient": s.t == 2}) for s in episode.steps]
    episode = episode.model_copy(update={"steps": steps})
    metrics = summarize([episode], heldout_scenarios(cfg), cfg, iteration=0, policy="hand")
    assert metrics.lenient_rate == 0.25 and metrics.parse_failure_rate == 0.0


def test_global_quantile_keeps_every_episode_at_or_below_the_quantile(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        env={"num_arms": 2, "horizon": 5, "gap": 0.5},
        eval={"scenarios": 5, "rollouts_per_scenario": 1},
        selection={"mode": "global_quantile", "quantile": 0.4, "drop_fallback": False},
    )
    scenarios = heldout_scenarios(cfg)
    # Wrong pulls 0, 1, 1, 1, 2 (regret 0, .5, .5, .5, 1): the 0.4-quantile of five regrets is
    # the 2nd smallest, 0.5, and three episodes tie there. All of them are at or below it.
    wrong = [0, 1, 1, 1, 2]
    episodes = []
    for i, n in enumerate(wrong):
        best = scenarios[i].instance.best_arm(0)  # type: ignore[union-attr]
        episodes.append(_episode(cfg, i, [1 - best] * n + [best] * (5 - n)))
    assert [e.regret for e in episodes] == pytest.approx([0.0, 0.5, 0.5, 0.5, 1.0])
    kept, report = select_episodes(
        episodes, cfg, scenario_of=lambda e: scenarios[e.scenario_index], baseline_regret=len
    )
    assert sorted(e.regret for e in kept) == pytest.approx([0.0, 0.5, 0.5, 0.5])
    assert report.kept == 4  # ⌈0.4 · 5⌉ = 2 before ties were cut by scenario index


def test_metrics_on_disk_from_before_the_new_fields_still_read(
    first_arm: tuple[Config, EvalMetrics, Path], tmp_path: Path
) -> None:
    _, metrics, _ = first_arm
    old = metrics.model_dump(mode="json")
    for key in ("growth_p_value", "no_regret", "differences", "baseline_seeds"):
        old.pop(key)
    for summary in [old["regret"], *old["baselines"].values()]:
        summary.pop("scenarios")
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    back = read_json(path, EvalMetrics)
    assert back.differences == {} and back.baseline_seeds == 1 and not back.no_regret
    assert back.regret is not None and back.regret.scenarios is None
