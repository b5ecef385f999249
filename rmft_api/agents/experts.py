"""Full-information (experts) agents: uniform, follow-the-leader, Hedge, perturbed leader.

Each plays a probability vector per round and then sees the whole reward vector.
"""

from __future__ import annotations

import math

import numpy as np

from rmft_api.agents.base import argmax_policy
from rmft_api.envs.base import FloatArray

# Perturbed leaders averaged into FTPL's reported policy each round. The average of independent
# FTPL draws is itself a valid FTPL-style learner with the same expected reward, so a small
# number keeps the agent fast without biasing it.
FTPL_SAMPLES = 100


class UniformExpertsAgent:
    """Spreads probability evenly over the arms every round."""

    name = "uniform"

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._num_arms = num_arms

    def policy(self, t: int) -> FloatArray:
        return np.full(self._num_arms, 1.0 / self._num_arms)

    def update(self, t: int, reward_vector: FloatArray) -> None:
        pass


class FollowTheLeaderAgent:
    """All probability on the arm(s) with the largest cumulative reward, split evenly on ties."""

    name = "ftl"

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._cumulative = np.zeros(num_arms, dtype=np.float64)

    def policy(self, t: int) -> FloatArray:
        return argmax_policy(self._cumulative)

    def update(self, t: int, reward_vector: FloatArray) -> None:
        self._cumulative += reward_vector


class HedgeAgent(FollowTheLeaderAgent):
    """Hedge = FTRL with the entropy regulariser: π_t ∝ exp(η · cumulative reward).

    Default η = sqrt(8 ln K / T), for which regret ≤ sqrt(T ln K / 2) against any sequence in
    [0, 1]^K, adaptive adversaries included (Hedge is deterministic).
    """

    name = "hedge"

    def __init__(self, eta: float | None = None) -> None:
        self.eta_override = eta

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        super().reset(num_arms, horizon, rng)
        default = math.sqrt(8.0 * math.log(num_arms) / max(horizon, 1))
        self.eta = self.eta_override if self.eta_override is not None else default

    def policy(self, t: int) -> FloatArray:
        z = self.eta * self._cumulative
        w = np.exp(z - z.max())
        policy: FloatArray = w / w.sum()
        return policy


class FollowThePerturbedLeaderAgent(FollowTheLeaderAgent):
    """FTPL with Gaussian perturbations: the leader of cumulative reward + N(0, s²) noise.

    The reported policy is the distribution of that perturbed leader, estimated from
    FTPL_SAMPLES fresh perturbations each round (drawn from the agent's generator, once per round).
    Default s = sqrt(T / (2 ln K)): the spread of Hedge's implicit Gumbel perturbation at its
    default η, up to a constant, so the two are tuned alike and both have O(sqrt(T ln K)) regret.
    """

    name = "ftpl"

    def __init__(self, noise_scale: float | None = None) -> None:
        self.noise_scale_override = noise_scale

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        super().reset(num_arms, horizon, rng)
        self._num_arms, self._rng = num_arms, rng
        default = math.sqrt(max(horizon, 1) / (2.0 * math.log(num_arms)))
        scale = self.noise_scale_override
        self.noise_scale = scale if scale is not None else default
        self._cache: tuple[int, FloatArray] | None = None

    def policy(self, t: int) -> FloatArray:
        if self._cache is not None and self._cache[0] == t:
            return self._cache[1]
        noise = self.noise_scale * self._rng.standard_normal((FTPL_SAMPLES, self._num_arms))
        leaders = (self._cumulative[None, :] + noise).argmax(axis=1)
        probs = np.bincount(leaders, minlength=self._num_arms) / FTPL_SAMPLES
        self._cache = (t, probs.astype(np.float64))
        return self._cache[1]
