"""Classic agents on the numeric core: regret with confidence intervals and the diagnostics.

Replicate i is the train scenario `scenario_seed(run.seed, "train", i)`; every agent plays that
same instance (common random numbers), with its own generator `child_rng(run.seed, i, j)`, where
j is the agent's position in the registry's list for the env kind, so an agent's numbers do not
depend on which other agents were selected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from rmft_api import regret
from rmft_api.agents.base import BanditAgent, ExpertsAgent, run_bandit, run_full_info
from rmft_api.agents.registry import agent_names, make_agent
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
    growth_exponent: float | None  # β of log R_t ≈ β log t + c on the mean curve; None if no fit
    trend_p_value: float  # Park et al.'s trend test on the mean curve: small = R_t/t falling


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
    agents: dict[str, AgentSummary]  # FOL with several families: pooled over the families
    analytic: dict[str, float | None]  # {"uniform": expected regret of uniform} (bandits)
    lai_robbins: float | None  # MAB with Bernoulli rewards only
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
) -> BaselinesReport:
    """Run the classic agents on `replicates` train scenarios of `cfg.env` and summarise them.

    Args:
        horizon: overrides `env.horizon` when given.
        agents: names to run; default `agents.names` from the config, else all for the env kind.
        families: FOL reward families; default: `env.family` when the config sets it
            (explicitly or via a preset), else every family.
    """
    if replicates < 1:
        raise ConfigError(f"--replicates {replicates}: need at least 1")
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
    actions: dict[str, np.ndarray[Any, np.dtype[np.int64]]]  # name -> (R, T)
    variation: FloatArray  # (R,) V_T of each instance


def _play_bandits(
    cfg: Config, env: EnvConfig, names: list[str], indices: dict[str, int], replicates: int
) -> _BanditPlays:
    seed, k, horizon = cfg.run.seed, env.num_arms, env.horizon
    means = np.empty((replicates, horizon, k), dtype=np.float64)
    actions = {n: np.empty((replicates, horizon), dtype=np.int64) for n in names}
    variation = np.empty(replicates, dtype=np.float64)
    for i in range(replicates):
        instance = make_instance(env, scenario_seed(seed, "train", i))
        assert isinstance(instance, BanditInstance)  # env.kind is mab or ns here
        means[i], variation[i] = instance.means, instance.variation_budget()
        for name in names:
            agent = make_agent(name, cfg.agents, env_kind=env.kind, instance=instance)
            assert isinstance(agent, BanditAgent)  # the registry builds bandit agents for mab/ns
            trace = run_bandit(agent, instance, child_rng(seed, i, indices[name]))
            actions[name][i] = trace.actions
    return _BanditPlays(means=means, actions=actions, variation=variation)


def _bandit_report(
    cfg: Config, env: EnvConfig, names: list[str], indices: dict[str, int], replicates: int
) -> BaselinesReport:
    plays = _play_bandits(cfg, env, names, indices, replicates)
    k, horizon = env.num_arms, env.horizon
    best_arms = plays.means.argmax(axis=-1)
    summaries: dict[str, AgentSummary] = {}
    for name in names:
        acts = plays.actions[name]
        steps = regret.action_regret_steps(plays.means, acts)
        boot_rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, indices[name])
        summaries[name] = _summary(
            regret.cumulative(steps),
            boot_rng,
            suff_fail=regret.suff_fail_freq(acts, best_arms, t=max(1, horizon // 2)),
            min_frac=regret.k_min_frac(acts, num_arms=k, t=horizon),
        )
    uniform = float(np.mean([regret.uniform_expected_regret(m) for m in plays.means]))
    lai_robbins = None
    if env.kind == "mab" and env.noise == "bernoulli":
        bounds = [regret.lai_robbins_bound(m[0], horizon=horizon) for m in plays.means]
        lai_robbins = float(np.mean(bounds))
    return BaselinesReport(
        env=env.kind,
        horizon=horizon,
        num_arms=k,
        replicates=replicates,
        seed=cfg.run.seed,
        agents=summaries,
        analytic={"uniform": uniform},
        lai_robbins=lai_robbins,
        variation_budget=float(plays.variation.mean()) if env.kind == "ns" else None,
    )


# ---------------------------------------------------------------- full information (fol)


def _play_full_info(
    cfg: Config, env: EnvConfig, names: list[str], indices: dict[str, int], replicates: int
) -> dict[str, FloatArray]:
    """Each agent's static-regret curves on `env`'s family, (R, T) per agent."""
    seed = cfg.run.seed
    curves = {n: np.empty((replicates, env.horizon), dtype=np.float64) for n in names}
    for i in range(replicates):
        instance = make_instance(env, scenario_seed(seed, "train", i))
        assert isinstance(instance, FullInfoInstance)  # env.kind is fol here
        for name in names:
            agent = make_agent(name, cfg.agents, env_kind="fol", instance=instance)
            assert isinstance(agent, ExpertsAgent)
            trace = run_full_info(agent, instance, child_rng(seed, i, indices[name]))
            curves[name][i] = regret.full_info_regret_curve(trace.policies, trace.reward_vectors)
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
    for family in families:
        fam_env = env.model_copy(update={"family": family})
        curves = _play_full_info(cfg, fam_env, names, indices, replicates)
        block = {}
        for name in names:
            boot_rng = child_rng(cfg.run.seed, _BOOTSTRAP_KEY, indices[name])
            block[name] = _summary(curves[name], boot_rng, suff_fail=None, min_frac=None)
            pooled[name].append(curves[name])
        per_family[family] = FamilyReport(agents=block, hedge_bound=bound)
    if len(families) == 1:
        agents = per_family[families[0]].agents
    else:
        agents = {
            name: _summary(
                np.concatenate(pooled[name]),
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
        agents=agents,
        analytic={"uniform": None},
        lai_robbins=None,
        families=per_family,
    )


# ---------------------------------------------------------------- shared


def _summary(
    curves: FloatArray,
    boot_rng: np.random.Generator,
    *,
    suff_fail: float | None,
    min_frac: float | None,
) -> AgentSummary:
    """Summarise (R, T) cumulative-regret curves: final regret with CI, growth of the mean curve."""
    mean, low, high = regret.bootstrap_ci(curves[:, -1], boot_rng)
    mean_curve = curves.mean(axis=0)
    beta = regret.growth_exponent(mean_curve)
    return AgentSummary(
        mean_regret=mean,
        ci_low=low,
        ci_high=high,
        suff_fail_freq=suff_fail,
        k_min_frac=min_frac,
        growth_exponent=None if np.isnan(beta) else beta,
        trend_p_value=regret.trend_test(mean_curve).p_value,
    )
