"""Classic agents on the numeric core: regret with confidence intervals and the diagnostics.

Replicate i is the train scenario `scenario_seed(run.seed, "train", i)`; every agent plays that
same instance (common random numbers) `seeds` times (default once), with the generators of
agent_plays.py (`child_rng(run.seed, i, j[, s])`, j the agent's position in the registry's list
for the env kind), so an agent's numbers do not depend on which other agents were selected and
agree with the evaluation's. CIs resample replicates (scenarios), each the mean of its plays;
SuffFailFreq and K·MinFrac count every play.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from rmft_api import regret
from rmft_api.agent_plays import agent_rng, play_instance
from rmft_api.agents.registry import agent_names
from rmft_api.config import Config, EnvConfig, FolFamily, config_error
from rmft_api.envs.base import (
    BanditInstance,
    EnvKind,
    FloatArray,
    FullInfoInstance,
    child_rng,
    scenario_seed,
)
from rmft_api.envs.factory import make_instance
from rmft_api.errors import ConfigError
from rmft_api.growth import Growth, curve_growth

log = logging.getLogger(__name__)

FOL_FAMILIES: tuple[FolFamily, ...] = get_args(FolFamily)

# Mixed into the bootstrap generators' keys so they never coincide with an agent's generator.
_BOOTSTRAP_KEY = 0xB007


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSummary(_Report):
    """One agent over all replicates. Diagnostics that do not apply to the env kind are None."""

    mean_regret: float  # expected regret (pseudo / dynamic / static) averaged over replicates
    ci_low: float  # percentile-bootstrap 95% CI of the mean
    ci_high: float
    suff_fail_freq: float | None  # bandits: SuffFailFreq(T/2)
    k_min_frac: float | None  # bandits: K·MinFrac(T)
    # β of log R_t ≈ β log t + c on the mean curve; None if no fit or the curve has no regret
    growth_exponent: float | None
    trend_p_value: float  # Park et al.'s trend test on the mean curve: small = R_t/t falling
    growth_p_value: float | None = None  # regression test of H0: β ≥ 1 (growth.py)
    no_regret: bool = False  # the mean curve ends at or below zero


class FamilyReport(_Report):
    """FOL: every agent on one reward family, and Hedge's textbook bound for it."""

    agents: dict[str, AgentSummary]
    hedge_bound: float


class BaselinesReport(_Report):
    """What `rmft-api baselines` shows; `to_json()` is its machine-readable last line."""

    env: EnvKind
    horizon: int
    num_arms: int
    replicates: int
    seed: int
    seeds_per_scenario: int = 1  # plays of each agent on each replicate's reward table
    agents: dict[str, AgentSummary]  # FOL with several families: pooled over the families
    analytic: dict[str, float | None]  # {"uniform": expected regret of uniform} (bandits)
    # log T · Σ Δ/KL, the Lai–Robbins asymptotic rate (MAB, Bernoulli): not a finite-T bound
    lai_robbins: float | None
    variation_budget: float | None = None  # NS: V_T averaged over replicates
    families: dict[str, FamilyReport] | None = None  # FOL only

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def run_baselines(
    cfg: Config,
    *,
    replicates: int,
    horizon: int | None = None,
    agents: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    seeds: int = 1,
) -> BaselinesReport:
    """Run the classic agents on `replicates` train scenarios of `cfg.env` and summarise them.

    Args:
        horizon: overrides `env.horizon` when given.
        agents: names to run; default `agents.names` from the config, else all for the env kind.
        families: FOL reward families; default: `env.family` when the config sets it
            (explicitly or via a preset), else every family.
        seeds: plays of each agent per replicate. One is enough here: every replicate is a fresh
            scenario with a fresh agent seed, so the CI over replicates already holds the agent's
            own randomness. Comparisons with a policy on fixed scenarios average
            `agents.seeds_per_scenario` plays instead (agent_plays.py); play 0 is this play.
    """
    if replicates < 1:
        raise ConfigError(f"--replicates {replicates}: need at least 1")
    if not 1 <= seeds <= 1000:
        raise ConfigError(f"--seeds {seeds}: need 1..1000 plays per replicate")
    cfg = cfg.model_copy(
        update={"agents": cfg.agents.model_copy(update={"seeds_per_scenario": seeds})}
    )
    env = _with_horizon(cfg.env, horizon)
    kind: EnvKind = env.kind
    known = agent_names(kind)
    names = list(agents or cfg.agents.names or known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown agent(s) for env {kind!r}: {', '.join(unknown)}; allowed: {', '.join(known)}"
        )
    indices = {name: known.index(name) for name in names}
    if kind == "fol":
        return _fol_report(cfg, env, names, indices, replicates, _fol_families(cfg.env, families))
    return _bandit_report(cfg, env, names, indices, replicates)


