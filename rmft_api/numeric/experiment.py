"""Iterative RMFT on the numeric policy: sample → keep the k lowest-regret → fit → evaluate.

Iteration 0 is the random initialisation (evaluated, not trained), so every later iteration's
held-out regret can be read against it and against the baselines on the same draws. Before
anything is played, the training scenarios of every iteration, the evaluation set and each
generalization set are checked to share no scenario seed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from rmft_api.envs.base import child_rng
from rmft_api.numeric.config import NumericConfig
from rmft_api.numeric.evaluate import (
    BASELINES,
    Curves,
    Difference,
    RegretSummary,
    baseline_curves,
    check_disjoint,
    heldout_scenarios,
    model_curves,
    paired_difference,
)
from rmft_api.numeric.features import num_features
from rmft_api.numeric.model import PolicyTransformer
from rmft_api.numeric.rollout import Scenario, Trajectories, make_scenarios, rollout
from rmft_api.numeric.train import fit
from rmft_api.selection import select_k_lowest

log = logging.getLogger(__name__)


class TrainSummary(BaseModel):
    """What one iteration's data and fit looked like."""

    model_config = ConfigDict(extra="forbid")

    rollout_regret: float  # mean final regret of all sampled trajectories
    kept_regret: float  # mean final regret of the kept ones
    kept: int  # trajectories trained on (this iteration's, or accumulated)
    nll_before: float
    nll_after: float
    seconds: float


class IterationResult(RegretSummary):
    index: int
    train: TrainSummary | None = None
    vs_baselines: dict[str, Difference] = Field(default_factory=dict)  # − baseline, paired


class GeneralizationResult(BaseModel):
    """Initial vs trained model vs baselines on scenarios of a size never trained on (a block of
    the evaluation stream of its own)."""

    model_config = ConfigDict(extra="forbid")

    horizon: int
    num_arms: int
    initial: RegretSummary
    trained: RegretSummary
    baselines: dict[str, RegretSummary]
    trained_vs_baselines: dict[str, Difference] = {}


class NumericResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env: str
    split: str  # the evaluation stream: heldout (reported figures) or validation (tuning)
    iterations: list[IterationResult]
    baselines: dict[str, RegretSummary]
    generalization: dict[str, GeneralizationResult]
    scenario_sets: dict[str, int]  # sizes of the sets checked to share no scenario seed
    config: dict[str, object]
    elapsed_s: float
    figures: list[str]


def build_model(cfg: NumericConfig) -> PolicyTransformer:
    """A freshly initialised policy, seeded by `cfg.seed` without touching torch's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return PolicyTransformer(num_features(cfg.env), cfg.model)


def _by_shape(scenarios: list[Scenario]) -> list[list[Scenario]]:
    shapes: dict[tuple[int, int], list[Scenario]] = {}
    for s in scenarios:
        shapes.setdefault((s.instance.num_arms, s.instance.horizon), []).append(s)
    return list(shapes.values())


def keep_lowest(traj: Trajectories, *, k: int) -> Trajectories:
    """The k lowest-regret rollouts of each scenario (ties: lower rollout index)."""
    rows = select_k_lowest(
        list(range(len(traj.scenario))),
        k=k,
        regret=lambda i: float(traj.final_regret[i]),
        group=lambda i: int(traj.scenario[i]),
        order=lambda i: int(traj.rollout[i]),
    )
    return traj.subset(np.asarray(rows, dtype=np.int64))


def training_scenarios(cfg: NumericConfig, iteration: int) -> list[Scenario]:
    """Iteration `iteration`'s M fresh training scenarios (iterations count from 1)."""
    return make_scenarios(
        cfg,
        split="train",
        first_index=(iteration - 1) * cfg.scenarios,
        count=cfg.scenarios,
        horizon=cfg.horizon,
        arms=list(cfg.train_arms),
    )


def collect(
    model: PolicyTransformer, cfg: NumericConfig, iteration: int
) -> tuple[list[Trajectories], list[Trajectories]]:
    """One iteration's rollouts (M fresh scenarios × L) and the k lowest-regret per scenario."""
    scenarios = training_scenarios(cfg, iteration)
    rng = child_rng(cfg.seed, 1, iteration)
    sampled: list[Trajectories] = []
    kept: list[Trajectories] = []
    for group in _by_shape(scenarios):
        traj = rollout(
            model,
            group,
            rollouts=cfg.rollouts,
            temperatures=cfg.temperatures,
            noise=cfg.exploration,
            rng=rng,
        )
        sampled.append(traj)
        kept.append(keep_lowest(traj, k=cfg.keep))
    return sampled, kept


def _mean_final(blocks: list[Trajectories]) -> float:
    return float(np.concatenate([b.final_regret for b in blocks]).mean())


