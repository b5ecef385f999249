"""Classic stochastic-bandit agents: oracle, uniform, greedy, ε-greedy, UCB1, Thompson, EXP3.

Every agent's `act(t)` is one draw from its `policy(t)` using the agent's own generator, so the
distributions reported for the transcripts and the actions actually played agree. Per-step work
is a handful of numpy operations on K-vectors, so 200 replicates × T = 1000 take seconds.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from rmft_api.agents.base import argmax_policy, argmax_random_tie, sample_index
from rmft_api.envs.base import BanditInstance, FloatArray
from rmft_api.errors import ConfigError

Noise = Literal["bernoulli", "gaussian"]
UcbBonus = Literal["log", "constant"]

# Prior of the Gaussian posterior (Thompson on Gaussian rewards): N(0.5, 1), weak next to means
# in [0, 1]. The reward noise σ is taken as known (the instance's σ).
GAUSSIAN_PRIOR_MEAN = 0.5
GAUSSIAN_PRIOR_VAR = 1.0
# Posterior draws used to estimate a sampling agent's policy (P(arm is the argmax)); the
# estimate's standard error is below 0.012 per arm.
POLICY_SAMPLES = 2000


def noise_scale(noise: Noise, sigma: float) -> float:
    """The factor of a UCB bonus for rewards with this noise: 1 for Bernoulli, 2σ for Gaussian.

    The UCB1 bonus comes from Hoeffding's bound for rewards in [0, 1], i.e. ½-sub-Gaussian
    noise. N(μ, σ²) noise is σ-sub-Gaussian, so the same confidence level needs the bonus × 2σ
    (σ = ½ gives back the Bernoulli bonus). Without it UCB1 on σ = 0.1 rewards explores as if the
    noise were ten times larger and plays almost uniformly (hard preset: regret 12.5 of uniform's
    16.0; with the factor 2.9).
    """
    return 1.0 if noise == "bernoulli" else 2.0 * sigma


class OracleAgent:
    """Plays the best arm of every round from the hidden means: zero (dynamic) regret."""

    name = "oracle"

    def __init__(self, instance: BanditInstance) -> None:
        self._best = instance.means.argmax(axis=1)
        self._num_arms = instance.num_arms

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        if num_arms != self._num_arms or horizon > self._best.size:
            raise ConfigError(
                f"oracle built for K={self._num_arms}, T={self._best.size} cannot play "
                f"K={num_arms}, T={horizon}"
            )

    def policy(self, t: int) -> FloatArray:
        one_hot = np.zeros(self._num_arms, dtype=np.float64)
        one_hot[self._best[t]] = 1.0
        return one_hot

    def act(self, t: int) -> int:
        return int(self._best[t])

    def update(self, t: int, action: int, reward: float) -> None:
        pass


class UniformAgent:
    """Pulls an arm uniformly at random every round."""

    name = "uniform"

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._num_arms, self._rng = num_arms, rng

    def policy(self, t: int) -> FloatArray:
        return np.full(self._num_arms, 1.0 / self._num_arms)

    def act(self, t: int) -> int:
        return int(self._rng.integers(self._num_arms))

    def update(self, t: int, action: int, reward: float) -> None:
        pass


class GreedyAgent:
    """Tries every arm once (random order), then the best empirical mean (random tie-break).

    Untried arms carry mean +inf, which makes "try each arm once" fall out of the argmax.
    """

    name = "greedy"

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._num_arms, self._horizon, self._rng = num_arms, horizon, rng
        self._counts = np.zeros(num_arms, dtype=np.float64)
        self._sums = np.zeros(num_arms, dtype=np.float64)
        self._means = np.full(num_arms, np.inf)

    def policy(self, t: int) -> FloatArray:
        return argmax_policy(self._means)

    def act(self, t: int) -> int:
        return argmax_random_tie(self._means, self._rng)

    def update(self, t: int, action: int, reward: float) -> None:
        self._counts[action] += 1.0
        self._sums[action] += reward
        self._means[action] = self._sums[action] / self._counts[action]


class EpsilonGreedyAgent(GreedyAgent):
    """With probability ε a uniformly random arm, otherwise the greedy choice."""

    name = "eps_greedy"

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def policy(self, t: int) -> FloatArray:
        greedy = argmax_policy(self._means)
        return self.epsilon / self._num_arms + (1.0 - self.epsilon) * greedy

    def act(self, t: int) -> int:
        if self._rng.random() < self.epsilon:
            return int(self._rng.integers(self._num_arms))
        return argmax_random_tie(self._means, self._rng)


class UCB1Agent(GreedyAgent):
    """UCB1 with exploration constant c: index μ̂_a + s·sqrt(c·ln n / n_a).

    n is the number of rounds played so far, n_a the pulls of arm a and s the noise scale
    (`noise_scale`: 1 for Bernoulli rewards, 2σ for Gaussian). c = 2 is Auer et al.'s original
    UCB1 bonus sqrt(2 ln n / n_a), which explores more and bends towards log T only after
    ~8 ln T / Δ² pulls per arm; the default c = 1 (`agents.ucb_c`) explores less.

    `bonus = "constant"` drops the logarithm: s·sqrt(c / n_a). With c = 1 that is the "UCB with
    C = 1" baseline of Krishnamurthy et al. (NeurIPS 2024, App. A.1: bonus sqrt(C / n_a),
    C = Θ(log T) in theory, C = 1 as a heuristic), which explores much less than UCB1 (hard
    preset, T = 100: K·MinFrac 0.18 against 0.46). Every arm is pulled once first; ties are
    broken at random.
    """

    name = "ucb1"

    def __init__(self, c: float, *, scale: float = 1.0, bonus: UcbBonus = "log") -> None:
        self.c, self.scale, self.bonus = c, scale, bonus

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        super().reset(num_arms, horizon, rng)
        self._played = 0
        self._untried = num_arms

    def _index(self) -> FloatArray:
        if self._untried:
            return self._means  # +inf on the untried arms: they come first
        width = self.c if self.bonus == "constant" else self.c * math.log(self._played)
        return self._means + self.scale * np.sqrt(width / self._counts)

    def policy(self, t: int) -> FloatArray:
        return argmax_policy(self._index())

    def act(self, t: int) -> int:
        return argmax_random_tie(self._index(), self._rng)

    def update(self, t: int, action: int, reward: float) -> None:
        super().update(t, action, reward)
        self._played += 1
        if self._counts[action] == 1.0:
            self._untried -= 1


def posterior_samples(
    pulls: FloatArray,
    reward_sums: FloatArray,
    *,
    noise: Noise,
    sigma: float,
    rng: np.random.Generator,
    size: int | None = None,
) -> FloatArray:
    """Draws of each arm's mean from its posterior given (possibly discounted) pulls and sums.

    Bernoulli: Beta(1 + s, 1 + n − s) (uniform prior). Gaussian: the conjugate normal posterior
    with prior N(0.5, 1) and known noise σ. Shape (K,) or (size, K).
    """
    shape = pulls.shape if size is None else (size, *pulls.shape)
    if noise == "bernoulli":
        return rng.beta(1.0 + reward_sums, 1.0 + pulls - reward_sums, size=shape)
    precision = 1.0 / GAUSSIAN_PRIOR_VAR + pulls / sigma**2
    mean = (GAUSSIAN_PRIOR_MEAN / GAUSSIAN_PRIOR_VAR + reward_sums / sigma**2) / precision
    return mean + rng.standard_normal(shape) / np.sqrt(precision)


class ThompsonAgent:
    """Thompson sampling: pull the argmax of one posterior draw per arm.

    `discount` < 1 gives discounted Thompson sampling (Raj & Kalyani 2017) for non-stationary
    bandits: before each update every arm's statistics are multiplied by γ, so old rewards fade.
    `policy(t)` estimates P(arm is the argmax) from POLICY_SAMPLES draws of a generator seeded
    per round, so asking for the policy never changes the actions the agent plays.
    """

    name = "thompson"

    def __init__(self, *, noise: Noise = "bernoulli", sigma: float = 1.0, discount: float = 1.0):
        self.noise, self.sigma, self.discount = noise, sigma, discount

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._num_arms, self._rng = num_arms, rng
        self._pulls = np.zeros(num_arms, dtype=np.float64)
        self._sums = np.zeros(num_arms, dtype=np.float64)
        self._policy_seed = int(rng.integers(2**63))
        self._policy_cache: tuple[int, FloatArray] | None = None

    def _draw(self, rng: np.random.Generator, size: int | None = None) -> FloatArray:
        return posterior_samples(
            self._pulls, self._sums, noise=self.noise, sigma=self.sigma, rng=rng, size=size
        )

    def policy(self, t: int) -> FloatArray:
        if self._policy_cache is not None and self._policy_cache[0] == t:
            return self._policy_cache[1]
        rng = np.random.default_rng([self._policy_seed, t])
        winners = self._draw(rng, POLICY_SAMPLES).argmax(axis=1)
        probs = np.bincount(winners, minlength=self._num_arms) / POLICY_SAMPLES
        self._policy_cache = (t, probs.astype(np.float64))
        return self._policy_cache[1]

    def act(self, t: int) -> int:
        return int(self._draw(self._rng).argmax())

    def update(self, t: int, action: int, reward: float) -> None:
        if self.discount < 1.0:
            self._pulls *= self.discount
            self._sums *= self.discount
        # Beta counts need a reward in [0, 1]; Gaussian rewards are used as they are.
        r = min(max(reward, 0.0), 1.0) if self.noise == "bernoulli" else reward
        self._pulls[action] += 1.0
        self._sums[action] += r
        self._policy_cache = None


class Exp3Agent:
    """EXP3 (Auer et al. 2002): exponential weights on importance-weighted reward estimates.

    p = (1 − γ)·softmax(log w) + γ/K; the played arm's log-weight grows by γ·(r / p_a) / K.
    Default γ = min(1, sqrt(K ln K / ((e − 1) T))), the textbook tuning. Rewards are clipped to
    [0, 1], the range the method assumes.
    """

    name = "exp3"

    def __init__(self, gamma: float | None = None) -> None:
        self.gamma_override = gamma

    def reset(self, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self._num_arms, self._rng = num_arms, rng
        k = num_arms
        default = math.sqrt(k * math.log(k) / ((math.e - 1.0) * max(horizon, 1)))
        self.gamma = self.gamma_override if self.gamma_override is not None else min(1.0, default)
        self._log_weights = np.zeros(k, dtype=np.float64)
        self._probs: FloatArray | None = None

    def policy(self, t: int) -> FloatArray:
        if self._probs is None:
            w = np.exp(self._log_weights - self._log_weights.max())
            self._probs = (1.0 - self.gamma) * w / w.sum() + self.gamma / self._num_arms
        return self._probs

    def act(self, t: int) -> int:
        return sample_index(self.policy(t), self._rng)

    def update(self, t: int, action: int, reward: float) -> None:
        p = self.policy(t)[action]
        estimate = min(max(reward, 0.0), 1.0) / p
        self._log_weights[action] += self.gamma * estimate / self._num_arms
        self._probs = None
