"""Held-out evaluation of the numeric policy and of the classic baselines on the same draws."""

from __future__ import annotations

import zlib

import numpy as np
from pydantic import BaseModel, ConfigDict

from rmft_api import regret
from rmft_api.agents.base import BanditAgent, ExpertsAgent, run_bandit, run_full_info
from rmft_api.agents.registry import make_agent
from rmft_api.config import AgentsConfig
from rmft_api.envs.base import BanditInstance, FloatArray, FullInfoInstance, child_rng
from rmft_api.numeric.config import NumericConfig
from rmft_api.numeric.model import PolicyTransformer
from rmft_api.numeric.rollout import IntArray, Scenario, groups_of, make_scenarios, rollout

# Baselines per environment: the no-regret references first (Hedge/FTRL; UCB1 and Thompson),
# then simple reference points that show what "no learning" and "pure exploitation" give.
BASELINES: dict[str, tuple[str, ...]] = {
    "fol": ("hedge", "ftl", "uniform"),
    "mab": ("ucb1", "thompson", "greedy", "uniform"),
}


class RegretSummary(BaseModel):
    """Final regret R_T over held-out scenarios: mean, bootstrap CI, growth exponent of the mean
    curve (log R_t ≈ β log t + c; None when the curve has too few positive rounds to fit), for
    bandits SuffFailFreq(T/2), and the same per group (FOL family / MAB noise)."""

    model_config = ConfigDict(extra="forbid")

    mean_regret: float
    ci_low: float
    ci_high: float
    growth_exponent: float | None
    suff_fail_freq: float | None = None  # share of episodes never pulling the best arm in [T/2, T]
    groups: dict[str, RegretSummary] = {}


class Curves:
    """Regret curves (N, T) of one player on an evaluation set, with each row's group; for
    bandits also the pulled arms (N, T) and each episode's best arm (N,)."""

    def __init__(
        self,
        curves: FloatArray,
        groups: list[str],
        *,
        actions: IntArray | None = None,
        best_arms: IntArray | None = None,
    ) -> None:
        self.curves = curves
        self.groups = groups
        self.actions = actions
        self.best_arms = best_arms

    def mean_curve(self, group: str | None = None) -> FloatArray:
        rows = [i for i, g in enumerate(self.groups) if group is None or g == group]
        return np.asarray(self.curves[rows].mean(axis=0), dtype=np.float64)

    def _one(
        self, rows: list[int], rng: np.random.Generator, *, level: float, n_boot: int
    ) -> RegretSummary:
        mean, low, high = regret.bootstrap_ci(
            self.curves[rows, -1], rng, level=level, n_boot=n_boot
        )
        beta = regret.growth_exponent(self.curves[rows].mean(axis=0))
        fail = None
        if self.actions is not None and self.best_arms is not None:
            horizon = self.actions.shape[1]
            best = np.repeat(self.best_arms[rows, None], horizon, axis=1)
            fail = regret.suff_fail_freq(self.actions[rows], best, t=horizon // 2 + 1)
        return RegretSummary(
            mean_regret=mean,
            ci_low=low,
            ci_high=high,
            growth_exponent=None if np.isnan(beta) else beta,
            suff_fail_freq=fail,
        )

    def summary(self, rng: np.random.Generator, *, level: float, n_boot: int) -> RegretSummary:
        whole = self._one(list(range(len(self.groups))), rng, level=level, n_boot=n_boot)
        names = list(dict.fromkeys(self.groups))
        if len(names) > 1:
            whole.groups = {
                g: self._one(
                    [i for i, x in enumerate(self.groups) if x == g],
                    rng,
                    level=level,
                    n_boot=n_boot,
                )
                for g in names
            }
        return whole


def heldout_scenarios(cfg: NumericConfig, *, horizon: int, num_arms: int) -> list[Scenario]:
    """`eval.scenarios` per group, seeds from the held-out stream (disjoint from training)."""
    count = cfg.eval.scenarios * len(groups_of(cfg))
    return make_scenarios(
        cfg, split="heldout", first_index=0, count=count, horizon=horizon, arms=[num_arms]
    )


def model_curves(
    model: PolicyTransformer, scenarios: list[Scenario], *, rng: np.random.Generator
) -> Curves:
    """The model's regret curves: FOL plays π_t itself, bandits sample their arm."""
    traj = rollout(model, scenarios, rng=rng)
    groups = [s.group for s in scenarios]
    if traj.full_info:
        return Curves(traj.regret_curve, groups)
    return Curves(traj.regret_curve, groups, actions=traj.actions, best_arms=_best_arms(scenarios))


def _best_arms(scenarios: list[Scenario]) -> IntArray:
    best = [s.instance.best_arm(0) for s in scenarios if isinstance(s.instance, BanditInstance)]
    return np.asarray(best, dtype=np.int64)


def baseline_curves(cfg: NumericConfig, name: str, scenarios: list[Scenario]) -> Curves:
    """A classic agent's regret curves on the same instances (hence the same draws)."""
    agents_cfg = AgentsConfig()
    salt = zlib.crc32(name.encode())  # each agent its own stream, stable across runs
    rows: list[FloatArray] = []
    pulled: list[IntArray] = []
    for s in scenarios:
        agent = make_agent(name, agents_cfg, env_kind=cfg.env, instance=s.instance)
        rng = child_rng(cfg.seed, 4, salt, s.index)
        inst = s.instance
        if isinstance(inst, FullInfoInstance) and isinstance(agent, ExpertsAgent):
            trace = run_full_info(agent, inst, rng)
            rows.append(regret.full_info_regret_curve(trace.policies, trace.reward_vectors))
        elif isinstance(inst, BanditInstance) and isinstance(agent, BanditAgent):
            actions = run_bandit(agent, inst, rng).actions
            pulled.append(actions)
            rows.append(regret.cumulative(regret.action_regret_steps(inst.means, actions)))
        else:
            raise TypeError(f"agent {name!r} does not fit instance {type(inst).__name__}")
    groups = [s.group for s in scenarios]
    if not pulled:
        return Curves(np.stack(rows), groups)
    return Curves(np.stack(rows), groups, actions=np.stack(pulled), best_arms=_best_arms(scenarios))
