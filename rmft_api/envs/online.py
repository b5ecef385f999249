"""Full-information online learning (experts): reward sequences in [0, 1]^K, drawn up front.

The families follow Park et al. ("Do LLM Agents Have Regret?", 2025): i.i.d. stochastic, linear
and sine trends, and adversarial ones. Oblivious families store the whole reward sequence in the
table; the adaptive adversary computes each round's vector from the learner's past policies and
only its tie-breaking noise is pre-drawn.
"""

from __future__ import annotations

import numpy as np

from rmft_api.config import EnvConfig
from rmft_api.envs.base import FloatArray, FullInfoInstance
from rmft_api.errors import ConfigError

# Std of the noise added on top of the trend families: small next to their swings, so the best
# arm changes because of the trend, not the noise.
TREND_NOISE = 0.05
SINE_AMPLITUDE = 0.3
SINE_CENTRE_SPREAD = 0.1
# Alternating family: arms outside the alternating pair pay this constant, below the pair's
# average of 0.5, so they are never the leader and never the best fixed arm.
ALTERNATING_DECOY = 0.25
# Cumulative probabilities closer than this count as tied for the adaptive adversary.
_TIE_TOLERANCE = 1e-9


def make_full_info(env: EnvConfig, rng: np.random.Generator) -> FullInfoInstance:
    """The FOL instance for one scenario, of family `env.family`."""
    if env.kind != "fol":
        raise ConfigError(f"env.kind = {env.kind!r} is not full-information; expected 'fol'")
    k, horizon = env.num_arms, env.horizon
    family = env.family
    if family == "iid_uniform":
        table = rng.random((horizon, k))
    elif family == "iid_gaussian":
        table = iid_gaussian_table(k, horizon, sigma=env.sigma, rng=rng)
    elif family == "linear_trend":
        table = linear_trend_table(k, horizon, rng=rng)
    elif family == "sine_trend":
        table = sine_trend_table(k, horizon, periods=env.drift_periods, rng=rng)
    elif family == "alternating":
        table = alternating_table(k, horizon, rng=rng)
    elif family == "adaptive":
        # Only the tie-breaking noise: the rewards themselves depend on the learner.
        table = rng.random((horizon, k))
    else:
        raise ConfigError(f"env.family = {family!r} is not a known FOL family")
    return FullInfoInstance(
        family=family, table=table.astype(np.float64), adaptive=family == "adaptive"
    )


def iid_gaussian_table(
    k: int, horizon: int, *, sigma: float, rng: np.random.Generator
) -> FloatArray:
    """N(m_a, σ²) clipped to [0, 1]; means evenly spread over [0.25, 0.75] in a random order."""
    means = rng.permutation(np.linspace(0.25, 0.75, k))
    return np.clip(means[None, :] + sigma * rng.standard_normal((horizon, k)), 0.0, 1.0)


def linear_trend_table(k: int, horizon: int, *, rng: np.random.Generator) -> FloatArray:
    """Each arm moves linearly from a random start to a random end; the best arm at the start
    is never the best at the end, so the trends cross and the leader changes."""
    starts = rng.uniform(0.1, 0.9, size=k)
    ends = rng.uniform(0.1, 0.9, size=k)
    first_best, last_best = int(starts.argmax()), int(ends.argmax())
    if first_best == last_best:
        other = int(rng.choice([a for a in range(k) if a != first_best]))
        ends[[first_best, other]] = ends[[other, first_best]]
    fraction = np.arange(horizon, dtype=np.float64)[:, None] / max(horizon - 1, 1)
    trend = starts[None, :] + (ends - starts)[None, :] * fraction
    return np.clip(trend + TREND_NOISE * rng.standard_normal((horizon, k)), 0.0, 1.0)


def sine_trend_table(
    k: int, horizon: int, *, periods: float, rng: np.random.Generator
) -> FloatArray:
    """c_a + A·sin(2π · periods · t / T + φ_a) plus small noise.

    Phases are evenly spaced (random offset, random arm order), so the arms take turns being
    best round by round; centres c_a spread over [0.4, 0.6] in a random order, so one arm is
    best overall. With equal centres every arm would total the same over whole periods and
    even uniform play would have ~0 regret.
    """
    offset = rng.uniform(0.0, 2 * np.pi)
    phases = offset + 2 * np.pi * rng.permutation(k) / k
    centres = rng.permutation(np.linspace(0.5 - SINE_CENTRE_SPREAD, 0.5 + SINE_CENTRE_SPREAD, k))
    t = np.arange(horizon, dtype=np.float64)[:, None]
    angle = 2 * np.pi * periods * t / horizon + phases[None, :]
    wave = centres[None, :] + SINE_AMPLITUDE * np.sin(angle)
    return np.clip(wave + TREND_NOISE * rng.standard_normal((horizon, k)), 0.0, 1.0)


def alternating_table(k: int, horizon: int, *, rng: np.random.Generator) -> FloatArray:
    """The sequence that defeats follow-the-leader.

    Two random arms a, b: round 0 pays a 0.5 and b 0; afterwards they alternate 1/0, always
    paying the arm that is *not* the current leader. FTL earns ~0 while either arm alone earns
    ~T/2. The other arms pay a constant decoy below 0.5.
    """
    a, b = (int(x) for x in rng.permutation(k)[:2])
    table = np.full((horizon, k), ALTERNATING_DECOY, dtype=np.float64)
    table[:, [a, b]] = 0.0
    table[0, a] = 0.5
    odd = np.arange(1, horizon, 2)  # after round 0 a leads, so b is paid; then a, then b, ...
    even = np.arange(2, horizon, 2)
    table[odd, b] = 1.0
    table[even, a] = 1.0
    return table


def adaptive_reward_vector(
    instance: FullInfoInstance, t: int, past_policies: FloatArray
) -> FloatArray:
    """The adaptive adversary's round-t vector: 1 on the arm the learner has so far put the least
    cumulative probability on, 0 elsewhere; ties go to the arm with the largest pre-drawn noise
    `table[t]`, so the choice is deterministic given the scenario and the learner's history."""
    k = instance.num_arms
    past = np.asarray(past_policies, dtype=np.float64).reshape(-1, k)
    cumulative = past.sum(axis=0)
    tied = cumulative <= cumulative.min() + _TIE_TOLERANCE
    noise = np.where(tied, instance.table[t], -np.inf)
    vector = np.zeros(k, dtype=np.float64)
    vector[int(noise.argmax())] = 1.0
    return vector
