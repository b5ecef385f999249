"""Evaluation of the numeric policy and of the classic baselines on the same draws.

Every figure is per task as well as pooled: a FOL family or a MAB noise is its own task, and a
pooled mean mixes an easy task with a hard one (docs/numeric.md). CIs resample scenarios; each
baseline is the mean of `eval.baseline_seeds` plays per scenario; model − baseline is paired per
scenario. The evaluation sets are blocks of one seed stream (`eval.split`): block 0 the main
set, blocks 1, 2, ... the generalization sizes, so each has draws of its own, and
`check_disjoint` refuses any set sharing a scenario seed with training or with another set.
"""

from __future__ import annotations

import zlib

import numpy as np
from pydantic import BaseModel, ConfigDict

from rmft_api import regret
from rmft_api.agent_plays import play_instance
from rmft_api.config import AgentsConfig
from rmft_api.envs.base import BanditInstance, FloatArray, child_rng
from rmft_api.errors import StateError
from rmft_api.growth import curve_growth
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
    """Final regret R_T: mean over scenarios with a bootstrap CI over scenarios, growth of the
    mean curve (`growth.curve_growth`: no exponent when the curve has no regret), for bandits
    SuffFailFreq(T/2), and the same per group (FOL family / MAB noise)."""

    model_config = ConfigDict(extra="forbid")

    mean_regret: float
    ci_low: float
    ci_high: float
    growth_exponent: float | None
    suff_fail_freq: float | None = None  # share of plays never pulling the best arm in [T/2, T]
    growth_p_value: float | None = None  # regression test of H0: β ≥ 1
    no_regret: bool = False  # the mean curve ends at or below zero
    scenarios: int = 0
    groups: dict[str, RegretSummary] = {}


class Difference(BaseModel):
    """Model − baseline final regret, paired per scenario, with its bootstrap CI over scenarios;
    the same per group. Below zero with the whole CI: the model has less regret."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    ci_low: float
    ci_high: float
    scenarios: int
    groups: dict[str, Difference] = {}


class Curves:
    """Regret curves (N, T) of one player on an evaluation set: each row's group and scenario;
    for bandits also the pulled arms (N, T) and each row's best arm (N,). A baseline has several
    rows (plays) per scenario, the model one."""

    def __init__(
        self,
        curves: FloatArray,
        groups: list[str],
        scenarios: list[int],
        *,
        actions: IntArray | None = None,
        best_arms: IntArray | None = None,
    ) -> None:
        self.curves = curves
        self.groups = groups
        self.scenarios = scenarios
        self.actions = actions
        self.best_arms = best_arms

    def rows(self, group: str | None = None) -> list[int]:
        return [i for i, g in enumerate(self.groups) if group is None or g == group]

    def mean_curve(self, group: str | None = None) -> FloatArray:
        return np.asarray(self.curves[self.rows(group)].mean(axis=0), dtype=np.float64)

    def per_scenario(self, group: str | None = None) -> dict[int, float]:
        """Each scenario's mean final regret (over its plays)."""
        rows = self.rows(group)
        keys, means = regret.scenario_means(
            self.curves[rows, -1], [self.scenarios[i] for i in rows]
        )
        return {k: float(m) for k, m in zip(keys, means, strict=True)}

    def _one(
        self, rows: list[int], rng: np.random.Generator, *, level: float, n_boot: int
    ) -> RegretSummary:
        est = regret.scenario_bootstrap_ci(
            self.curves[rows, -1],
            [self.scenarios[i] for i in rows],
            rng,
            level=level,
            n_boot=n_boot,
        )
        growth = curve_growth(self.curves[rows].mean(axis=0))
        fail = None
        if self.actions is not None and self.best_arms is not None:
            horizon = self.actions.shape[1]
            best = np.repeat(self.best_arms[rows, None], horizon, axis=1)
            fail = regret.suff_fail_half(self.actions[rows], best)
        return RegretSummary(
            mean_regret=est.mean,
            ci_low=est.low,
            ci_high=est.high,
            growth_exponent=growth.exponent,
            suff_fail_freq=fail,
            growth_p_value=growth.p_value,
            no_regret=growth.no_regret,
            scenarios=est.scenarios,
        )

    def summary(self, rng: np.random.Generator, *, level: float, n_boot: int) -> RegretSummary:
        whole = self._one(self.rows(), rng, level=level, n_boot=n_boot)
        names = list(dict.fromkeys(self.groups))
        if len(names) > 1:
            whole.groups = {
                g: self._one(self.rows(g), rng, level=level, n_boot=n_boot) for g in names
            }
        return whole


