"""Held-out evaluation: a policy and the classic agents on the same held-out draws.

Held-out scenarios come from the `heldout` seed stream, which is disjoint from training by
construction (a different salt in `scenario_seed`); `check_disjoint` verifies it for every run.
Every mean comes with a CI that resamples scenarios (`regret.scenario_bootstrap_ci`), each
classic agent is the mean of `agents.seeds_per_scenario` plays per scenario (agent_plays.py), and
the policy − agent difference per scenario has its own paired CI: the one that says "better".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rmft_api import regret
from rmft_api.agent_plays import play_agent
from rmft_api.config import Config
from rmft_api.envs.base import child_rng
from rmft_api.envs.scenarios import (
    Scenario,
    ScenarioRange,
    build_scenarios,
    scenario_ids,
    scenario_seeds,
)
from rmft_api.errors import EvaluationError, StateError
from rmft_api.growth import curve_growth
from rmft_api.ledger import Ledger
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.rollout import read_episodes, run_rollouts
from rmft_api.rollout_cache import ResponseCache, cache_path
from rmft_api.rollout_progress import ProgressCallback
from rmft_api.schema import SCHEMA_VERSION, Episode, Usage
from rmft_api.store import read_json

_EVAL_KEY = 0xE7A1  # salt of the bootstrap streams, apart from every other use of run.seed
_DIFF_KEY = 0xD1F  # ... and of the paired differences' streams


class RegretSummary(BaseModel):
    """Mean regret over scenarios with its bootstrap 95% CI (scenarios resampled)."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    ci_low: float
    ci_high: float
    n: int  # values averaged: episodes, agent plays, or (differences) scenarios
    scenarios: int | None = None  # the resampled units; None in records written before it


