"""Stochastic and non-stationary K-armed bandits: hidden means and a reward table drawn up front.

Everything is drawn from the generator handed in, in a fixed order (means first, then rewards),
so one scenario seed gives one instance, and every agent playing it faces the same draws.
"""

from __future__ import annotations

import itertools

import numpy as np

from rmft_api.config import EnvConfig
from rmft_api.envs.base import BanditInstance, FloatArray
from rmft_api.errors import ConfigError

# Largest swing of an arm's mean around its centre under smooth drift. Big enough that arms with
# the hard preset's gap (0.2) cross each other, so the best arm really changes over time.
DRIFT_AMPLITUDE = 0.3


def make_bandit(env: EnvConfig, rng: np.random.Generator) -> BanditInstance:
    """The MAB (env.kind = "mab") or NS-MAB (env.kind = "ns") instance for one scenario."""
    if env.kind == "mab":
        row = base_means(env, rng)
        means = np.broadcast_to(row, (env.horizon, env.num_arms)).copy()
    elif env.kind == "ns":
        means = abrupt_means(env, rng) if env.ns_mode == "abrupt" else drift_means(env, rng)
    else:
        raise ConfigError(f"env.kind = {env.kind!r} is not a bandit; expected 'mab' or 'ns'")
    rewards = draw_rewards(means, noise=env.noise, sigma=env.sigma, rng=rng)
    return BanditInstance(
        means=means,
        rewards=rewards,
        noise=env.noise,
        sigma=env.sigma if env.noise == "gaussian" else 0.0,
        nonstationary=env.kind == "ns",
    )


def base_means(env: EnvConfig, rng: np.random.Generator) -> FloatArray:
    """One vector of K means as `env.means_mode` says; shuffled except for `fixed`.

    The shuffle puts the best arm at a different index in different scenarios, so a model cannot
    learn "the first arm is best" from its training data.
    """
    k = env.num_arms
    if env.means_mode == "fixed":
        assert env.means is not None  # guaranteed by EnvConfig's validator
        return np.asarray(env.means, dtype=np.float64)
    if env.means_mode == "gap":
        means = np.full(k, 0.5 - env.gap / 2)
        means[0] = 0.5 + env.gap / 2
    else:
        means = rng.random(k)
    return rng.permutation(means).astype(np.float64)


def abrupt_means(env: EnvConfig, rng: np.random.Generator) -> FloatArray:
    """Piecewise-constant means: `num_switches` change points at random rounds.

    Each segment gets fresh means (a new draw of `base_means`, which for gap/fixed is a new arm
    order); if the best arm happened to stay put, it is swapped with a random other arm so that
    every switch really changes which arm is best.
    """
    k, horizon = env.num_arms, env.horizon
    switches = min(env.num_switches, horizon - 1)
    change_points = np.sort(rng.choice(np.arange(1, horizon), size=switches, replace=False))
    bounds = [0, *change_points.tolist(), horizon]
    means = np.empty((horizon, k), dtype=np.float64)
    previous_best = -1
    for start, stop in itertools.pairwise(bounds):
        segment = base_means(env, rng)
        if env.means_mode == "fixed":
            # Fixed means keep their values; only their order varies between segments.
            segment = rng.permutation(segment)
        best = int(segment.argmax())
        if best == previous_best:
            other = int(rng.choice([a for a in range(k) if a != best]))
            segment[[best, other]] = segment[[other, best]]
            best = other
        means[start:stop] = segment
        previous_best = best
    return means


def drift_means(env: EnvConfig, rng: np.random.Generator) -> FloatArray:
    """Smooth sinusoidal drift: μ_t(a) = c_a + A_a · sin(2π · periods · t / T + φ_a).

    Centres c_a come from `base_means`; amplitudes are capped by the distance to 0 and 1, so the
    means stay in [0, 1] without clipping (which would flatten the curves); phases are random.
    """
    k, horizon = env.num_arms, env.horizon
    centres = base_means(env, rng)
    amplitudes = np.minimum(DRIFT_AMPLITUDE, np.minimum(centres, 1.0 - centres))
    phases = rng.uniform(0.0, 2 * np.pi, size=k)
    t = np.arange(horizon, dtype=np.float64)[:, None]
    angle = 2 * np.pi * env.drift_periods * t / horizon + phases[None, :]
    means: FloatArray = centres[None, :] + amplitudes[None, :] * np.sin(angle)
    return np.clip(means, 0.0, 1.0)  # only guards against rounding just outside [0, 1]


def draw_rewards(
    means: FloatArray, *, noise: str, sigma: float, rng: np.random.Generator
) -> FloatArray:
    """The reward table: Bernoulli(μ_t(a)) in {0, 1}, or N(μ_t(a), σ²) unclipped."""
    if noise == "bernoulli":
        return (rng.random(means.shape) < means).astype(np.float64)
    if noise == "gaussian":
        return means + sigma * rng.standard_normal(means.shape)
    raise ConfigError(f"env.noise = {noise!r}; allowed: bernoulli, gaussian")
