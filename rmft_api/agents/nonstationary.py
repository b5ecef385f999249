"""Agents for non-stationary bandits: sliding-window UCB and discounted Thompson sampling."""

from __future__ import annotations

import math

import numpy as np

from rmft_api.agents.bandit import Noise, ThompsonAgent
from rmft_api.agents.base import argmax_policy, argmax_random_tie
from rmft_api.envs.base import FloatArray

# Garivier & Moulines (2011) use ξ = 0.6 in their experiments; the textbook UCB1 factor 2 makes
# a short window explore almost uniformly.
SW_UCB_XI = 0.6


class SlidingWindowUCBAgent:
    """SW-UCB (Garivier & Moulines 2011): UCB1 on the last `window` rounds only.

    Index μ̂_a + s·sqrt(ξ·c·ln min(n, τ) / n_a) with ξ = 0.6, the paper's choice (c = `ucb_c`
    scales it like UCB1's bonus, s = `noise_scale`: 1 for Bernoulli, 2σ for Gaussian rewards);
    μ̂_a and n_a count only the rounds in the window. An arm absent from the window has index
    +inf and is pulled again, so after a change point every arm is re-checked within τ rounds.
    """

    name = "sw_ucb"

    def __init__(self, *, window: int, c: float, scale: float = 1.0) -> None:
        self.window, self.c, self.scale = window, c, scale

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._num_arms, self._rng = num_arms, rng
        self._counts = np.zeros(num_arms, dtype=np.int64)
        self._sums = np.zeros(num_arms, dtype=np.float64)
        self._actions = np.zeros(horizon, dtype=np.int64)
        self._rewards = np.zeros(horizon, dtype=np.float64)
        self._played = 0

    def _index(self) -> FloatArray:
        counts = self._counts
        if not counts.all():
            return np.where(counts > 0, -np.inf, np.inf)  # absent arms first
        n = min(self._played, self.window)
        bonus = self.scale * np.sqrt(SW_UCB_XI * self.c * math.log(max(n, 1)) / counts)
        return self._sums / counts + bonus

    def policy(self, t: int) -> FloatArray:
        return argmax_policy(self._index())

    def act(self, t: int) -> int:
        return argmax_random_tie(self._index(), self._rng)

    def update(self, t: int, action: int, reward: float) -> None:
        i = self._played
        self._actions[i], self._rewards[i] = action, reward
        self._counts[action] += 1
        self._sums[action] += reward
        if i >= self.window:  # the round leaving the window
            old = int(self._actions[i - self.window])
            self._counts[old] -= 1
            self._sums[old] -= self._rewards[i - self.window]
            if self._counts[old] == 0:
                self._sums[old] = 0.0  # drop accumulated rounding error
        self._played += 1


class DiscountedThompsonAgent(ThompsonAgent):
    """Discounted Thompson sampling (Raj & Kalyani 2017): statistics decay by γ every round."""

    name = "discounted_ts"

    def __init__(self, *, discount: float, noise: Noise = "bernoulli", sigma: float = 1.0):
        super().__init__(noise=noise, sigma=sigma, discount=discount)
