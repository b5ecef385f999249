"""`rmft-api rollout`: play a policy on M × L episodes and compare its regret with classic agents.

The classic agents play the very same scenario instances (common random numbers), each with the
generator `child_rng(run.seed, scenario index, j)` of `rmft-api baselines` (j = the agent's
position in the registry's list for the env kind), so both commands agree on the baselines.
Regret is averaged per scenario first (the policy's L rollouts), then over scenarios, with a
percentile-bootstrap 95% CI over scenarios.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from rmft_api import regret
from rmft_api.agents.base import BanditAgent, ExpertsAgent, run_bandit, run_full_info
from rmft_api.agents.registry import agent_names, make_agent
from rmft_api.config import Config
from rmft_api.envs.base import BanditInstance, FullInfoInstance, child_rng
from rmft_api.envs.scenarios import Scenario, build_scenarios
from rmft_api.errors import ConfigError
from rmft_api.rollout import read_episodes, run_rollouts
from rmft_api.rollout_cache import ResponseCache
from rmft_api.rollout_progress import ProgressCallback, RolloutSummary

# The reference agents a rollout is compared with, by env kind.
DEFAULT_BASELINES: dict[str, tuple[str, ...]] = {
    "mab": ("ucb1", "thompson", "greedy", "uniform"),
    "ns": ("sw_ucb", "ucb1", "thompson", "greedy", "uniform"),
    "fol": ("hedge", "ftl", "ftpl", "uniform"),
}
# Mixed into the bootstrap generator's key so it never equals an agent's generator.
_BOOTSTRAP_KEY = 0xB007


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
    baselines: dict[str, RegretStat]


def agent_regret(name: str, scenario: Scenario, cfg: Config) -> float:
    """Expected regret of classic agent `name` on `scenario`'s instance."""
    kind = scenario.env_kind
    known = agent_names(kind)
    if name not in known:
        raise ConfigError(f"unknown baseline {name!r} for env {kind!r}; allowed: {known}")
    rng = child_rng(cfg.run.seed, scenario.index, known.index(name))
    agent = make_agent(name, cfg.agents, env_kind=kind, instance=scenario.instance)
    instance = scenario.instance
    if isinstance(instance, BanditInstance):
        assert isinstance(agent, BanditAgent)
        trace = run_bandit(agent, instance, rng)
        return float(regret.action_regret_steps(instance.means, trace.actions).sum())
    assert isinstance(instance, FullInfoInstance) and isinstance(agent, ExpertsAgent)
    played = run_full_info(agent, instance, rng)
    return float(regret.full_info_regret_curve(played.policies, played.reward_vectors)[-1])


def _stat(values: Sequence[float], rng: np.random.Generator) -> RegretStat:
    mean, low, high = regret.bootstrap_ci(np.asarray(values, dtype=np.float64), rng)
    return RegretStat(mean=mean, ci_low=low, ci_high=high, scenarios=len(values))


def compare_with_baselines(
    episodes_path: Path,
    scenarios: Sequence[Scenario],
    cfg: Config,
    *,
    iteration: int = 0,
    baselines: Sequence[str] | None = None,
) -> tuple[RegretStat | None, dict[str, RegretStat]]:
    """(policy, {agent: stat}): mean regret per scenario over complete episodes, vs agents."""
    by_scenario: dict[str, list[float]] = {}
    for episode in read_episodes(episodes_path):
        if episode.status == "complete" and episode.iteration == iteration:
            by_scenario.setdefault(episode.scenario_id, []).append(episode.regret)
    played = [s for s in scenarios if s.scenario_id in by_scenario]
    names = list(baselines or DEFAULT_BASELINES[cfg.env.kind])
    policy = None
    if played:
        per_scenario = [float(np.mean(by_scenario[s.scenario_id])) for s in played]
        policy = _stat(per_scenario, child_rng(cfg.run.seed, _BOOTSTRAP_KEY, iteration))
    # Baselines on the same scenarios as the policy (all of them when it finished none).
    reference = played or list(scenarios)
    stats = {
        name: _stat(
            [agent_regret(name, s, cfg) for s in reference],
            child_rng(cfg.run.seed, _BOOTSTRAP_KEY, iteration, j + 1),
        )
        for j, name in enumerate(names)
    }
    return policy, stats


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
    from rmft_api.providers.registry import resolve_policy, sampling_params

    m = scenarios or cfg.rollout.scenarios
    rollouts_per_scenario = rollouts or cfg.rollout.rollouts_per_scenario
    if m < 1 or rollouts_per_scenario < 1:
        raise ConfigError("--scenarios and --rollouts must be at least 1")
    drawn = build_scenarios(cfg, split="train", count=m)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    episodes_path = out_dir / "episodes.jsonl"
    provider = resolve_policy(cfg, spec=policy)
    cache = ResponseCache(out_dir / "responses.jsonl") if cfg.rollout.cache else None

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
            )
        finally:
            await provider.aclose()

    try:
        summary = asyncio.run(play())
    finally:
        if cache is not None:
            cache.close()
    policy_stat, baseline_stats = compare_with_baselines(
        episodes_path, drawn, cfg, iteration=iteration
    )
    instance = drawn[0].instance
    return RolloutReport(
        summary=summary,
        env=cfg.env.kind,
        horizon=int(instance.horizon),
        num_arms=int(instance.num_arms),
        scenarios=m,
        rollouts_per_scenario=rollouts_per_scenario,
        policy=policy_stat,
        baselines=baseline_stats,
    )