def run_numeric(cfg: NumericConfig, *, out_dir: Path | None = None) -> NumericResult:
    """Train from a random init for `cfg.iterations` RMFT iterations; evaluate each; plot."""
    started = time.monotonic()
    torch.set_num_threads(cfg.threads)
    boot_rng = child_rng(cfg.seed, 5)

    def summarize(c: Curves) -> RegretSummary:
        return c.summary(boot_rng, level=cfg.eval.ci_level, n_boot=cfg.eval.bootstrap)

    def versus(c: Curves, against: dict[str, Curves], *key: int) -> dict[str, Difference]:
        return {
            name: paired_difference(
                c,
                base,
                child_rng(cfg.seed, 7, *key, j),
                level=cfg.eval.ci_level,
                n_boot=cfg.eval.bootstrap,
            )
            for j, (name, base) in enumerate(against.items())
        }

    model = build_model(cfg)
    initial = copy.deepcopy(model)
    heldout = heldout_scenarios(cfg, horizon=cfg.horizon, num_arms=cfg.eval.num_arms)
    sizes = _generalization_sizes(cfg)
    general_sets = {
        name: heldout_scenarios(cfg, horizon=h, num_arms=k, block=b)
        for name, (h, k, b) in sizes.items()
    }
    train_sets = [s for it in range(1, cfg.iterations + 1) for s in training_scenarios(cfg, it)]
    checked = check_disjoint({"train": train_sets, cfg.eval.split: heldout, **general_sets})
    baseline_c = {name: baseline_curves(cfg, name, heldout) for name in BASELINES[cfg.env]}
    history: list[Curves] = [model_curves(model, heldout, rng=child_rng(cfg.seed, 2, 0))]
    results = [
        IterationResult(
            index=0,
            vs_baselines=versus(history[0], baseline_c, 0),
            **summarize(history[0]).model_dump(),
        )
    ]
    log.info("iteration 0 (random init): %s regret %s", cfg.eval.split, _by_group(results[0]))
    accumulated: list[Trajectories] = []
    for it in range(1, cfg.iterations + 1):
        t0 = time.monotonic()
        sampled, kept = collect(model, cfg, it)
        accumulated = [*accumulated, *kept] if cfg.data == "accumulated" else kept
        if cfg.init == "initial":
            model.load_state_dict(initial.state_dict())
        stats = fit(model, accumulated, cfg.train, rng=child_rng(cfg.seed, 3, it))
        curves = model_curves(model, heldout, rng=child_rng(cfg.seed, 2, it))
        history.append(curves)
        train = TrainSummary(
            rollout_regret=_mean_final(sampled),
            kept_regret=_mean_final(kept),
            kept=sum(len(b.scenario) for b in accumulated),
            nll_before=stats.nll_before,
            nll_after=stats.nll_after,
            seconds=time.monotonic() - t0,
        )
        results.append(
            IterationResult(
                index=it,
                train=train,
                vs_baselines=versus(curves, baseline_c, it),
                **summarize(curves).model_dump(),
            )
        )
        log.info(
            "iteration %d: %s regret %s (rollouts %.2f, kept %.2f, nll %.3f→%.3f, %.0fs)",
            it, cfg.eval.split, _by_group(results[-1]), train.rollout_regret, train.kept_regret,
            stats.nll_before, stats.nll_after, train.seconds,
        )  # fmt: skip
    generalization = _generalize(cfg, initial, model, summarize, general_sets, versus)
    figures: list[str] = []
    if out_dir is not None:
        from rmft_api.numeric.plots import write_figures

        figures = write_figures(out_dir, env=cfg.env, history=history, baselines=baseline_c)
    return NumericResult(
        env=cfg.env,
        split=cfg.eval.split,
        iterations=results,
        baselines={name: summarize(c) for name, c in baseline_c.items()},
        generalization=generalization,
        scenario_sets=checked,
        config=cfg.model_dump(mode="json"),
        elapsed_s=time.monotonic() - started,
        figures=figures,
    )


def _by_group(s: RegretSummary) -> str:
    """'2.41' or 'bernoulli 9.53, gaussian 1.14': each task's mean, never only the pooled one."""
    if not s.groups:
        return f"{s.mean_regret:.2f}"
    return ", ".join(f"{g} {x.mean_regret:.2f}" for g, x in s.groups.items())


def _generalization_sizes(cfg: NumericConfig) -> dict[str, tuple[int, int, int]]:
    """name → (horizon, K, block of the evaluation stream): each size its own draws."""
    return {
        f"horizon_x{cfg.eval.horizon_factor}": (
            cfg.horizon * cfg.eval.horizon_factor,
            cfg.eval.num_arms,
            1,
        ),
        f"arms_{cfg.eval.more_arms}": (cfg.horizon, cfg.eval.more_arms, 2),
    }


def _generalize(
    cfg: NumericConfig,
    initial: PolicyTransformer,
    trained: PolicyTransformer,
    summarize: Callable[[Curves], RegretSummary],
    sets: dict[str, list[Scenario]],
    versus: Callable[..., dict[str, Difference]],
) -> dict[str, GeneralizationResult]:
    """The trained model at a longer horizon and with more arms than any training scenario."""
    out: dict[str, GeneralizationResult] = {}
    for b, (name, scenarios) in enumerate(sets.items(), start=1):
        instance = scenarios[0].instance
        horizon, arms = instance.horizon, instance.num_arms
        rng = child_rng(cfg.seed, 6, horizon, arms)
        trained_c = model_curves(trained, scenarios, rng=rng)
        baselines = {n: baseline_curves(cfg, n, scenarios) for n in BASELINES[cfg.env]}
        out[name] = GeneralizationResult(
            horizon=horizon,
            num_arms=arms,
            initial=summarize(model_curves(initial, scenarios, rng=rng)),
            trained=summarize(trained_c),
            baselines={n: summarize(c) for n, c in baselines.items()},
            trained_vs_baselines=versus(trained_c, baselines, 1000 + b),
        )
    return out