def _with_horizon(env: EnvConfig, horizon: int | None) -> EnvConfig:
    if horizon is None:
        return env
    data = env.model_dump(exclude_unset=True) | {"horizon": horizon}
    try:
        return EnvConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source="--horizon", model=EnvConfig) from None


def _fol_families(env: EnvConfig, families: Sequence[str] | None) -> list[FolFamily]:
    if families:
        bad = [f for f in families if f not in FOL_FAMILIES]
        if bad:
            raise ConfigError(
                f"unknown FOL family {', '.join(bad)}; allowed: {', '.join(FOL_FAMILIES)}"
            )
        return [f for f in FOL_FAMILIES if f in families]
    if "family" in env.model_fields_set:
        return [env.family]
    return list(FOL_FAMILIES)


# ---------------------------------------------------------------- bandits (mab, ns)


@dataclass(frozen=True)
class _BanditPlays:
    means: FloatArray  # (R, T, K)
    curves: dict[str, FloatArray]  # name -> (R·S, T), replicate-major
    actions: dict[str, np.ndarray[Any, np.dtype[np.int64]]]  # name -> (R·S, T)
    variation: FloatArray  # (R,) V_T of each instance


def _play_bandits(
    cfg: Config, env: EnvConfig, names: list[str], indices: dict[str, int], replicates: int
) -> _BanditPlays:
    seed, horizon, plays = cfg.run.seed, env.horizon, cfg.agents.seeds_per_scenario
    means = np.empty((replicates, horizon, env.num_arms), dtype=np.float64)
    curves = {n: np.empty((replicates * plays, horizon), dtype=np.float64) for n in names}
    actions = {n: np.empty((replicates * plays, horizon), dtype=np.int64) for n in names}
    variation = np.empty(replicates, dtype=np.float64)
    for i in range(replicates):
        instance = make_instance(env, scenario_seed(seed, "train", i))
        assert isinstance(instance, BanditInstance)  # env.kind is mab or ns here
        means[i], variation[i] = instance.means, instance.variation_budget()
        for name in names:
            for s in range(plays):
                rng = agent_rng(seed, i, indices[name], s)
                curve, acts = play_instance(name, instance, cfg.agents, env_kind=env.kind, rng=rng)
                assert acts is not None  # bandit plays pull arms
                curves[name][i * plays + s], actions[name][i * plays + s] = curve, acts
    return _BanditPlays(means=means, curves=curves, actions=actions, variation=variation)


def _bandit_report(
    cfg: Config, env: EnvConfig, names: list[str], indices: dict[str, int], replicates: int
) -> BaselinesReport:
    plays = _play_bandits(cfg, env, names, indices, replicates)
    k, horizon = env.num_arms, env.horizon
    per = cfg.agents.seeds_per_scenario
    best_arms = np.repeat(plays.means.argmax(axis=-1), per, axis=0)
    summaries: dict[str, AgentSummary] = {}
    for name in names:
        acts = plays.actions[name]
        boot_rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, indices[name])
        summaries[name] = _summary(
            plays.curves[name],
            _replicate_keys(replicates, per),
            boot_rng,
            suff_fail=regret.suff_fail_half(acts, best_arms),
            min_frac=regret.k_min_frac(acts, num_arms=k, t=horizon),
        )
    uniform = float(np.mean([regret.uniform_expected_regret(m) for m in plays.means]))
    lai_robbins = None
    if env.kind == "mab" and env.noise == "bernoulli":
        rates = [regret.lai_robbins_rate(m[0], horizon=horizon) for m in plays.means]
        lai_robbins = float(np.mean(rates))
    return BaselinesReport(
        env=env.kind,
        horizon=horizon,
        num_arms=k,
        replicates=replicates,
        seed=cfg.run.seed,
        seeds_per_scenario=per,
        agents=summaries,
        analytic={"uniform": uniform},
        lai_robbins=lai_robbins,
        variation_budget=float(plays.variation.mean()) if env.kind == "ns" else None,
    )


