"""Classic agents on scenarios' reward tables: the plays every comparison with a policy uses.

An agent's play on a fixed reward table is still random (ties, Thompson's posterior draws), so a
single play can be lucky and decide a paired comparison by itself. Each scenario is therefore
played `agents.seeds_per_scenario` times and the agent's regret there is the mean. Play s of
agent j on scenario i uses `child_rng(run.seed, i, j)` for s = 0 (the one play of earlier
versions, so those numbers stay comparable) and `child_rng(run.seed, i, j, s)` for s ≥ 1, with j
the agent's position in the registry's list for the env kind: an agent's plays do not depend on
which other agents run, and `evaluate`, `report`, `rollout` and `baselines` agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from rmft_api import regret
from rmft_api.agents.base import BanditAgent, ExpertsAgent, run_bandit, run_full_info
from rmft_api.agents.registry import agent_names, make_agent
from rmft_api.config import AgentsConfig, Config
from rmft_api.envs.base import (
    BanditInstance,
    EnvKind,
    FloatArray,
    FullInfoInstance,
    Instance,
    child_rng,
)
from rmft_api.envs.scenarios import Scenario
from rmft_api.errors import ConfigError

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class AgentPlays:
    """One agent's plays of one reward table: a row per seed."""

    curves: FloatArray  # (S, T) cumulative expected regret
    actions: IntArray | None  # (S, T) pulled arms; None for full information

    @property
    def final(self) -> FloatArray:
        """R_T of every play, (S,)."""
        return np.asarray(self.curves[:, -1], dtype=np.float64)

    @property
    def mean_regret(self) -> float:
        return float(self.curves[:, -1].mean())


def agent_rng(
    run_seed: int, scenario_index: int, agent_index: int, seed: int
) -> np.random.Generator:
    """The generator of play `seed` of agent `agent_index` on scenario `scenario_index`."""
    if seed == 0:
        return child_rng(run_seed, scenario_index, agent_index)
    return child_rng(run_seed, scenario_index, agent_index, seed)


def play_instance(
    name: str,
    instance: Instance,
    agents: AgentsConfig,
    *,
    env_kind: EnvKind,
    rng: np.random.Generator,
) -> tuple[FloatArray, IntArray | None]:
    """One play of agent `name` on `instance`: (regret curve (T,), arms pulled (T,) or None)."""
    agent = make_agent(name, agents, env_kind=env_kind, instance=instance)
    if isinstance(instance, BanditInstance) and isinstance(agent, BanditAgent):
        actions = run_bandit(agent, instance, rng).actions
        curve = regret.cumulative(regret.action_regret_steps(instance.means, actions))
        return curve, actions
    if isinstance(instance, FullInfoInstance) and isinstance(agent, ExpertsAgent):
        trace = run_full_info(agent, instance, rng)
        return regret.full_info_regret_curve(trace.policies, trace.reward_vectors), None
    raise ConfigError(f"agent {name!r} does not play a {type(instance).__name__}")


def play_agent(name: str, scenario: Scenario, cfg: Config) -> AgentPlays:
    """Agent `name` on `scenario`, `cfg.agents.seeds_per_scenario` times."""
    known = agent_names(scenario.env_kind)
    if name not in known:
        raise ConfigError(
            f"unknown baseline {name!r} for env {scenario.env_kind!r}; allowed: {', '.join(known)}"
        )
    j = known.index(name)
    curves: list[FloatArray] = []
    pulled: list[IntArray] = []
    for s in range(cfg.agents.seeds_per_scenario):
        rng = agent_rng(cfg.run.seed, scenario.index, j, s)
        curve, actions = play_instance(
            name, scenario.instance, cfg.agents, env_kind=scenario.env_kind, rng=rng
        )
        curves.append(curve)
        if actions is not None:
            pulled.append(actions)
    return AgentPlays(
        curves=np.stack(curves), actions=np.stack(pulled).astype(np.int64) if pulled else None
    )


def agent_regret(name: str, scenario: Scenario, cfg: Config) -> float:
    """Agent `name`'s expected regret on `scenario`: the mean over its seeds."""
    return play_agent(name, scenario, cfg).mean_regret
