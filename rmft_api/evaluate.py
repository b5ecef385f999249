"""Held-out evaluation: a policy and the classic agents on the same held-out draws.

Held-out scenarios come from the `heldout` seed stream, which is disjoint from training by
construction (a different salt in `scenario_seed`); `check_disjoint` verifies it for every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from rmft_api import regret
from rmft_api.agents.base import BanditTrace, FullInfoTrace
from rmft_api.config import Config
from rmft_api.envs.base import BanditInstance, child_rng
from rmft_api.envs.scenarios import Scenario, build_scenarios
from rmft_api.errors import StateError
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.rollout import read_episodes, run_rollouts
from rmft_api.rollout_progress import ProgressCallback
from rmft_api.schema import Episode, Usage

_EVAL_KEY = 0xE7A1  # salt of the bootstrap streams, apart from every other use of run.seed


class RegretSummary(BaseModel):
    """Mean regret over episodes with its bootstrap 95% CI."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    ci_low: float
    ci_high: float
    n: int


class EvalMetrics(BaseModel):
    """metrics.json of one policy on the held-out scenarios."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    iteration: int
    policy: str
    episodes: int
    complete: int
    regret: RegretSummary | None  # None when no episode completed
    curve: list[float]  # mean cumulative regret by round (complete episodes)
    parse_failure_rate: float
    suff_fail_freq: float | None  # bandits, at T/2
    k_min_frac: float | None  # bandits, over the whole horizon
    growth_exponent: float | None
    trend_p_value: float | None
    baselines: dict[str, RegretSummary]
    baseline_curves: dict[str, list[float]]
    usage: Usage


def heldout_scenarios(cfg: Config) -> list[Scenario]:
    return build_scenarios(cfg, split="heldout", count=cfg.eval.scenarios)


def check_disjoint(train: Sequence[Scenario], heldout: Sequence[Scenario]) -> None:
    """Refuse to evaluate on a scenario seed that training also used."""
    shared = {s.seed for s in train} & {s.seed for s in heldout}
    if shared:
        raise StateError(
            f"{len(shared)} held-out scenario seed(s) also appear in training "
            f"(e.g. {min(shared)}); held-out results would be contaminated"
        )


def _summary(values: Sequence[float], rng: np.random.Generator) -> RegretSummary:
    mean, low, high = regret.bootstrap_ci(np.asarray(values, dtype=np.float64), rng)
    return RegretSummary(mean=mean, ci_low=low, ci_high=high, n=len(values))


def episode_curve(episode: Episode) -> np.ndarray:
    """Cumulative expected regret by round, from the hidden truth recorded in each step."""
    if episode.env == "fol":
        policies = np.array([s.policy or [0.0] * episode.num_arms for s in episode.steps])
        vectors = np.array([s.reward_vector or [0.0] * episode.num_arms for s in episode.steps])
        return regret.full_info_regret_curve(policies, vectors)
    steps = np.array([s.best_expected_reward - s.expected_reward for s in episode.steps])
    return regret.cumulative(steps)


def agent_trace(name: str, scenario: Scenario, cfg: Config) -> BanditTrace | FullInfoTrace:
    """A classic agent's play on a scenario (same seeds as agent_regret and the baselines)."""
    from rmft_api.agents.base import (
        BanditAgent,
        ExpertsAgent,
        run_bandit,
        run_full_info,
    )
    from rmft_api.agents.registry import agent_names, make_agent

    known = agent_names(scenario.env_kind)
    rng = child_rng(cfg.run.seed, scenario.index, known.index(name))
    agent = make_agent(name, cfg.agents, env_kind=scenario.env_kind, instance=scenario.instance)
    instance = scenario.instance
    if isinstance(instance, BanditInstance):
        assert isinstance(agent, BanditAgent)
        return run_bandit(agent, instance, rng)
    assert isinstance(agent, ExpertsAgent)
    return run_full_info(agent, instance, rng)


def _agent_curve(name: str, scenario: Scenario, cfg: Config) -> np.ndarray:
    """A classic agent's cumulative regret curve on a scenario."""
    trace = agent_trace(name, scenario, cfg)
    instance = scenario.instance
    if isinstance(instance, BanditInstance):
        assert isinstance(trace, BanditTrace)
        return regret.cumulative(regret.action_regret_steps(instance.means, trace.actions))
    assert isinstance(trace, FullInfoTrace)
    return regret.full_info_regret_curve(trace.policies, trace.reward_vectors)