def paired_difference(
    model: Curves, baseline: Curves, rng: np.random.Generator, *, level: float, n_boot: int
) -> Difference:
    """Model − baseline per scenario (both played the same scenarios), pooled and per group."""

    def one(group: str | None) -> Difference:
        est = regret.paired_difference_ci(
            model.per_scenario(group), baseline.per_scenario(group), rng, level=level, n_boot=n_boot
        )
        if est is None:
            raise StateError("model and baseline were evaluated on different scenarios")
        return Difference(mean=est.mean, ci_low=est.low, ci_high=est.high, scenarios=est.scenarios)

    whole = one(None)
    names = list(dict.fromkeys(model.groups))
    if len(names) > 1:
        whole.groups = {g: one(g) for g in names}
    return whole


def heldout_scenarios(
    cfg: NumericConfig, *, horizon: int, num_arms: int, block: int = 0
) -> list[Scenario]:
    """`eval.scenarios` per group from block `block` of the `eval.split` stream.

    Block b holds indices b·n .. (b+1)·n − 1 (n scenarios in all), so the main set (block 0) and
    each generalization size (blocks 1, 2, ...) have their own draws instead of the same seeds
    at another size, which would make their results echo the main set's.
    """
    count = cfg.eval.scenarios * len(groups_of(cfg))
    return make_scenarios(
        cfg,
        split=cfg.eval.split,
        first_index=block * count,
        count=count,
        horizon=horizon,
        arms=[num_arms],
    )


def check_disjoint(sets: dict[str, list[Scenario]]) -> dict[str, int]:
    """Refuse scenario sets (training, evaluation, generalization) that share a seed.

    Returns each set's size, for the result record.
    """
    seen: dict[int, str] = {}
    for name, scenarios in sets.items():
        for s in scenarios:
            other = seen.get(s.seed)
            if other is not None and other != name:
                raise StateError(
                    f"scenario seed {s.seed} is in both '{other}' and '{name}': results on "
                    f"'{name}' would not be held out"
                )
            seen[s.seed] = name
    return {name: len(scenarios) for name, scenarios in sets.items()}


def model_curves(
    model: PolicyTransformer, scenarios: list[Scenario], *, rng: np.random.Generator
) -> Curves:
    """The model's regret curves: FOL plays π_t itself, bandits sample their arm."""
    traj = rollout(model, scenarios, rng=rng)
    groups = [s.group for s in scenarios]
    ids = [s.index for s in scenarios]
    if traj.full_info:
        return Curves(traj.regret_curve, groups, ids)
    return Curves(
        traj.regret_curve, groups, ids, actions=traj.actions, best_arms=_best_arms(scenarios)
    )


def _best_arms(scenarios: list[Scenario]) -> IntArray:
    best = [s.instance.best_arm(0) for s in scenarios if isinstance(s.instance, BanditInstance)]
    return np.asarray(best, dtype=np.int64)


def baseline_curves(cfg: NumericConfig, name: str, scenarios: list[Scenario]) -> Curves:
    """A classic agent's regret curves on the same instances (hence the same draws), played
    `eval.baseline_seeds` times per scenario; play 0 uses the stream of earlier versions."""
    agents_cfg = AgentsConfig()
    salt = zlib.crc32(name.encode())  # each agent its own stream, stable across runs
    rows: list[FloatArray] = []
    pulled: list[IntArray] = []
    groups: list[str] = []
    ids: list[int] = []
    best: list[int] = []
    for s in scenarios:
        for k in range(cfg.eval.baseline_seeds):
            key = (cfg.seed, 4, salt, s.index) if k == 0 else (cfg.seed, 4, salt, s.index, k)
            curve, actions = play_instance(
                name, s.instance, agents_cfg, env_kind=cfg.env, rng=child_rng(*key)
            )
            rows.append(curve)
            groups.append(s.group)
            ids.append(s.index)
            if actions is not None and isinstance(s.instance, BanditInstance):
                pulled.append(actions)
                best.append(s.instance.best_arm(0))
    if not pulled:
        return Curves(np.stack(rows), groups, ids)
    return Curves(
        np.stack(rows),
        groups,
        ids,
        actions=np.stack(pulled),
        best_arms=np.asarray(best, dtype=np.int64),
    )
