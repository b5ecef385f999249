"""The classic-agent protocols and the loops that run an agent on a numeric instance.

Agents own their randomness (a `numpy.random.Generator` handed to `reset`), never the
environment's: the reward table is pre-drawn, so every agent faces the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from rmft_api.envs.base import BanditInstance, FloatArray, FullInfoInstance


@runtime_checkable
class BanditAgent(Protocol):
    """Chooses one arm per round from bandit feedback (its own reward only)."""

    name: str

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None: ...

    def policy(self, t: int) -> FloatArray:
        """The distribution the agent would sample round t's arm from (one-hot if deterministic)."""
        ...

    def act(self, t: int) -> int: ...

    def update(self, t: int, action: int, reward: float) -> None: ...


@runtime_checkable
class ExpertsAgent(Protocol):
    """Plays a probability vector per round and then sees the whole reward vector."""

    name: str

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None: ...

    def policy(self, t: int) -> FloatArray: ...

    def update(self, t: int, reward_vector: FloatArray) -> None: ...


@dataclass(frozen=True)
class BanditTrace:
    """What happened when an agent played a bandit instance."""

    actions: NDArray[np.int64]  # (T,)
    rewards: FloatArray  # (T,) realised: instance.rewards[t, actions[t]]


@dataclass(frozen=True)
class FullInfoTrace:
    policies: FloatArray  # (T, K)
    reward_vectors: FloatArray  # (T, K)


def run_bandit(
    agent: BanditAgent, instance: BanditInstance, rng: np.random.Generator
) -> BanditTrace:
    """Play every round of `instance`; the agent's own choices use `rng` only."""
    k, horizon = instance.num_arms, instance.horizon
    agent.reset(k, horizon, rng)
    actions = np.empty(horizon, dtype=np.int64)
    rewards = np.empty(horizon, dtype=np.float64)
    for t in range(horizon):
        a = agent.act(t)
        r = float(instance.rewards[t, a])
        agent.update(t, a, r)
        actions[t], rewards[t] = a, r
    return BanditTrace(actions=actions, rewards=rewards)


def run_full_info(
    agent: ExpertsAgent, instance: FullInfoInstance, rng: np.random.Generator
) -> FullInfoTrace:
    """Play every round; adaptive adversaries see the policies played so far."""
    k, horizon = instance.num_arms, instance.horizon
    agent.reset(k, horizon, rng)
    policies = np.zeros((horizon, k), dtype=np.float64)
    vectors = np.zeros((horizon, k), dtype=np.float64)
    for t in range(horizon):
        policies[t] = agent.policy(t)
        vectors[t] = instance.reward_vector(t, policies[:t])
        agent.update(t, vectors[t])
    return FullInfoTrace(policies=policies, reward_vectors=vectors)


# ---------------------------------------------------------------- helpers shared by the agents


def argmax_policy(values: FloatArray) -> FloatArray:
    """Uniform over the maximisers of `values`: one-hot when the maximum is unique."""
    best = (values == values.max()).astype(np.float64)
    policy: FloatArray = best / best.sum()
    return policy


def argmax_random_tie(values: FloatArray, rng: np.random.Generator) -> int:
    """An index of the maximum, ties broken uniformly at random: a sample of `argmax_policy`.

    The generator is only consumed when there is a tie, so tie-free traces stay cheap.
    """
    best = np.flatnonzero(values == values.max())
    if best.size == 1:
        return int(best[0])
    return int(best[rng.integers(best.size)])


def sample_index(probs: FloatArray, rng: np.random.Generator) -> int:
    """One draw from a probability vector (inverse CDF: much cheaper than `rng.choice`)."""
    cdf = np.cumsum(probs)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(index, probs.size - 1)
