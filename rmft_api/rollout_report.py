"""`rmft-api rollout`: play a policy on M × L episodes and compare its regret with classic agents.

The classic agents play the very same scenario instances (common random numbers),
`agents.seeds_per_scenario` times each (agent_plays.py); play 0 is the one play of
`rmft-api baselines` on the same scenario, so the two commands agree with `--seeds` equal.
Regret is averaged per scenario first (the policy's L rollouts, an agent's seeds), then over
scenarios, with a percentile-bootstrap 95% CI over scenarios; policy − agent is paired per
scenario.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from rmft_api import regret
from rmft_api.agent_plays import agent_regret
from rmft_api.config import Config, RolloutConfig, config_error
from rmft_api.costs import check_prices
from rmft_api.envs.base import child_rng
from rmft_api.envs.scenarios import Scenario, ScenarioRange, build_scenarios, scenario_ids
from rmft_api.ledger import Ledger, ledger_path
from rmft_api.rollout import read_episodes, run_rollouts
from rmft_api.rollout_cache import ResponseCache, cache_path
from rmft_api.rollout_progress import ProgressCallback, RolloutSummary
from rmft_api.store import RunLock

# The reference agents a rollout is compared with, by env kind.
DEFAULT_BASELINES: dict[str, tuple[str, ...]] = {
    "mab": ("ucb1", "thompson", "greedy", "uniform"),
    "ns": ("sw_ucb", "ucb1", "thompson", "greedy", "uniform"),
    "fol": ("hedge", "ftl", "ftpl", "uniform"),
}
# Mixed into the bootstrap generator's key so it never equals an agent's generator.
_BOOTSTRAP_KEY = 0xB007
_DIFF_KEY = 0xD1F


class RegretStat(BaseModel):
    model_config = ConfigDict(frozen=True)

    mean: float
    ci_low: float
    ci_high: float
    scenarios: int


class RolloutReport(BaseModel):
    """What `rmft-api rollout` prints; `model_dump(mode="json")` is its --json line."""

    model_config = ConfigDict(frozen=True)

    summary: RolloutSummary
    env: str
    horizon: int
    num_arms: int
    scenarios: int
    rollouts_per_scenario: int
    policy: RegretStat | None  # None when no scenario has a complete episode
    baselines: dict[str, RegretStat]  # each agent: the mean of agents.seeds_per_scenario plays
    differences: dict[str, RegretStat] = {}  # policy − agent per scenario, paired bootstrap CI


def _stat(est: regret.ScenarioEstimate) -> RegretStat:
    return RegretStat(mean=est.mean, ci_low=est.low, ci_high=est.high, scenarios=est.scenarios)


@dataclass(frozen=True)
class Comparison:
    """The policy, the agents, and policy − agent per scenario (paired), on the same draws."""

    policy: RegretStat | None
    baselines: dict[str, RegretStat]
    differences: dict[str, RegretStat]


def compare_with_baselines(
    episodes_path: Path,
    scenarios: Sequence[Scenario],
    cfg: Config,
    *,
    iteration: int = 0,
    baselines: Sequence[str] | None = None,
) -> Comparison:
    """Mean regret per scenario over complete episodes, against the agents on the same draws."""
    order = {sid: k for k, sid in enumerate(scenario_ids(scenarios))}  # no scenario built
    pairs = sorted(
        (
            (e.scenario_id, e.regret)
            for e in read_episodes(episodes_path)
            if e.status == "complete" and e.iteration == iteration and e.scenario_id in order
        ),
        key=lambda p: order[p[0]],
    )
    ids, values = [sid for sid, _ in pairs], [v for _, v in pairs]
    names = list(baselines or DEFAULT_BASELINES[cfg.env.kind])
    policy = None
    mine: dict[str, float] = {}
    if pairs:
        rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, iteration)
        policy = _stat(regret.scenario_bootstrap_ci(values, ids, rng))
        keys, means = regret.scenario_means(values, ids)
        mine = {str(k): float(m) for k, m in zip(keys, means, strict=True)}
    # Baselines on the same scenarios as the policy (all of them when it finished none).
    stats: dict[str, RegretStat] = {}
    differences: dict[str, RegretStat] = {}
    for j, name in enumerate(names):
        # Built one at a time as the agent plays them: M scenarios are never all in memory.
        reference = (
            scenarios[k] for k, sid in enumerate(scenario_ids(scenarios)) if not mine or sid in mine
        )
        theirs = {s.scenario_id: agent_regret(name, s, cfg) for s in reference}
        rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, iteration, j + 1)
        stats[name] = _stat(regret.scenario_bootstrap_ci(list(theirs.values()), list(theirs), rng))
        diff_rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, iteration, j + 1, _DIFF_KEY)
        diff = regret.paired_difference_ci(mine, theirs, diff_rng)
        if diff is not None:
            differences[name] = _stat(diff)
    return Comparison(policy=policy, baselines=stats, differences=differences)


def rollout_and_compare(
    cfg: Config,
    *,
    out_dir: Path,
    policy: str | None = None,
    scenarios: int | None = None,
    rollouts: int | None = None,
    iteration: int = 0,
    progress: ProgressCallback | None = None,
) -> RolloutReport:
    """Roll out `policy` (default `policy.spec`) into `out_dir`/episodes.jsonl, resuming what is
    there, and compare its regret with the classic agents on the same scenarios."""

    m = cfg.rollout.scenarios if scenarios is None else scenarios
    rollouts_per_scenario = cfg.rollout.rollouts_per_scenario if rollouts is None else rollouts
    try:  # the bounds of rollout.scenarios / rollouts_per_scenario hold for the flags too
        RolloutConfig(scenarios=m, rollouts_per_scenario=rollouts_per_scenario)
    except ValidationError as e:
        raise config_error(e, source="--scenarios / --rollouts", model=RolloutConfig) from None
    drawn = build_scenarios(cfg, split="train", count=m)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Lock first: a second `rollout --out` on the same directory would pay for the same episodes.
    with RunLock(out_dir):
        return _rollout_and_compare(
            cfg, out_dir, policy, drawn, rollouts_per_scenario, iteration, progress
        )


def _rollout_and_compare(
    cfg: Config,
    out_dir: Path,
    policy: str | None,
    drawn: ScenarioRange,
    rollouts_per_scenario: int,
    iteration: int,
    progress: ProgressCallback | None,
) -> RolloutReport:
    from rmft_api.providers.registry import resolve_policy, sampling_params

    m = len(drawn)
    episodes_path = out_dir / "episodes.jsonl"
    check_prices(cfg, policy=policy)
    provider = resolve_policy(cfg, spec=policy)
    cache = ResponseCache(cache_path(out_dir)) if cfg.rollout.cache else None
    ledger = Ledger(ledger_path(out_dir))

    async def play() -> RolloutSummary:
        try:
            return await run_rollouts(
                provider,
                drawn,
                cfg=cfg,
                iteration=iteration,
                rollouts_per_scenario=rollouts_per_scenario,
                out=episodes_path,
                sampling=sampling_params(cfg),
                progress=progress,
                cache=cache,
                budget_usd=cfg.budget.max_usd,
                ledger=ledger,
            )
        finally:
            await provider.aclose()

    try:
        summary = asyncio.run(play())
    finally:
        ledger.close()
        if cache is not None:
            cache.close()
    compared = compare_with_baselines(episodes_path, drawn, cfg, iteration=iteration)
    instance = drawn[0].instance
    return RolloutReport(
        summary=summary,
        env=cfg.env.kind,
        horizon=int(instance.horizon),
        num_arms=int(instance.num_arms),
        scenarios=m,
        rollouts_per_scenario=rollouts_per_scenario,
        policy=compared.policy,
        baselines=compared.baselines,
        differences=compared.differences,
    )