def _replicate_keys(replicates: int, plays: int, *, offset: int = 0) -> list[int]:
    """The replicate (scenario) of every row of a replicate-major (R·S, T) block."""
    return [offset + i for i in range(replicates) for _ in range(plays)]


# ---------------------------------------------------------------- full information (fol)


def _play_full_info(
    cfg: Config, env: EnvConfig, names: list[str], indices: dict[str, int], replicates: int
) -> dict[str, FloatArray]:
    """Each agent's static-regret curves on `env`'s family, (R·S, T) per agent."""
    seed, plays = cfg.run.seed, cfg.agents.seeds_per_scenario
    curves = {n: np.empty((replicates * plays, env.horizon), dtype=np.float64) for n in names}
    for i in range(replicates):
        instance = make_instance(env, scenario_seed(seed, "train", i))
        assert isinstance(instance, FullInfoInstance)  # env.kind is fol here
        for name in names:
            for s in range(plays):
                rng = agent_rng(seed, i, indices[name], s)
                curve, _ = play_instance(name, instance, cfg.agents, env_kind="fol", rng=rng)
                curves[name][i * plays + s] = curve
    return curves


def _fol_report(
    cfg: Config,
    env: EnvConfig,
    names: list[str],
    indices: dict[str, int],
    replicates: int,
    families: list[FolFamily],
) -> BaselinesReport:
    bound = regret.hedge_regret_bound(horizon=env.horizon, num_arms=env.num_arms)
    per_family: dict[str, FamilyReport] = {}
    pooled: dict[str, list[FloatArray]] = {n: [] for n in names}
    per = cfg.agents.seeds_per_scenario
    keys = _replicate_keys(replicates, per)
    for family in families:
        fam_env = env.model_copy(update={"family": family})
        curves = _play_full_info(cfg, fam_env, names, indices, replicates)
        block = {}
        for name in names:
            boot_rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, indices[name])
            block[name] = _summary(curves[name], keys, boot_rng, suff_fail=None, min_frac=None)
            pooled[name].append(curves[name])
        per_family[family] = FamilyReport(agents=block, hedge_bound=bound)
    if len(families) == 1:
        agents = per_family[families[0]].agents
    else:
        # Each family's replicate i is its own scenario: keys stay apart across families.
        pooled_keys = [
            k
            for f in range(len(families))
            for k in _replicate_keys(replicates, per, offset=f * replicates)
        ]
        agents = {
            name: _summary(
                np.concatenate(pooled[name]),
                pooled_keys,
                child_rng(cfg.run.seed, _BOOTSTRAP_KEY, indices[name]),
                suff_fail=None,
                min_frac=None,
            )
            for name in names
        }
    return BaselinesReport(
        env="fol",
        horizon=env.horizon,
        num_arms=env.num_arms,
        replicates=replicates,
        seed=cfg.run.seed,
        seeds_per_scenario=per,
        agents=agents,
        analytic={"uniform": None},
        lai_robbins=None,
        families=per_family,
    )


# ---------------------------------------------------------------- shared


def _summary(
    curves: FloatArray,
    replicate: list[int],
    boot_rng: np.random.Generator,
    *,
    suff_fail: float | None,
    min_frac: float | None,
) -> AgentSummary:
    """Summarise (R·S, T) cumulative-regret curves: final regret with a CI over replicates (each
    the mean of its plays), growth of the mean curve."""
    est = regret.scenario_bootstrap_ci(curves[:, -1], replicate, boot_rng)
    growth = curve_growth(curves.mean(axis=0))
    return AgentSummary(
        mean_regret=est.mean,
        ci_low=est.low,
        ci_high=est.high,
        suff_fail_freq=suff_fail,
        k_min_frac=min_frac,
        growth_exponent=growth.exponent,
        trend_p_value=_trend_p(growth),
        growth_p_value=growth.p_value,
        no_regret=growth.no_regret,
    )


def _trend_p(growth: Growth) -> float:
    """The trend test's p-value; 1.0 (no evidence) for a curve too short to test."""
    return 1.0 if growth.trend_p_value is None else growth.trend_p_value
