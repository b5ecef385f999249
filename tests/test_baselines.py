"""`rmft-api baselines`: classic agents on shared draws, with the acceptance figures of issue 2."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from typer.testing import CliRunner

from rmft_api.baselines import FOL_FAMILIES, run_baselines
from rmft_api.cli import app
from rmft_api.config import load_config
from rmft_api.errors import ConfigError


def _cli_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["baselines", *args, "--json"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    parsed: dict[str, Any] = json.loads(last)
    return parsed


def test_mab_hard_acceptance() -> None:
    out = _cli_json("--env", "mab", "--preset", "hard", "--replicates", "200")
    agents = out["agents"]
    assert (out["env"], out["horizon"], out["replicates"]) == ("mab", 100, 200)
    oracle = agents["oracle"]
    assert oracle["mean_regret"] == oracle["ci_low"] == oracle["ci_high"] == 0.0
    analytic = 0.2 * (5 - 1) / 5 * 100  # Δ·(K−1)/K·T
    assert out["analytic"]["uniform"] == pytest.approx(analytic)
    uniform = agents["uniform"]
    assert abs(uniform["mean_regret"] - analytic) < 0.05 * analytic
    assert uniform["ci_low"] < analytic < uniform["ci_high"]
    assert out["lai_robbins"] == pytest.approx(4 * math.log(100) / math.log(1.5))
    # The brief asked for UCB1 and Thompson below 50% of uniform here; at T = 100 with Δ = 0.2
    # no standard tuning gets there (Thompson ≈ 70%, textbook UCB1 ≈ 87% of uniform, matching
    # an independent simulation), so we assert what holds: both clearly beat uniform.
    for name in ("ucb1", "thompson"):
        assert agents[name]["ci_high"] < uniform["ci_low"], name
    assert agents["thompson"]["mean_regret"] < 0.75 * uniform["mean_regret"]
    # Greedy commits early: it fails on the second half far more often than UCB1 / Thompson.
    assert agents["greedy"]["suff_fail_freq"] > 0.3
    assert agents["ucb1"]["suff_fail_freq"] == 0.0
    assert agents["uniform"]["k_min_frac"] > agents["greedy"]["k_min_frac"]


def test_mab_hard_growth_exponents_at_t1000() -> None:
    out = _cli_json("--env", "mab", "--preset", "hard", "--horizon", "1000", "--replicates", "100")
    agents = out["agents"]
    assert out["horizon"] == 1000
    assert abs(agents["uniform"]["growth_exponent"] - 1.0) < 0.05
    assert agents["thompson"]["growth_exponent"] < 0.7
    # Textbook UCB1 (bonus sqrt(2 ln n / n_a)) is still pre-asymptotic at T = 1000 for Δ = 0.2
    # (its log T phase needs ~8 ln T / Δ² ≈ 1400 pulls per bad arm): β ≈ 0.81, not < 0.7.
    assert agents["ucb1"]["growth_exponent"] < 0.9
    assert agents["ucb1"]["growth_exponent"] < agents["uniform"]["growth_exponent"] - 0.1
    uniform = agents["uniform"]["mean_regret"]
    assert agents["thompson"]["mean_regret"] < 0.5 * uniform
    assert agents["ucb1"]["mean_regret"] < 0.6 * uniform
    # Park et al.'s trend test: sublinear agents' R_t/t falls almost every round; uniform's not.
    assert agents["thompson"]["trend_p_value"] < 1e-6
    assert agents["ucb1"]["trend_p_value"] < 1e-6
    assert agents["uniform"]["trend_p_value"] > 0.05
    assert agents["oracle"]["growth_exponent"] is None


def test_fol_every_family_hedge_below_its_bound() -> None:
    out = _cli_json("--env", "fol")
    assert out["env"] == "fol"
    families = out["families"]
    assert set(families) == set(FOL_FAMILIES)
    bound = math.sqrt(100 * math.log(5) / 2)
    for name, block in families.items():
        assert block["hedge_bound"] == pytest.approx(bound)
        hedge = block["agents"]["hedge"]
        assert hedge["ci_high"] < block["hedge_bound"], name
        assert hedge["suff_fail_freq"] is None and hedge["k_min_frac"] is None
    # The families tell agents apart: follow-the-leader's regret is linear on alternating.
    alternating = families["alternating"]["agents"]
    assert alternating["ftl"]["mean_regret"] > 0.4 * 100
    assert alternating["hedge"]["mean_regret"] < 0.25 * alternating["ftl"]["mean_regret"]
    assert out["analytic"]["uniform"] is None and out["lai_robbins"] is None


def test_fol_explicit_family_reports_only_it() -> None:
    cfg = load_config(overrides=["env.kind=fol", "env.family=adaptive"])
    report = run_baselines(cfg, replicates=10, horizon=50)
    assert report.families is not None and list(report.families) == ["adaptive"]
    assert report.agents == report.families["adaptive"].agents
    assert report.horizon == 50


def test_ns_report_has_dynamic_regret_and_variation_budget() -> None:
    out = _cli_json("--env", "ns", "--preset", "ns-abrupt", "--replicates", "40")
    agents = out["agents"]
    assert agents["oracle"]["mean_regret"] == 0.0  # plays the per-round best arm
    assert out["variation_budget"] > 0.0
    assert out["lai_robbins"] is None
    uniform = agents["uniform"]
    assert uniform["ci_low"] - 1.0 < out["analytic"]["uniform"] < uniform["ci_high"] + 1.0
    assert {"sw_ucb", "discounted_ts"} <= set(agents)


def test_agent_numbers_do_not_depend_on_the_selection() -> None:
    cfg = load_config(overrides=["env.preset=hard"])
    everyone = run_baselines(cfg, replicates=20, horizon=60)
    alone = run_baselines(cfg, replicates=20, horizon=60, agents=["thompson"])
    assert list(alone.agents) == ["thompson"]
    assert alone.agents["thompson"] == everyone.agents["thompson"]
    assert run_baselines(cfg, replicates=20, horizon=60) == everyone  # deterministic


def test_gaussian_rewards_have_no_lai_robbins_bound() -> None:
    cfg = load_config(overrides=["env.preset=hard", "env.noise=gaussian"])
    report = run_baselines(cfg, replicates=5, horizon=30, agents=["uniform", "thompson"])
    assert report.lai_robbins is None
    assert report.analytic["uniform"] == pytest.approx(0.2 * 4 / 5 * 30)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"replicates": 0}, "replicates"),
        ({"replicates": 2, "agents": ["hedge"]}, "unknown agent"),
        ({"replicates": 2, "horizon": 0}, "horizon"),
    ],
)
def test_bad_requests_raise_config_errors(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        run_baselines(load_config(), **kwargs)


def test_unknown_fol_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="family"):
        run_baselines(load_config(overrides=["env.kind=fol"]), replicates=2, families=["nope"])


def test_lai_robbins_is_printed_as_an_asymptotic_rate_not_a_bound() -> None:
    result = CliRunner().invoke(app, ["baselines", "--preset", "hard", "--replicates", "10"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Lai–Robbins asymptotic rate" in text and "as T → ∞" in text
    assert "Lai–Robbins bound" not in text
    assert "not a limit at this T" in text


def test_curves_ending_at_or_below_zero_are_no_regret() -> None:
    """The oracle's curve is 0 throughout: no exponent, labelled no-regret, in the JSON and the
    table (β column)."""
    out = _cli_json("--preset", "hard", "--replicates", "5", "--agent", "oracle")
    oracle = out["agents"]["oracle"]
    assert oracle["no_regret"] is True
    assert oracle["growth_exponent"] is None and oracle["growth_p_value"] is None
    result = CliRunner().invoke(app, ["baselines", "--preset", "hard", "--replicates", "5"])
    assert "no-regret" in result.output


def test_ucb1_growth_has_its_regression_test() -> None:
    cfg = load_config(overrides=["env.preset=hard"])
    report = run_baselines(cfg, replicates=30, horizon=400, agents=["ucb1", "uniform"])
    ucb, uniform = report.agents["ucb1"], report.agents["uniform"]
    assert ucb.growth_p_value is not None and ucb.growth_p_value < 1e-6  # H0 β ≥ 1 rejected
    assert uniform.growth_p_value is not None and uniform.growth_p_value > 0.01


def test_several_seeds_per_replicate_keep_play_0_and_resample_replicates() -> None:
    cfg = load_config(overrides=["env.preset=hard"])
    one = run_baselines(cfg, replicates=20, horizon=40, agents=["thompson"])
    four = run_baselines(cfg, replicates=20, horizon=40, agents=["thompson"], seeds=4)
    assert (one.seeds_per_scenario, four.seeds_per_scenario) == (1, 4)
    assert one.agents["thompson"] != four.agents["thompson"]
    with pytest.raises(ConfigError, match="seeds"):
        run_baselines(cfg, replicates=2, seeds=0)
