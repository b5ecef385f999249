"""Regret and exploration diagnostics: pure numpy functions over hidden truth (REFERENCE §2).

Conventions. Rounds are 0-indexed in arrays (`means[t]` is round t+1 of the maths); a function
that takes a round number `t` says which. Arrays may carry leading replicate axes: `actions` is
(T,) or (R, T), `means` / `policies` / `reward_vectors` are (T, K) or (R, T, K). Per-round means
(T, K) make one function serve both the stationary bandit (pseudo-regret, all rows equal) and the
non-stationary one (dynamic regret against the per-round best arm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Parse statuses that count as the model's own, strictly parsed answer (schema.ParseStatus).
VALID_PARSE_STATUSES = frozenset({"ok", "reprompted"})

# The growth fit ignores the first rounds, where forced exploration (e.g. UCB trying every arm
# once) makes the curve steeper than its asymptotic shape: this share of the horizon, at least 1.
GROWTH_SKIP_FRACTION = 0.05


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


def suff_fail_freq(actions: ArrayLike, best_arms: ArrayLike, *, t: int) -> float:
    """SuffFailFreq(t): share of replicates that never pick the best arm in rounds t..T.

    Rounds are 1-indexed here (t = 1 looks at the whole episode). `best_arms` is (T,) or (R, T):
    the per-round best arm, so a non-stationary bandit is judged against its current best arm.
    """
    acts = _replicates(actions)
    _check_round(t, acts.shape[1])
    best = np.broadcast_to(np.asarray(best_arms, dtype=np.int64), acts.shape)
    hit = (acts[:, t - 1 :] == best[:, t - 1 :]).any(axis=1)
    return float(1.0 - hit.mean())


def arm_counts(actions: ArrayLike, *, num_arms: int, t: int) -> IntArray:
    """Pulls of each arm in the first t rounds (1-indexed, rounds 1..t), shape (R, K)."""
    acts = _replicates(actions)
    _check_round(t, acts.shape[1])
    onehot = acts[:, :t, None] == np.arange(num_arms)
    return np.asarray(onehot.sum(axis=1), dtype=np.int64)


def k_min_frac(actions: ArrayLike, *, num_arms: int, t: int) -> float:
    """K·MinFrac(t) = K · min_a N_t(a) / t, averaged over replicates.

    N_t(a) counts the pulls of arm a in the first t rounds. 1 means perfectly even exploration,
    0 that some arm was never tried.
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


# ---------------------------------------------------------------- growth of the regret curve


def growth_exponent(curve: ArrayLike, *, skip: int | None = None) -> float:
    """β of the least-squares fit log R_t ≈ β log t + c over one (mean) regret curve.

    t is 1-indexed. The first `skip` rounds are left out (default: GROWTH_SKIP_FRACTION of T, at
    least 1) because forced initial exploration distorts them, and so are rounds with R_t ≤ 0
    (no logarithm). β ≈ 1: linear regret; β < 1: sublinear. NaN when fewer than two rounds remain.
    """
    r = np.asarray(curve, dtype=np.float64)
    horizon = r.shape[-1]
    if skip is None:
        skip = max(1, int(GROWTH_SKIP_FRACTION * horizon))
    t = np.arange(1, horizon + 1, dtype=np.float64)
    keep = (t > skip) & (r > 0)
    if keep.sum() < 2:
        return float("nan")
    x, y = np.log(t[keep]), np.log(r[keep])
    x_c = x - x.mean()
    denom = float((x_c * x_c).sum())
    if denom == 0.0:
        return float("nan")
    return float((x_c * (y - y.mean())).sum() / denom)


@dataclass(frozen=True)
class TrendTest:
    """Trend test result: `decreases` of R_t/t among `rounds` comparisons, and the p-value."""

    decreases: int
    rounds: int
    p_value: float


def _binomial_half_sf(count: int, n: int) -> float:
    """P(Binomial(n, ½) ≥ count), summed in log space: large n neither overflows nor underflows."""
    if count <= 0:
        return 1.0
    if count > n:
        return 0.0
    # log i! for i = 0..n, exact enough (cumulative sum of logs) for any horizon we allow.
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    k = np.arange(count, n + 1)
    log_terms = log_fact[n] - log_fact[k] - log_fact[n - k] - n * math.log(2.0)
    top = float(log_terms.max())
    return float(min(1.0, math.exp(top) * float(np.exp(log_terms - top).sum())))


def trend_test(curve: ArrayLike) -> TrendTest:
    """Park et al. (2024)'s trend test of sublinear regret on one regret curve R_1..R_T.

    Counts the rounds t = 2..T where the average regret decreased, R_t/t < R_{t−1}/(t−1), and
    returns p = P(Binomial(T−1, ½) ≥ count): under "no trend" each comparison is a fair coin, so
    a small p is evidence that R_t/t is falling (sublinear regret). The coin model assumes
    per-round increments spread symmetrically around their mean: apply it to expected-regret
    curves (or means over replicates), not to one replicate's 0/Δ steps. The exact form in the
    paper is unverified (REFERENCE §2); this function is the one place it lives.
    """
    r = np.asarray(curve, dtype=np.float64)
    horizon = r.shape[-1]
    avg = r / np.arange(1, horizon + 1)
    decreases = int((np.diff(avg) < 0).sum())
    n = horizon - 1
    return TrendTest(decreases=decreases, rounds=n, p_value=_binomial_half_sf(decreases, n))


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


def lai_robbins_bound(means: ArrayLike, *, horizon: int) -> float:
    """Lai–Robbins asymptotic lower bound for Bernoulli arms: log T · Σ_{Δ_a>0} Δ_a / KL(μ_a, μ*).

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
