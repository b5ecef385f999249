"""Growth of regret curves: the exponent, the regression test of H0: β ≥ 1, the trend test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rmft_api import growth


def test_growth_exponent_of_linear_and_sqrt_curves() -> None:
    t = np.arange(1, 1001, dtype=np.float64)
    assert growth.growth_exponent(0.3 * t) == pytest.approx(1.0, abs=1e-9)
    assert growth.growth_exponent(2.0 * np.sqrt(t)) == pytest.approx(0.5, abs=1e-9)
    sublinear = growth.growth_exponent(5.0 * np.log1p(t))
    assert sublinear is not None and sublinear < 0.5
    assert growth.growth_exponent(np.zeros(100)) is None


def test_growth_exponent_skips_early_rounds() -> None:
    # Linear for the first 10 rounds (forced exploration), flat afterwards.
    curve = np.minimum(np.arange(1, 201, dtype=np.float64), 10.0)
    assert growth.growth_exponent(curve, skip=20) == pytest.approx(0.0, abs=1e-9)
    steep = growth.growth_exponent(curve, skip=0)
    assert steep is not None and steep > 0.1


def test_a_curve_ending_at_or_below_zero_has_no_exponent() -> None:
    """The old fit used the curve's positive rounds only: a curve that rises to +5 and ends at
    −20 got a "growth exponent" of about −1 although nothing grows."""
    t = np.arange(1, 101, dtype=np.float64)
    curve = np.where(t <= 30, t / 6.0, 5.0 - 25.0 * (t - 30) / 70.0)
    assert curve[-1] == pytest.approx(-20.0)
    assert growth.growth_exponent(curve) is None
    assert growth.regression_test(curve) is None
    described = growth.curve_growth(curve)
    assert described.no_regret and described.exponent is None and described.p_value is None
    assert described.label == "no-regret"
    assert growth.curve_growth(np.zeros(50)).no_regret  # the oracle: exactly zero
    assert growth.curve_growth(0.3 * t).label == "1.00"


def test_regression_test_p_value_against_ols_theory() -> None:
    """One-sided test of H0: β ≥ 1 on the fit of log R_t on log t, checked against scipy."""
    rng = np.random.default_rng(4)
    t = np.arange(1, 201, dtype=np.float64)
    curve = 2.0 * t**0.6 * np.exp(rng.normal(0.0, 0.05, t.size))
    fit = growth.regression_test(curve)
    assert fit is not None
    keep = t > 10  # GROWTH_SKIP_FRACTION of 200
    ref = stats.linregress(np.log(t[keep]), np.log(curve[keep]))
    assert fit.beta == pytest.approx(ref.slope, rel=1e-12)
    assert fit.std_err == pytest.approx(ref.stderr, rel=1e-9)
    expected = stats.t.cdf((ref.slope - 1.0) / ref.stderr, df=keep.sum() - 2)
    assert fit.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert fit.p_value < 1e-10  # β ≈ 0.6, far below 1
    steeper = growth.regression_test(0.2 * t**1.2 * np.exp(rng.normal(0.0, 0.05, t.size)))
    assert steeper is not None and steeper.p_value > 0.99  # β ≈ 1.2: H0 stands


def test_exact_power_laws_degenerate_cleanly() -> None:
    t = np.arange(1, 101, dtype=np.float64)
    sqrt_fit = growth.regression_test(np.sqrt(t))
    assert sqrt_fit is not None and sqrt_fit.p_value == 0.0
    linear_fit = growth.regression_test(3.0 * t)
    assert linear_fit is not None and linear_fit.p_value == 0.5  # on the boundary β = 1
    steep_fit = growth.regression_test(t**1.5)
    assert steep_fit is not None and steep_fit.p_value == 1.0


@pytest.mark.parametrize("df", [1, 2, 5, 30, 93, 1000])
def test_student_t_cdf_matches_scipy(df: int) -> None:
    for x in (-40.0, -3.2, -1.0, -0.1, 0.0, 0.4, 2.5, 12.0):
        assert growth.student_t_cdf(x, df=df) == pytest.approx(stats.t.cdf(x, df), abs=1e-12)


def test_trend_test_linear_vs_log_curves() -> None:
    rng = np.random.default_rng(3)
    horizon = 500
    noisy_linear = np.cumsum(0.2 + rng.normal(0.0, 0.05, horizon))
    log_curve = 3.0 * np.log1p(np.arange(1, horizon + 1))
    lin, log = growth.trend_test(noisy_linear), growth.trend_test(log_curve)
    assert lin.rounds == log.rounds == horizon - 1
    assert lin.p_value > 0.05
    assert log.decreases == horizon - 1
    assert log.p_value < 1e-100
    exact_linear = growth.trend_test(2.0 * np.arange(1, 101))
    assert exact_linear.decreases == 0 and exact_linear.p_value == 1.0


@pytest.mark.parametrize(("count", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (2600, 5000)])
def test_binomial_tail_matches_scipy(count: int, n: int) -> None:
    expected = stats.binom.sf(count - 1, n, 0.5)
    assert growth._binomial_half_sf(count, n) == pytest.approx(expected, rel=1e-9)