class EvalMetrics(BaseModel):
    """metrics.json of one policy on the held-out scenarios."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    iteration: int
    policy: str
    episodes: int
    complete: int
    regret: RegretSummary | None  # None when no episode completed
    curve: list[float]  # mean cumulative regret by round (complete episodes)
    parse_failure_rate: float
    suff_fail_freq: float | None  # bandits, SuffFailFreq(T/2) (regret.half_horizon_round)
    k_min_frac: float | None  # bandits, over the whole horizon; forfeited rounds pull no arm
    growth_exponent: float | None  # None when the curve has no regret or no fit
    trend_p_value: float | None
    baselines: dict[str, RegretSummary]
    baseline_curves: dict[str, list[float]]
    usage: Usage
    growth_p_value: float | None = None  # regression test of H0: β ≥ 1 (growth.py)
    no_regret: bool = False  # the mean curve ends at or below zero
    # Policy − agent regret, per scenario, paired bootstrap CI over the scenarios both played.
    differences: dict[str, RegretSummary] = Field(default_factory=dict)
    baseline_seeds: int = 1  # plays per scenario each agent's figures average (agents.seeds_...)
    # Share of rounds whose answer parse.answer_line = unique_name took from a sentence.
    lenient_rate: float = 0.0


def heldout_scenarios(cfg: Config) -> ScenarioRange:
    return build_scenarios(cfg, split="heldout", count=cfg.eval.scenarios)


def check_disjoint(train: Iterable[Scenario], heldout: Iterable[Scenario]) -> None:
    """Refuse to evaluate on a scenario seed that training also used. The training seeds are
    streamed (a ScenarioRange computes them without building a scenario): memory holds the
    held-out seeds only."""
    held = set(scenario_seeds(heldout))
    shared = {seed for seed in scenario_seeds(train) if seed in held}
    if shared:
        raise StateError(
            f"{len(shared)} held-out scenario seed(s) also appear in training "
            f"(e.g. {min(shared)}); held-out results would be contaminated"
        )


def scenario_summary(
    values: Sequence[float], scenarios: Sequence[str], rng: np.random.Generator
) -> RegretSummary:
    """`regret.scenario_bootstrap_ci` as a record: per-scenario means, scenarios resampled."""
    est = regret.scenario_bootstrap_ci(np.asarray(values, dtype=np.float64), scenarios, rng)
    return RegretSummary(
        mean=est.mean, ci_low=est.low, ci_high=est.high, n=est.values, scenarios=est.scenarios
    )


def difference_summary(
    a: dict[str, float], b: dict[str, float], rng: np.random.Generator
) -> RegretSummary | None:
    """a − b per shared scenario (`regret.paired_difference_ci`) as a record."""
    est = regret.paired_difference_ci(a, b, rng)
    if est is None:
        return None
    return RegretSummary(
        mean=est.mean, ci_low=est.low, ci_high=est.high, n=est.values, scenarios=est.scenarios
    )


def episode_curve(episode: Episode) -> np.ndarray:
    """Cumulative expected regret by round, from the hidden truth recorded in each step."""
    if episode.env == "fol":
        policies = np.array([s.policy or [0.0] * episode.num_arms for s in episode.steps])
        vectors = np.array([s.reward_vector or [0.0] * episode.num_arms for s in episode.steps])
        return regret.full_info_regret_curve(policies, vectors)
    steps = np.array([s.best_expected_reward - s.expected_reward for s in episode.steps])
    return regret.cumulative(steps)


def episode_actions(episode: Episode) -> list[int]:
    """The arm of every round, −1 where the round was forfeited (no arm pulled)."""
    return [s.action if s.action is not None else -1 for s in episode.steps]


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
    lenient = sum(s.lenient for e in complete for s in e.steps)
    summary = None
    mine: dict[str, float] = {}  # the policy's mean regret per scenario
    curve: list[float] = []
    growth = curve_growth([])
    sff = kmf = None
    if complete:
        ids = [e.scenario_id for e in complete]
        summary = scenario_summary([e.regret for e in complete], ids, rng)
        keys, means = regret.scenario_means([e.regret for e in complete], ids)
        mine = {str(k): float(m) for k, m in zip(keys, means, strict=True)}
        mean_curve = np.mean([episode_curve(e) for e in complete], axis=0)
        curve = [float(x) for x in mean_curve]
        growth = curve_growth(mean_curve)
        if complete[0].env != "fol":
            k = complete[0].num_arms
            actions = np.array([episode_actions(e) for e in complete])
            best = np.array(
                [
                    by_id[e.scenario_id].instance.means.argmax(axis=1)  # type: ignore[union-attr]
                    for e in complete
                ]
            )
            sff = regret.suff_fail_half(actions, best)
            kmf = regret.k_min_frac(actions, num_arms=k, t=complete[0].horizon)
    played = [by_id[sid] for sid in mine] or list(scenarios)
    baselines: dict[str, RegretSummary] = {}
    baseline_curves: dict[str, list[float]] = {}
    differences: dict[str, RegretSummary] = {}
    for j, name in enumerate(cfg.eval.baselines):
        plays = {s.scenario_id: play_agent(name, s, cfg) for s in played}
        finals = [float(x) for p in plays.values() for x in p.final]
        keys_of = [sid for sid, p in plays.items() for _ in p.final]
        baselines[name] = scenario_summary(
            finals, keys_of, child_rng(cfg.run.seed, _EVAL_KEY, iteration, j + 1)
        )
        all_curves = np.concatenate([p.curves for p in plays.values()])
        baseline_curves[name] = [float(x) for x in all_curves.mean(axis=0)]
        theirs = {sid: p.mean_regret for sid, p in plays.items()}
        diff = difference_summary(
            mine, theirs, child_rng(cfg.run.seed, _EVAL_KEY, iteration, j + 1, _DIFF_KEY)
        )
        if diff is not None:
            differences[name] = diff
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
        growth_exponent=growth.exponent,
        trend_p_value=growth.trend_p_value,
        baselines=baselines,
        baseline_curves=baseline_curves,
        usage=usage,
        growth_p_value=growth.p_value,
        no_regret=growth.no_regret,
        differences=differences,
        baseline_seeds=cfg.agents.seeds_per_scenario,
        lenient_rate=lenient / len(statuses) if statuses else 0.0,
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
    ledger: Ledger | None = None,
) -> EvalMetrics:
    """Play the held-out scenarios (resuming `out`), then summarize against the baselines.

    With `rollout.cache` on, replies are kept in the response cache next to `out` (the same
    one the training rollout keeps, rollout_cache.py), so a resumed evaluation replays every
    turn already paid for and pays only the unanswered ones.
    """
    scenarios = heldout_scenarios(cfg)
    if cfg.eval.temperature is not None:
        sampling = sampling.model_copy(update={"temperature": cfg.eval.temperature})
    cache = ResponseCache(cache_path(Path(out).parent)) if cfg.rollout.cache else None
    try:
        for _ in range(2):  # a second pass re-plays episodes that ended in an error
            summary = await run_rollouts(
                provider,
                scenarios,
                cfg=cfg,
                iteration=iteration,
                rollouts_per_scenario=cfg.eval.rollouts_per_scenario,
                out=out,
                sampling=sampling,
                progress=progress,
                cache=cache,
                budget_usd=budget_usd,
                ledger=ledger,
            )
            if summary.errors == 0:
                break
    finally:
        if cache is not None:
            cache.close()
    ids = set(scenario_ids(scenarios))
    episodes = [e for e in read_episodes(out) if e.scenario_id in ids and e.iteration == iteration]
    # Completion order is arbitrary under concurrency; the bootstrap must not depend on it.
    episodes.sort(key=lambda e: (e.scenario_index, e.rollout))
    failed = [e for e in episodes if e.status == "error"]
    if episodes and len(failed) == len(episodes):
        raise EvaluationError(
            f"evaluation of {provider.spec} (iteration {iteration}): all {len(episodes)} "
            f"episodes ended in errors (e.g. {failed[0].error}); no metrics written. Fix the "
            "cause and resume: the evaluation is played again (answered turns come from the cache)"
        )
    return summarize(episodes, scenarios, cfg, iteration=iteration, policy=provider.spec)


def metrics_final(path: Path) -> bool:
    """True when `path` holds an evaluation's final metrics; False when it is missing or holds
    the metrics of an evaluation whose every episode failed (written by older versions), which
    is then played again."""
    if not path.is_file():
        return False
    metrics = read_json(path, EvalMetrics)
    return metrics.complete > 0 or metrics.episodes == 0
