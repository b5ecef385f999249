"""The numeric core of the environments: determinism, means, reward tables, NS and FOL families."""

from __future__ import annotations

import numpy as np
import pytest

from rmft_api.agents.base import run_full_info
from rmft_api.agents.experts import FollowTheLeaderAgent, UniformExpertsAgent
from rmft_api.config import EnvConfig
from rmft_api.envs.bandit import make_bandit
from rmft_api.envs.base import BanditInstance, FullInfoInstance, Instance
from rmft_api.envs.factory import make_instance
from rmft_api.envs.online import adaptive_reward_vector, make_full_info
from rmft_api.errors import ConfigError

FOL_FAMILIES = [
    "iid_uniform",
    "iid_gaussian",
    "linear_trend",
    "sine_trend",
    "alternating",
    "adaptive",
]
ALL_ENVS = [
    EnvConfig(preset="hard"),
    EnvConfig(preset="easy", noise="gaussian", sigma=0.3),
    EnvConfig(kind="mab", means_mode="uniform"),
    EnvConfig(preset="ns-abrupt"),
    EnvConfig(preset="ns-drift"),
    *[EnvConfig(kind="fol", family=f) for f in FOL_FAMILIES],
]


def _tables(inst: Instance) -> list[np.ndarray]:
    if isinstance(inst, BanditInstance):
        return [inst.means, inst.rewards]
    return [inst.table]


@pytest.mark.parametrize("env", ALL_ENVS, ids=lambda e: f"{e.kind}-{e.ns_mode}-{e.family}")
def test_same_seed_same_tables_other_seed_other_tables(env: EnvConfig) -> None:
    a, b, c = make_instance(env, 11), make_instance(env, 11), make_instance(env, 12)
    assert type(a) is type(b)
    for x, y in zip(_tables(a), _tables(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # The means of another seed may coincide (5 arm orders), its reward draws may not.
    assert not np.array_equal(_tables(a)[-1], _tables(c)[-1])


def test_factory_dispatches_on_kind() -> None:
    assert isinstance(make_instance(EnvConfig(preset="hard"), 0), BanditInstance)
    ns = make_instance(EnvConfig(preset="ns-abrupt"), 0)
    assert isinstance(ns, BanditInstance) and ns.nonstationary
    assert isinstance(make_instance(EnvConfig(preset="fol-iid"), 0), FullInfoInstance)
    with pytest.raises(ConfigError, match="not a bandit"):
        make_bandit(EnvConfig(kind="fol"), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="not full-information"):
        make_full_info(EnvConfig(kind="mab"), np.random.default_rng(0))


def test_gap_means_and_shuffled_best_arm() -> None:
    env = EnvConfig(preset="hard")
    best_indices = set()
    for seed in range(40):
        inst = make_instance(env, seed)
        assert isinstance(inst, BanditInstance)
        row = inst.means[0]
        assert np.all(inst.means == row) and not inst.nonstationary
        assert sorted(row.tolist()) == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.6])
        best_indices.add(inst.best_arm(0))
        assert inst.variation_budget() == 0.0
    assert len(best_indices) >= 4  # K = 5: the best arm moves around


def test_uniform_and_fixed_means() -> None:
    uni = make_instance(EnvConfig(kind="mab", means_mode="uniform", num_arms=6), 3)
    assert isinstance(uni, BanditInstance)
    assert np.all((uni.means >= 0) & (uni.means <= 1)) and len(set(uni.means[0])) == 6
    fixed = EnvConfig(kind="mab", means_mode="fixed", num_arms=3, means=[0.9, 0.1, 0.5])
    for seed in range(5):  # never shuffled
        inst = make_instance(fixed, seed)
        assert isinstance(inst, BanditInstance)
        assert inst.means[0].tolist() == [0.9, 0.1, 0.5]


def test_bernoulli_and_gaussian_rewards_follow_the_means() -> None:
    bern = make_instance(EnvConfig(preset="easy", horizon=20_000), 5)
    assert isinstance(bern, BanditInstance)
    assert set(np.unique(bern.rewards).tolist()) == {0.0, 1.0}
    np.testing.assert_allclose(bern.rewards.mean(axis=0), bern.means[0], atol=0.015)

    env = EnvConfig(preset="easy", horizon=20_000, noise="gaussian", sigma=0.4)
    gauss = make_instance(env, 5)
    assert isinstance(gauss, BanditInstance) and gauss.noise == "gaussian" and gauss.sigma == 0.4
    np.testing.assert_allclose(gauss.rewards.mean(axis=0), gauss.means[0], atol=0.015)
    np.testing.assert_allclose(gauss.rewards.std(axis=0), 0.4, atol=0.015)
    assert gauss.rewards.max() > 1.0 and gauss.rewards.min() < 0.0  # not clipped


