"""How a regret curve grows: the exponent fit, its regression test, and the trend test.

Both tests are the predecessor paper's (Park, Liu, Ozdaglar, Zhang, "Do LLM Agents Have Regret?",
ICLR 2025): a regression of log R_t on log t with the one-sided test of H0: β ≥ 1 (linear or
worse) against β < 1 (sublinear), and a sign test that R_t/t falls. Their exact forms are
unverified (REFERENCE §2), so each lives in one function here. A curve that ends at or below zero
has no regret to grow: it gets no exponent and no regression test, only the label "no-regret"
(fitting the positive rounds of such a curve gave meaningless exponents such as −1.11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# The fit ignores the first rounds, where forced exploration (e.g. UCB trying every arm once)
# makes the curve steeper than its asymptotic shape: this share of the horizon, at least 1.
GROWTH_SKIP_FRACTION = 0.05
NO_REGRET = "no-regret"


@dataclass(frozen=True)
class RegressionTest:
    """The fit log R_t ≈ β log t + c and the one-sided test of H0: β ≥ 1.

    `p_value` is P(T_{n−2} ≤ (β̂ − 1)/se(β̂)) under OLS assumptions: small means the curve grows
    significantly slower than linearly. Successive R_t share every earlier round, so residuals are
    strongly autocorrelated and this p-value overstates the evidence; read it with the trend test
    and the CI of the regret itself, never alone.
    """

    beta: float
    std_err: float
    p_value: float
    rounds: int  # rounds in the fit


@dataclass(frozen=True)
class TrendTest:
    """Trend test result: `decreases` of R_t/t among `rounds` comparisons, and the p-value."""

    decreases: int
    rounds: int
    p_value: float


@dataclass(frozen=True)
class Growth:
    """Everything the reports say about one (mean) regret curve's growth."""

    exponent: float | None  # β; None when the curve has no regret or too few positive rounds
    p_value: float | None  # regression test of H0: β ≥ 1; None where there is no exponent
    trend_p_value: float | None  # None for curves shorter than 2 rounds
    no_regret: bool  # the curve ends at or below zero

    @property
    def label(self) -> str:
        """What a table shows in the β column."""
        if self.no_regret:
            return NO_REGRET
        return "—" if self.exponent is None else f"{self.exponent:.2f}"


def regression_test(curve: ArrayLike, *, skip: int | None = None) -> RegressionTest | None:
    """Least-squares fit of log R_t on log t over one (mean) regret curve, with its test.

    t is 1-indexed. The first `skip` rounds are left out (default: GROWTH_SKIP_FRACTION of T, at
    least 1) and so are rounds with R_t ≤ 0 (no logarithm). None when the curve ends at or below
    zero (nothing grows) or fewer than three rounds remain (no residual variance).
    """
    r = np.asarray(curve, dtype=np.float64)
    horizon = r.shape[-1]
    if horizon == 0 or r[-1] <= 0:
        return None
    if skip is None:
        skip = max(1, int(GROWTH_SKIP_FRACTION * horizon))
    t = np.arange(1, horizon + 1, dtype=np.float64)
    keep = (t > skip) & (r > 0)
    n = int(keep.sum())
    if n < 3:
        return None
    x, y = np.log(t[keep]), np.log(r[keep])
    x_c = x - x.mean()
    sxx = float((x_c * x_c).sum())
    if sxx == 0.0:
        return None
    beta = float((x_c * (y - y.mean())).sum() / sxx)
    residuals = y - y.mean() - beta * x_c
    rss = float((residuals * residuals).sum())
    std_err = math.sqrt(rss / (n - 2) / sxx)
    if std_err <= 1e-12 * max(1.0, abs(beta)):
        # An exact power law (no residual but rounding): the test reduces to comparing β with 1.
        p_value = 0.5 if abs(beta - 1.0) <= 1e-9 else (0.0 if beta < 1.0 else 1.0)
    else:
        p_value = student_t_cdf((beta - 1.0) / std_err, df=n - 2)
    return RegressionTest(beta=beta, std_err=std_err, p_value=p_value, rounds=n)


def growth_exponent(curve: ArrayLike, *, skip: int | None = None) -> float | None:
    """β of log R_t ≈ β log t + c (β ≈ 1 linear, < 1 sublinear); None where `regression_test`
    has no fit, in particular for a curve ending at or below zero."""
    fit = regression_test(curve, skip=skip)
    return None if fit is None else fit.beta


def _binomial_half_sf(count: int, n: int) -> float:
    """P(Binomial(n, ½) ≥ count), summed in log space: large n neither overflows nor underflows."""
    if count <= 0:
        return 1.0
    if count > n:
        return 0.0
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    k = np.arange(count, n + 1)
    log_terms = log_fact[n] - log_fact[k] - log_fact[n - k] - n * math.log(2.0)
    top = float(log_terms.max())
    return float(min(1.0, math.exp(top) * float(np.exp(log_terms - top).sum())))


def trend_test(curve: ArrayLike) -> TrendTest:
    """Park et al.'s trend test of sublinear regret on one regret curve R_1..R_T.

    Counts the rounds t = 2..T where the average regret decreased, R_t/t < R_{t−1}/(t−1), and
    returns p = P(Binomial(T−1, ½) ≥ count): under "no trend" each comparison is a fair coin, so
    a small p is evidence that R_t/t is falling (sublinear regret). The coin model assumes
    per-round increments spread symmetrically around their mean: apply it to expected-regret
    curves (or means over replicates), not to one replicate's 0/Δ steps.
    """
    r = np.asarray(curve, dtype=np.float64)
    horizon = r.shape[-1]
    avg = r / np.arange(1, horizon + 1)
    decreases = int((np.diff(avg) < 0).sum())
    n = horizon - 1
    return TrendTest(decreases=decreases, rounds=n, p_value=_binomial_half_sf(decreases, n))


def curve_growth(curve: ArrayLike) -> Growth:
    """The exponent, both tests and the no-regret flag of one (mean) regret curve."""
    r = np.asarray(curve, dtype=np.float64)
    no_regret = r.size > 0 and bool(r[-1] <= 0)
    fit = regression_test(r)
    return Growth(
        exponent=None if fit is None else fit.beta,
        p_value=None if fit is None else fit.p_value,
        trend_p_value=trend_test(r).p_value if r.size >= 2 else None,
        no_regret=no_regret,
    )


# ---------------------------------------------------------------- Student's t distribution


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return value


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The fraction converges fast left of the mode; else use I_x(a, b) = 1 − I_{1−x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, *, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` degrees of freedom (numpy only: no scipy at runtime)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t < 0 else 1.0 - tail
