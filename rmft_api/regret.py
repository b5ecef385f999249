"""Regret and exploration diagnostics: pure numpy functions over hidden truth (REFERENCE §2).

Conventions. Rounds are 0-indexed in arrays (`means[t]` is round t+1 of the maths); a function
that takes a round number `t` says which. Arrays may carry leading replicate axes: `actions` is
(T,) or (R, T), `means` / `policies` / `reward_vectors` are (T, K) or (R, T, K). Per-round means
(T, K) make one function serve both the stationary bandit (pseudo-regret, all rows equal) and the
non-stationary one (dynamic regret against the per-round best arm).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
K = TypeVar("K", bound=Hashable)  # a scenario key

# Parse statuses that count as the model's own, strictly parsed answer (schema.ParseStatus).
VALID_PARSE_STATUSES = frozenset({"ok", "reprompted"})


# ---------------------------------------------------------------- regret


def action_regret_steps(means: ArrayLike, actions: ArrayLike) -> FloatArray:
    """Expected per-step regret of chosen arms: r_t = max_a μ_t(a) − μ_t(a_t).

    Args:
        means: per-round hidden means, (..., T, K).
        actions: chosen arm per round, (..., T).
    Returns:
        (..., T). Summed over t: pseudo-regret (stationary) or dynamic regret (non-stationary).
    """
    mu = np.asarray(means, dtype=np.float64)
    acts = np.asarray(actions, dtype=np.int64)
    mu = np.broadcast_to(mu, (*acts.shape, mu.shape[-1]))
    chosen = np.take_along_axis(mu, acts[..., None], axis=-1)[..., 0]
    return np.asarray(mu.max(axis=-1) - chosen, dtype=np.float64)


def policy_regret_steps(means: ArrayLike, policies: ArrayLike) -> FloatArray:
    """Expected per-step regret of policy answers: r_t = max_a μ_t(a) − ⟨π_t, μ_t⟩.

    Args:
        means: per-round hidden means, (..., T, K).
        policies: probability vectors per round, (..., T, K).
    """
    mu = np.asarray(means, dtype=np.float64)
    pi = np.asarray(policies, dtype=np.float64)
    return np.asarray(mu.max(axis=-1) - (pi * mu).sum(axis=-1), dtype=np.float64)


def cumulative(steps: ArrayLike) -> FloatArray:
    """R_t = Σ_{s≤t} r_s along the last (round) axis."""
    return np.cumsum(np.asarray(steps, dtype=np.float64), axis=-1)


def full_info_regret_curve(policies: ArrayLike, reward_vectors: ArrayLike) -> FloatArray:
    """Static regret of experts play: R_t = max_a Σ_{s≤t} r_s(a) − Σ_{s≤t} ⟨π_s, r_s⟩.

    Args:
        policies: (..., T, K) played distributions.
        reward_vectors: (..., T, K) rewards revealed after each round.
    Returns:
        (..., T): the regret against the best fixed action in hindsight after every round.
    """
    pi = np.asarray(policies, dtype=np.float64)
    r = np.asarray(reward_vectors, dtype=np.float64)
    best_fixed = np.cumsum(r, axis=-2).max(axis=-1)
    earned = np.cumsum((pi * r).sum(axis=-1), axis=-1)
    return np.asarray(best_fixed - earned, dtype=np.float64)


def realised_regret(means: ArrayLike, rewards: ArrayLike) -> FloatArray:
    """Realised bandit regret: Σ_t max_a μ_t(a) − Σ_t r_t (realised rewards, (..., T)).

    Noisy and able to go negative; shown next to expected regret, never used to select episodes.
    """
    mu = np.asarray(means, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    return np.asarray(mu.max(axis=-1).sum(axis=-1) - r.sum(axis=-1), dtype=np.float64)


# ---------------------------------------------------------------- diagnostics over replicates


def _replicates(actions: ArrayLike) -> IntArray:
    acts = np.asarray(actions, dtype=np.int64)
    return acts[None, :] if acts.ndim == 1 else acts


def _check_round(t: int, horizon: int) -> None:
    if not 1 <= t <= horizon:
        raise ValueError(f"round t={t} outside 1..{horizon}")


def half_horizon_round(horizon: int) -> int:
    """The round "T/2" of SuffFailFreq(T/2), 1-indexed: ⌊T/2⌋ (at least 1).

    Krishnamurthy et al. (NeurIPS 2024, §3.1) define SuffFail(t, R) over rounds [t, T] with rounds
    in [T] = {1, ..., T}, so SuffFailFreq(T/2) at T = 100 looks at rounds 50..100. (Their plots
    count time steps from 0, which would read as rounds 51..100; the two differ by far less than
    the sampling error of their 1000 replicates, see tests/test_published_baselines.py.)
    """
    return max(1, horizon // 2)


def suff_fail_freq(actions: ArrayLike, best_arms: ArrayLike, *, t: int) -> float:
    """SuffFailFreq(t): share of replicates that never pick the best arm in rounds t..T.

    Rounds are 1-indexed here (t = 1 looks at the whole episode). `best_arms` is (T,) or (R, T):
    the per-round best arm, so a non-stationary bandit is judged against its current best arm.
    An action of −1 (a forfeited round) is never the best arm.
    """
    acts = _replicates(actions)
    _check_round(t, acts.shape[1])
    best = np.broadcast_to(np.asarray(best_arms, dtype=np.int64), acts.shape)
    hit = (acts[:, t - 1 :] == best[:, t - 1 :]).any(axis=1)
    return float(1.0 - hit.mean())


def suff_fail_half(actions: ArrayLike, best_arms: ArrayLike) -> float:
    """SuffFailFreq(T/2), the headline suffix-failure figure (see `half_horizon_round`)."""
    acts = _replicates(actions)
    return suff_fail_freq(acts, best_arms, t=half_horizon_round(acts.shape[1]))


def arm_counts(actions: ArrayLike, *, num_arms: int, t: int) -> IntArray:
    """Pulls of each arm in the first t rounds (1-indexed, rounds 1..t), shape (R, K).

    An action of −1 marks a round with no pull (forfeited): it counts for no arm.
    """
    acts = _replicates(actions)
    _check_round(t, acts.shape[1])
    onehot = acts[:, :t, None] == np.arange(num_arms)
    return np.asarray(onehot.sum(axis=1), dtype=np.int64)


def k_min_frac(actions: ArrayLike, *, num_arms: int, t: int) -> float:
    """K·MinFrac(t) = K · min_a N_t(a) / t, averaged over replicates.

    N_t(a) counts the pulls of arm a in the first t rounds; a forfeited round (action −1) pulls
    no arm, so it lowers the figure instead of counting as a pull of arm 0. 1 means perfectly
    even exploration, 0 that some arm was never tried.
    """
    counts = arm_counts(actions, num_arms=num_arms, t=t)
    return float((num_arms * counts.min(axis=1) / t).mean())


def coverage(actions: ArrayLike, *, num_arms: int, t: int) -> float:
    """Share of arms tried at least once in the first t rounds, averaged over replicates."""
    counts = arm_counts(actions, num_arms=num_arms, t=t)
    return float((counts > 0).mean())


def greedy_frac(actions: ArrayLike, rewards: ArrayLike, *, num_arms: int) -> float:
    """GreedyFrac: share of rounds whose arm has the best empirical mean so far.

    Only arms pulled before round t have an empirical mean; choosing an untried arm is not
    greedy, ties count as greedy, and round 1 (nothing observed yet) is left out. Pooled over
    replicates (every replicate has the same horizon, so this is also their mean).
    """
    acts = _replicates(actions)
    rew = np.asarray(rewards, dtype=np.float64).reshape(acts.shape)
    if acts.shape[1] < 2:
        return float("nan")
    onehot = (acts[:, :, None] == np.arange(num_arms)).astype(np.float64)
    # Statistics of rounds strictly before t: shift the running sums by one round.
    counts = np.cumsum(onehot, axis=1)[:, :-1]
    sums = np.cumsum(onehot * rew[:, :, None], axis=1)[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        emp = np.where(counts > 0, sums / counts, -np.inf)
    best = emp.max(axis=2)
    chosen = np.take_along_axis(emp, acts[:, 1:, None], axis=2)[..., 0]
    greedy = np.isfinite(chosen) & (chosen >= best - 1e-12)
    return float(greedy.mean())


def parse_failure_rate(statuses: Sequence[str]) -> float:
    """Share of steps whose answer was not strictly parsed (status not "ok" / "reprompted")."""
    if not statuses:
        return 0.0
    failed = sum(1 for s in statuses if s not in VALID_PARSE_STATUSES)
    return failed / len(statuses)


# ---------------------------------------------------------------- reference values


def bernoulli_kl(p: ArrayLike, q: ArrayLike) -> FloatArray:
    """KL(Ber(p) ‖ Ber(q)) = p log(p/q) + (1−p) log((1−p)/(1−q)), with 0 log 0 = 0 (inf if q ∉ (0,1)
    where p ≠ q)."""
    p_ = np.asarray(p, dtype=np.float64)
    q_ = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p_ > 0, p_ * np.log(p_ / q_), 0.0)
        b = np.where(p_ < 1, (1 - p_) * np.log((1 - p_) / (1 - q_)), 0.0)
    return np.asarray(a + b, dtype=np.float64)


def lai_robbins_rate(means: ArrayLike, *, horizon: int) -> float:
    """The Lai–Robbins asymptotic rate for Bernoulli arms: log T · Σ_{Δ_a>0} Δ_a / KL(μ_a, μ*).

    Lai & Robbins (1985) bound lim inf_{T→∞} R_T / log T from below by Σ Δ_a / KL(μ_a, μ*) for
    every consistent policy; this is that constant times log T. It is an asymptotic rate, not a
    finite-horizon limit: at small T it can exceed even the uniform policy's regret (hard preset,
    T = 100: 45.4 against uniform's 16), and a policy's regret at a given T may lie below it.
    `means` is (K,). An arm with KL = ∞ (μ* = 1) is told apart in finitely many pulls: it adds 0.
    """
    mu = np.asarray(means, dtype=np.float64)
    best = float(mu.max())
    gaps = best - mu
    sub = gaps > 0
    kl = bernoulli_kl(mu[sub], best)
    with np.errstate(divide="ignore"):
        terms = np.where(np.isfinite(kl), gaps[sub] / kl, 0.0)
    return float(math.log(horizon) * terms.sum())


def uniform_expected_regret(means: ArrayLike) -> float:
    """Expected regret of the uniform policy: Σ_t (max_a μ_t(a) − mean_a μ_t(a)).

    For a stationary (T, K) table this is T·(μ* − mean μ) = Δ·(K−1)/K·T on the gap instances.
    """
    mu = np.asarray(means, dtype=np.float64)
    return float((mu.max(axis=-1) - mu.mean(axis=-1)).sum())


def hedge_regret_bound(*, horizon: int, num_arms: int) -> float:
    """Hedge's worst-case regret bound sqrt(T ln K / 2).

    For η = sqrt(8 ln K / T) and rewards in [0, 1]; holds for every reward sequence, adaptive
    adversaries included.
    """
    return math.sqrt(horizon * math.log(num_arms) / 2.0)


# ---------------------------------------------------------------- uncertainty

# Resamples drawn per chunk are bounded so a large replicate count never allocates gigabytes.
_BOOT_CHUNK_CELLS = 4_000_000


def bootstrap_ci(
    values: ArrayLike, rng: np.random.Generator, *, level: float = 0.95, n_boot: int = 2000
) -> tuple[float, float, float]:
    """(mean, low, high): percentile-bootstrap CI of the mean over replicates.

    Resamples the values with replacement `n_boot` times and takes the (1−level)/2 and
    (1+level)/2 quantiles of the resampled means. NaNs for an empty input.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        nan = float("nan")
        return nan, nan, nan
    mean = float(x.mean())
    rows_per_chunk = max(1, _BOOT_CHUNK_CELLS // n)
    boot = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows_per_chunk):
        stop = min(n_boot, start + rows_per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


@dataclass(frozen=True)
class ScenarioEstimate:
    """A mean over scenarios with its percentile-bootstrap CI (scenarios resampled)."""

    mean: float
    low: float
    high: float
    scenarios: int  # the resampled units
    values: int  # the rows averaged into them (episodes, agent plays, ...)


def scenario_means(values: ArrayLike, scenarios: Sequence[K]) -> tuple[list[K], FloatArray]:
    """Rows of `values` (first axis: one per episode or agent play) averaged per scenario.

    Returns the scenario keys in order of first appearance and their mean rows, (S, ...).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.shape[0] != len(scenarios):
        raise ValueError(f"{x.shape[0]} rows but {len(scenarios)} scenario keys")
    keys = list(dict.fromkeys(scenarios))
    index = {k: i for i, k in enumerate(keys)}
    rows = np.array([index[s] for s in scenarios], dtype=np.int64)
    sums = np.zeros((len(keys), *x.shape[1:]), dtype=np.float64)
    np.add.at(sums, rows, x)
    counts = np.bincount(rows, minlength=len(keys)).astype(np.float64)
    return keys, sums / counts.reshape(-1, *([1] * (x.ndim - 1)))


def scenario_bootstrap_ci(
    values: ArrayLike,
    scenarios: Sequence[Hashable],
    rng: np.random.Generator,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
) -> ScenarioEstimate:
    """Mean regret over scenarios with a CI that resamples scenarios: every held-out figure's CI.

    Each scenario's values (its L episodes, or a classic agent's plays with several seeds) are
    averaged first, then the scenario means are bootstrapped. Scenarios are what is drawn
    independently; the episodes of one scenario share its reward table and are correlated, so
    resampling episodes as if they were independent gives intervals that are too narrow. With
    one value per scenario this is `bootstrap_ci` of the values, in their order, with the same
    draws.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    keys, means = scenario_means(x, list(scenarios))
    mean, low, high = bootstrap_ci(means, rng, level=level, n_boot=n_boot)
    return ScenarioEstimate(mean=mean, low=low, high=high, scenarios=len(keys), values=x.size)


def paired_difference_ci(
    a: Mapping[K, float],
    b: Mapping[K, float],
    rng: np.random.Generator,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
) -> ScenarioEstimate | None:
    """Mean of a[s] − b[s] over the scenarios both have, scenarios resampled in pairs.

    `a` and `b` map a scenario to its mean regret (a policy's episodes, an agent's seeds). Pairing
    removes the scenario-to-scenario spread both share (same reward tables), so this interval is
    the one that says whether a policy beats an agent. None when no scenario is shared.
    """
    keys = [k for k in a if k in b]
    if not keys:
        return None
    diff = np.array([a[k] - b[k] for k in keys], dtype=np.float64)
    mean, low, high = bootstrap_ci(diff, rng, level=level, n_boot=n_boot)
    return ScenarioEstimate(mean=mean, low=low, high=high, scenarios=len(keys), values=len(keys))