def summarize(
    episodes: Sequence[Episode],
    scenarios: Sequence[Scenario],
    cfg: Config,
    *,
    iteration: int,
    policy: str,
) -> EvalMetrics:
    """Metrics of `episodes` (one policy on `scenarios`) and of the baselines on the same draws."""
    complete = [e for e in episodes if e.status == "complete"]
    by_id = {s.scenario_id: s for s in scenarios}
    rng = child_rng(cfg.run.seed, _EVAL_KEY, iteration)
    usage = Usage()
    for e in episodes:
        usage = usage + e.usage
    statuses = [s.status for e in complete for s in e.steps]
    summary = _summary([e.regret for e in complete], rng) if complete else None
    curve: list[float] = []
    growth = trend_p = sff = kmf = None
    if complete:
        mean_curve = np.mean([episode_curve(e) for e in complete], axis=0)
        curve = [float(x) for x in mean_curve]
        if mean_curve[-1] > 0 and len(mean_curve) >= 4:
            growth = regret.growth_exponent(mean_curve)
            trend_p = regret.trend_test(mean_curve).p_value
        if complete[0].env != "fol":
            horizon, k = complete[0].horizon, complete[0].num_arms
            actions = np.array(
                [[s.action if s.action is not None else -1 for s in e.steps] for e in complete]
            )
            best = np.array(
                [
                    by_id[e.scenario_id].instance.means.argmax(axis=1)  # type: ignore[union-attr]
                    for e in complete
                ]
            )
            sff = regret.suff_fail_freq(actions, best, t=max(1, horizon // 2))
            kmf = regret.k_min_frac(np.where(actions < 0, 0, actions), num_arms=k, t=horizon)
    played = [by_id[e.scenario_id] for e in complete] or list(scenarios)
    baselines: dict[str, RegretSummary] = {}
    baseline_curves: dict[str, list[float]] = {}
    for j, name in enumerate(cfg.eval.baselines):
        curves = [_agent_curve(name, s, cfg) for s in played]
        baselines[name] = _summary(
            [float(c[-1]) for c in curves], child_rng(cfg.run.seed, _EVAL_KEY, iteration, j + 1)
        )
        baseline_curves[name] = [float(x) for x in np.mean(curves, axis=0)]
    return EvalMetrics(
        iteration=iteration,
        policy=policy,
        episodes=len(episodes),
        complete=len(complete),
        regret=summary,
        curve=curve,
        parse_failure_rate=regret.parse_failure_rate(statuses) if statuses else 0.0,
        suff_fail_freq=sff,
        k_min_frac=kmf,
        growth_exponent=growth,
        trend_p_value=trend_p,
        baselines=baselines,
        baseline_curves=baseline_curves,
        usage=usage,
    )


async def evaluate_policy(
    provider: Provider,
    cfg: Config,
    *,
    iteration: int,
    out: Path,
    sampling: SamplingParams,
    progress: ProgressCallback | None = None,
    budget_usd: float | None = None,
) -> EvalMetrics:
    """Play the held-out scenarios (resuming `out`), then summarize against the baselines."""
    scenarios = heldout_scenarios(cfg)
    if cfg.eval.temperature is not None:
        sampling = sampling.model_copy(update={"temperature": cfg.eval.temperature})
    await run_rollouts(
        provider,
        scenarios,
        cfg=cfg,
        iteration=iteration,
        rollouts_per_scenario=cfg.eval.rollouts_per_scenario,
        out=out,
        sampling=sampling,
        progress=progress,
        budget_usd=budget_usd,
    )
    ids = {s.scenario_id for s in scenarios}
    episodes = [e for e in read_episodes(out) if e.scenario_id in ids and e.iteration == iteration]
    # Completion order is arbitrary under concurrency; the bootstrap must not depend on it.
    episodes.sort(key=lambda e: (e.scenario_index, e.rollout))
    return summarize(episodes, scenarios, cfg, iteration=iteration, policy=provider.spec)