@pytest.mark.parametrize("means_mode", ["gap", "uniform", "fixed"])
def test_abrupt_switches_change_the_best_arm(means_mode: str) -> None:
    env = EnvConfig(
        kind="ns",
        ns_mode="abrupt",
        num_switches=4,
        horizon=200,
        means_mode=means_mode,
        means=[0.2, 0.8, 0.5, 0.4, 0.3] if means_mode == "fixed" else None,
    )
    for seed in range(10):
        inst = make_instance(env, seed)
        assert isinstance(inst, BanditInstance) and inst.nonstationary
        changes = np.flatnonzero(np.any(np.diff(inst.means, axis=0) != 0, axis=1)) + 1
        assert changes.size == 4
        for t in changes:
            assert inst.best_arm(int(t)) != inst.best_arm(int(t) - 1)
        assert inst.variation_budget() > 0
        assert np.all((inst.means >= 0) & (inst.means <= 1))


def test_abrupt_switches_capped_by_short_horizon() -> None:
    inst = make_instance(EnvConfig(kind="ns", ns_mode="abrupt", num_switches=5, horizon=3), 0)
    assert isinstance(inst, BanditInstance) and inst.horizon == 3
    assert inst.variation_budget() > 0


def test_drift_is_smooth_bounded_and_moves_the_best_arm() -> None:
    env = EnvConfig(preset="ns-drift", horizon=500, drift_periods=2.0)
    for seed in range(10):
        inst = make_instance(env, seed)
        assert isinstance(inst, BanditInstance)
        assert np.all((inst.means >= 0) & (inst.means <= 1))
        # A sine of amplitude ≤ 0.3 and 2 periods moves at most 2π·2·0.3/T per round.
        step = np.abs(np.diff(inst.means, axis=0)).max()
        assert step <= 2 * np.pi * 2 * 0.3 / 500 + 1e-12
        assert inst.variation_budget() > 0.5
        assert len(set(inst.means.argmax(axis=1).tolist())) >= 2


@pytest.mark.parametrize("family", FOL_FAMILIES)
def test_fol_families_stay_in_unit_interval(family: str) -> None:
    env = EnvConfig(kind="fol", family=family, horizon=300, num_arms=4)
    for seed in range(5):
        inst = make_instance(env, seed)
        assert isinstance(inst, FullInfoInstance)
        assert inst.table.shape == (300, 4) and inst.adaptive == (family == "adaptive")
        trace = run_full_info(UniformExpertsAgent(), inst, np.random.default_rng(0))
        assert np.all((trace.reward_vectors >= 0) & (trace.reward_vectors <= 1))


def test_iid_gaussian_has_distinct_arm_means() -> None:
    inst = make_instance(EnvConfig(kind="fol", family="iid_gaussian", horizon=4000), 1)
    assert isinstance(inst, FullInfoInstance)
    means = np.sort(inst.table.mean(axis=0))
    assert np.all(np.diff(means) > 0.08)  # spread 0.25..0.75 over K = 5: gaps of 0.125


def test_trend_families_change_the_leading_arm() -> None:
    for family in ("linear_trend", "sine_trend"):
        env = EnvConfig(kind="fol", family=family, horizon=400)
        for seed in range(5):
            inst = make_instance(env, seed)
            assert isinstance(inst, FullInfoInstance)
            head, tail = inst.table[:40].mean(axis=0), inst.table[-40:].mean(axis=0)
            if family == "linear_trend":
                assert head.argmax() != tail.argmax()
            else:
                best_per_round = inst.table.argmax(axis=1)
                assert len(set(best_per_round.tolist())) == inst.num_arms


def test_alternating_defeats_follow_the_leader() -> None:
    horizon = 400
    inst = make_instance(EnvConfig(kind="fol", family="alternating", horizon=horizon), 7)
    assert isinstance(inst, FullInfoInstance)
    trace = run_full_info(FollowTheLeaderAgent(), inst, np.random.default_rng(0))
    ftl_reward = float((trace.policies * trace.reward_vectors).sum())
    best_fixed = float(trace.reward_vectors.sum(axis=0).max())
    assert ftl_reward < 1.0
    assert best_fixed == pytest.approx(horizon / 2, abs=1.0)


def test_adaptive_adversary_pays_the_least_played_arm() -> None:
    inst = make_instance(EnvConfig(kind="fol", family="adaptive", num_arms=3, horizon=10), 2)
    assert isinstance(inst, FullInfoInstance)
    past = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    np.testing.assert_array_equal(adaptive_reward_vector(inst, 2, past), [0.0, 0.0, 1.0])
    # No history: all tied, the pre-drawn noise decides, the same way every time.
    first = inst.reward_vector(0, np.zeros((0, 3)))
    assert first.sum() == 1.0 and first.argmax() == inst.table[0].argmax()
    tied = np.array([[0.25, 0.25, 0.5]])
    vec = adaptive_reward_vector(inst, 1, tied)
    assert vec[2] == 0.0 and vec.argmax() == int(np.argmax(inst.table[1][:2]))
