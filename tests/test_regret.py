"""Regret formulas and diagnostics on arrays small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rmft_api import regret

HARD = [0.6, 0.4, 0.4, 0.4, 0.4]


# ---------------------------------------------------------------- regret


def test_action_regret_steps_and_cumulative() -> None:
    means = np.array([[0.2, 0.8]] * 3)
    steps = regret.action_regret_steps(means, [0, 1, 0])
    np.testing.assert_allclose(steps, [0.6, 0.0, 0.6])
    np.testing.assert_allclose(regret.cumulative(steps), [0.6, 0.6, 1.2])


def test_action_regret_is_dynamic_under_changing_means() -> None:
    means = np.array([[0.9, 0.1], [0.1, 0.9]])
    # Arm 0 is best in round 1 only: staying on it costs 0.8 in round 2.
    np.testing.assert_allclose(regret.action_regret_steps(means, [0, 0]), [0.0, 0.8])


def test_action_regret_batches_over_replicates() -> None:
    means = np.array([[0.2, 0.8]] * 2)
    steps = regret.action_regret_steps(means, [[0, 0], [1, 1]])
    np.testing.assert_allclose(steps, [[0.6, 0.6], [0.0, 0.0]])


def test_policy_regret_matches_actions_for_one_hot_policies() -> None:
    means = np.array([[0.2, 0.8], [0.5, 0.1]])
    np.testing.assert_allclose(
        regret.policy_regret_steps(means, [[0.5, 0.5], [1.0, 0.0]]), [0.3, 0.0]
    )
    one_hot = np.eye(2)[[0, 1]]
    np.testing.assert_allclose(
        regret.policy_regret_steps(means, one_hot), regret.action_regret_steps(means, [0, 1])
    )


def test_full_info_regret_curve_hand_case() -> None:
    policies = [[1, 0], [1, 0], [1, 0]]
    rewards = [[1, 0], [0, 1], [0, 1]]
    # best fixed: max(1,0)=1, max(1,1)=1, max(1,2)=2; earned 1, 1, 1
    np.testing.assert_allclose(regret.full_info_regret_curve(policies, rewards), [0, 0, 1])
    mixed = regret.full_info_regret_curve([[0.5, 0.5]] * 3, rewards)
    np.testing.assert_allclose(mixed, [0.5, 0.0, 0.5])


def test_realised_regret() -> None:
    means = np.array([[0.5, 0.7]] * 2)
    assert regret.realised_regret(means, [1.0, 0.0]) == pytest.approx(0.4)
    # A lucky run can beat the best mean: realised regret goes negative.
    assert regret.realised_regret(means, [1.0, 1.0]) == pytest.approx(-0.6)


# ---------------------------------------------------------------- diagnostics


def test_suff_fail_freq_hand_case() -> None:
    actions = [[0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert regret.suff_fail_freq(actions, [1, 1, 1, 1], t=3) == pytest.approx(2 / 3)
    assert regret.suff_fail_freq(actions, [1, 1, 1, 1], t=1) == pytest.approx(1 / 3)
    # Per-replicate, per-round best arms (non-stationary): replicate 3 now hits arm 0 late.
    best = [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert regret.suff_fail_freq(actions, best, t=3) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        regret.suff_fail_freq(actions, [1, 1, 1, 1], t=5)


def test_k_min_frac_and_coverage() -> None:
    actions = [[0, 1, 0, 1], [0, 0, 0, 1]]
    # replicate 1: 2·2/4 = 1; replicate 2: 2·1/4 = 0.5
    assert regret.k_min_frac(actions, num_arms=2, t=4) == pytest.approx(0.75)
    assert regret.k_min_frac(actions, num_arms=3, t=4) == 0.0
    np.testing.assert_array_equal(regret.arm_counts(actions, num_arms=2, t=3), [[2, 1], [3, 0]])
    assert regret.coverage([0, 0, 1], num_arms=3, t=2) == pytest.approx(1 / 3)
    assert regret.coverage([0, 0, 1], num_arms=3, t=3) == pytest.approx(2 / 3)


def test_greedy_frac_hand_cases() -> None:
    # Round 2 picks an untried arm (not greedy); rounds 3 and 4 pick arm 0 (mean 1 vs 0).
    assert regret.greedy_frac([0, 1, 0, 0], [1, 0, 1, 0], num_arms=2) == pytest.approx(2 / 3)
    # A tie between empirical means counts as greedy.
    assert regret.greedy_frac([0, 1, 1], [0.5, 0.5, 0.0], num_arms=2) == pytest.approx(1 / 2)
    # Always switching away from the better arm is never greedy.
    assert regret.greedy_frac([[0, 1, 1, 1]], [[1, 0, 0, 0]], num_arms=2) == 0.0


def test_parse_failure_rate() -> None:
    statuses = ["ok", "reprompted", "fallback_random", "forfeit"]
    assert regret.parse_failure_rate(statuses) == 0.5
    assert regret.parse_failure_rate(["ok"] * 3) == 0.0
    assert regret.parse_failure_rate([]) == 0.0


# ---------------------------------------------------------------- reference values


def test_bernoulli_kl_values() -> None:
    assert float(regret.bernoulli_kl(0.4, 0.6)) == pytest.approx(0.2 * math.log(1.5))
    assert float(regret.bernoulli_kl(0.5, 0.5)) == 0.0
    assert float(regret.bernoulli_kl(0.0, 0.5)) == pytest.approx(math.log(2.0))
    assert math.isinf(float(regret.bernoulli_kl(0.5, 1.0)))


def test_lai_robbins_hard_instance() -> None:
    # Four arms with Δ = 0.2 and KL(0.4, 0.6) = 0.2 ln 1.5: 4 ln(100) / ln(1.5).
    expected = 4 * math.log(100) / math.log(1.5)
    assert regret.lai_robbins_rate(HARD, horizon=100) == pytest.approx(expected)
    # An arm against μ* = 1 has infinite KL and adds nothing; equal arms add nothing.
    assert regret.lai_robbins_rate([1.0, 0.5], horizon=100) == 0.0
    assert regret.lai_robbins_rate([0.5, 0.5], horizon=100) == 0.0
    # An asymptotic rate, not a finite-T limit: at T = 100 it is far above uniform's regret.
    assert expected > 2.5 * regret.uniform_expected_regret(np.tile(HARD, (100, 1)))


def test_uniform_expected_regret_and_hedge_bound() -> None:
    means = np.tile(HARD, (100, 1))
    assert regret.uniform_expected_regret(means) == pytest.approx(0.2 * 4 / 5 * 100)
    ns = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    assert regret.uniform_expected_regret(ns) == pytest.approx(0.8)
    assert regret.hedge_regret_bound(horizon=100, num_arms=5) == pytest.approx(
        math.sqrt(50 * math.log(5))
    )


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_basic_properties() -> None:
    rng = np.random.default_rng(0)
    mean, low, high = regret.bootstrap_ci([2.0] * 10, rng)
    assert mean == low == high == 2.0
    x = rng.normal(5.0, 1.0, 40)
    mean, low, high = regret.bootstrap_ci(x, rng)
    assert mean == pytest.approx(float(x.mean()))
    assert low < mean < high
    _, low50, high50 = regret.bootstrap_ci(x, rng, level=0.5)
    assert high50 - low50 < high - low
    assert all(math.isnan(v) for v in regret.bootstrap_ci([], rng))


def test_bootstrap_ci_width_matches_normal_theory_in_chunked_path() -> None:
    rng = np.random.default_rng(1)
    x = rng.exponential(1.0, 5000)  # n large enough to resample in several chunks
    _, low, high = regret.bootstrap_ci(x, rng, n_boot=1000)
    normal_width = 2 * 1.96 * x.std() / math.sqrt(x.size)
    assert high - low == pytest.approx(normal_width, rel=0.15)


def test_bootstrap_ci_coverage() -> None:
    rng = np.random.default_rng(2)
    trials, covered = 300, 0
    for _ in range(trials):
        x = rng.exponential(1.0, 60)  # true mean 1
        _, low, high = regret.bootstrap_ci(x, rng, n_boot=1000)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / trials <= 0.99
