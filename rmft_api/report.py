"""`rmft-api report`: what a run directory says about its policies, as report.md, PNGs and JSON.

Everything comes from the run directory: run.json (the config), each iteration's metrics.json,
its held-out episodes (per-round bands, arm-rank shares, SuffFailFreq curves) and its grid. The
classic agents are replayed on the held-out scenarios with the evaluation's own seeds and plays
per scenario (so their numbers are the evaluation's), which gives their per-scenario regret for
paired ratios; the paired differences policy − agent are the evaluation's (metrics.json). Every
resampling is seeded from run.seed: the same run directory always gives the same report.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from rmft_api import regret
from rmft_api.agent_plays import play_agent
from rmft_api.config import Config
from rmft_api.envs.base import BanditInstance, child_rng
from rmft_api.envs.scenarios import Scenario
from rmft_api.errors import RmftError, StateError
from rmft_api.evaluate import (
    EvalMetrics,
    RegretSummary,
    episode_actions,
    episode_curve,
    heldout_scenarios,
)
from rmft_api.plots import Band, Figures, GridPanel, Heatmap, Point, write_figures
from rmft_api.report_text import render_markdown
from rmft_api.rollout import read_episodes
from rmft_api.run_state import load_config_of, load_info, load_state
from rmft_api.schema import SCHEMA_VERSION, Episode
from rmft_api.store import RunPaths, read_json, write_json_atomic, write_text_atomic

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_REPORT_KEY = 0x12E9  # salt of the report's bootstrap streams
_N_BOOT = 1000
HEADLINE_AGENTS = ("ucb1", "thompson")


class Ratio(BaseModel):
    """mean(policy regret) ÷ mean(reference regret) over shared scenarios, with a paired
    percentile-bootstrap 95% CI (scenarios resampled together)."""

    model_config = ConfigDict(extra="forbid")

    ratio: float
    ci_low: float
    ci_high: float
    scenarios: int


class IterationReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    label: str  # "0", "1", ..., "final" (the last policy P_N)
    policy: str
    metrics: EvalMetrics
    vs_baselines: dict[str, Ratio | None]  # policy ÷ classic agent on the same draws
    grid: dict[str, EvalMetrics]


class Improvement(BaseModel):
    """The last evaluated policy against iteration 0's, on the same held-out scenarios."""

    model_config = ConfigDict(extra="forbid")

    first: str
    last: str
    first_regret: RegretSummary
    last_regret: RegretSummary
    ratio: Ratio | None  # last ÷ first, paired over scenarios
    cis_overlap: bool
    significant: bool  # lower regret and non-overlapping 95% CIs


class RunReport(BaseModel):
    """report/summary.json: the numbers report.md states."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    run_dir: str
    status: str
    phase: str
    config_hash: str
    task: str
    heldout: str
    trainer: str
    baselines: list[str]
    iterations: list[IterationReport]
    grid_tasks: dict[str, str]
    improvement: Improvement | None
    figures: dict[str, str]
    figures_error: str | None = None
    report_md: str = ""


@dataclass(frozen=True)
class _AgentPlays:
    curves: dict[str, FloatArray]  # scenario id → its plays' cumulative regret curves (S, T)
    actions: dict[str, IntArray]  # scenario id → arms played (S, T) (bandits only)


def task_label(cfg: Config) -> str:
    env = cfg.env
    parts = [env.kind, f"K={env.num_arms}", f"T={env.horizon}"]
    if env.kind != "fol":
        parts.append(env.noise)
        if env.means_mode == "gap" and env.kind == "mab":
            parts.append(f"gap {env.gap:g}")
    parts.append(env.ns_mode if env.kind == "ns" else env.family if env.kind == "fol" else "")
    contexts = ", ".join(cfg.prompt.contexts) or "all"
    return " ".join(p for p in parts if p) + f"; contexts: {contexts}"


def iteration_label(index: int, count: int) -> str:
    return "final" if index >= count else str(index)


def _play_agents(cfg: Config, scenarios: list[Scenario]) -> dict[str, _AgentPlays]:
    """Each baseline replayed on every held-out scenario (the evaluation's seeds and plays)."""
    plays: dict[str, _AgentPlays] = {}
    for name in cfg.eval.baselines:
        curves: dict[str, FloatArray] = {}
        actions: dict[str, IntArray] = {}
        for s in scenarios:
            played = play_agent(name, s, cfg)
            curves[s.scenario_id] = played.curves
            if played.actions is not None:
                actions[s.scenario_id] = played.actions
        plays[name] = _AgentPlays(curves=curves, actions=actions)
    return plays


def _band(label: str, curves: FloatArray, scenarios: list[str], rng: np.random.Generator) -> Band:
    """Pointwise percentile-bootstrap band of the mean curve: each scenario's rows (episodes,
    agent plays) averaged first, then scenarios resampled whole, as every CI of the report."""
    _, per_scenario = regret.scenario_means(curves, scenarios)
    curves = per_scenario
    n = curves.shape[0]
    idx = rng.integers(0, n, size=(_N_BOOT, n))
    weights = np.zeros((_N_BOOT, n))
    np.add.at(weights, (np.arange(_N_BOOT)[:, None], idx), 1.0)
    boot = weights @ curves / n
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    return Band(label=label, mean=curves.mean(axis=0), low=low, high=high)


def paired_ratio(
    num: dict[str, float], den: dict[str, float], rng: np.random.Generator
) -> Ratio | None:
    """Σ num ÷ Σ den over the scenarios both have, scenarios resampled in pairs; None when the
    reference's regret is zero (no ratio)."""
    keys = sorted(set(num) & set(den))
    if not keys:
        return None
    a = np.array([num[k] for k in keys])
    b = np.array([den[k] for k in keys])
    if b.sum() <= 0:
        return None
    idx = rng.integers(0, len(keys), size=(_N_BOOT, len(keys)))
    sa, sb = a[idx].sum(axis=1), b[idx].sum(axis=1)
    ratios = sa[sb > 0] / sb[sb > 0]
    low, high = np.quantile(ratios, [0.025, 0.975])
    return Ratio(
        ratio=float(a.sum() / b.sum()), ci_low=float(low), ci_high=float(high), scenarios=len(keys)
    )


def _per_scenario(episodes: list[Episode]) -> dict[str, float]:
    """Mean regret per scenario (a scenario's rollouts averaged first)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for e in episodes:
        sums[e.scenario_id].append(e.regret)
    return {k: float(np.mean(v)) for k, v in sums.items()}


def rank_shares(
    episodes: list[Episode], scenarios: dict[str, Scenario]
) -> tuple[FloatArray, list[str]]:
    """Share of plays on the best, 2nd, ... arm by round: (rows, T), rows named.

    Bandits rank arms by their hidden mean at that round; full information by total reward over
    the episode (the best fixed action in hindsight). Tied arms share their rank positions
    equally (gap instances: every other arm is "2nd"…"K-th" alike). A round without a valid
    answer counts in a last "no answer" row.
    """
    k, horizon = episodes[0].num_arms, episodes[0].horizon
    shares = np.zeros((horizon, k + 1))
    positions = np.arange(k)
    for e in episodes:
        if e.env == "fol":
            weights = np.array([s.policy or [0.0] * k for s in e.steps])
            totals = np.array([s.reward_vector or [0.0] * k for s in e.steps]).sum(axis=0)
            values = np.broadcast_to(totals, (horizon, k))
        else:
            weights = np.zeros((horizon, k))
            for t, s in enumerate(e.steps):
                if s.action is not None:
                    weights[t, s.action] = 1.0
            instance = scenarios[e.scenario_id].instance
            assert isinstance(instance, BanditInstance)
            values = instance.means
        above = (values[:, None, :] > values[:, :, None]).sum(axis=-1)  # (T, K) arms better
        tied = (values[:, None, :] == values[:, :, None]).sum(axis=-1)
        member = (positions >= above[..., None]) & (positions < (above + tied)[..., None])
        spread = member / tied[..., None]  # (T, arm, position)
        shares[:, :k] += np.einsum("ta,tap->tp", weights, spread)
        shares[:, k] += 1.0 - weights.sum(axis=1)
    shares /= len(episodes)
    names = ["best"] + [f"{r}{_suffix(r)}" for r in range(2, k + 1)] + ["no answer"]
    keep = k + 1 if shares[:, k].max() > 1e-9 else k
    return shares[:, :keep].T, names[:keep]


def _suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def suff_fail_curve(actions: IntArray, best: IntArray) -> FloatArray:
    """SuffFailFreq(t) for t = 1..T: share of rows never matching `best` in rounds t..T."""
    match = actions == best
    suffix_hit = np.flip(np.logical_or.accumulate(np.flip(match, axis=1), axis=1), axis=1)
    return np.asarray(1.0 - suffix_hit.mean(axis=0), dtype=np.float64)


def _best_arms(scenarios: dict[str, Scenario], ids: list[str]) -> IntArray:
    rows = []
    for sid in ids:
        instance = scenarios[sid].instance
        assert isinstance(instance, BanditInstance)
        rows.append(instance.means.argmax(axis=1))
    return np.array(rows)


def _complete(path: Path, iteration: int) -> list[Episode]:
    return [e for e in read_episodes(path) if e.iteration == iteration and e.status == "complete"]


@dataclass
class _Collected:
    """What the iteration loop gathers besides the report rows."""

    iterations: list[IterationReport] = field(default_factory=list)
    per_scenario: dict[int, dict[str, float]] = field(default_factory=dict)


def _iteration(
    run: RunPaths,
    i: int,
    *,
    cfg: Config,
    scenarios: dict[str, Scenario],
    agent_final: dict[str, dict[str, float]],
    figs: Figures,
    out: _Collected,
) -> None:
    """Add iteration i's row to `out` and its series to `figs`."""
    from rmft_api.generalization import read_grid

    paths = run.iteration(i)
    metrics = read_json(paths.metrics, EvalMetrics)
    label = iteration_label(i, cfg.iterations.count)
    episodes = _complete(paths.eval_episodes, i)
    mine = out.per_scenario[i] = _per_scenario(episodes)
    vs = {
        name: paired_ratio(mine, agent_final[name], child_rng(cfg.run.seed, _REPORT_KEY, i, j + 1))
        for j, name in enumerate(cfg.eval.baselines)
    }
    grid = read_grid(paths.root)
    row = IterationReport(
        index=i, label=label, policy=metrics.policy, metrics=metrics, vs_baselines=vs, grid=grid
    )
    out.iterations.append(row)
    figs.points.append(_point(label, metrics.regret))
    if not episodes:
        return
    curves = np.array([episode_curve(e) for e in episodes])
    ids = [e.scenario_id for e in episodes]
    figs.policy_bands.append(_band(label, curves, ids, child_rng(cfg.run.seed, _REPORT_KEY, i, 0)))
    shares, rows = rank_shares(episodes, scenarios)
    figs.heatmaps.append(Heatmap(label=label, shares=shares, rows=rows))
    if cfg.env.kind != "fol":
        acts = np.array([episode_actions(e) for e in episodes])
        figs.suff_fail.append((label, suff_fail_curve(acts, _best_arms(scenarios, ids))))


def _point(label: str, summary: RegretSummary | None) -> Point:
    if summary is None:
        return Point(label, None)
    return Point(label, summary.mean, summary.ci_low, summary.ci_high)


def _agent_series(
    cfg: Config, agents: dict[str, _AgentPlays], scenarios: dict[str, Scenario], figs: Figures
) -> None:
    ids = sorted(scenarios)
    for j, (name, plays) in enumerate(agents.items()):
        curves = np.concatenate([plays.curves[k] for k in ids])
        rows = [k for k in ids for _ in plays.curves[k]]
        rng = child_rng(cfg.run.seed, _REPORT_KEY, 0xA6, j)
        figs.agent_bands.append(_band(name, curves, rows, rng))
        if plays.actions:
            acts = np.concatenate([plays.actions[k] for k in ids])
            figs.agent_suff_fail.append((name, suff_fail_curve(acts, _best_arms(scenarios, rows))))


def _grid_panels(cfg: Config, iterations: list[IterationReport], figs: Figures) -> dict[str, str]:
    from rmft_api.generalization import GridEntry, describe_variant, variant_config

    tasks: dict[str, str] = {}
    for variant in cfg.eval.grid:
        task = tasks[variant.name] = describe_variant(
            GridEntry(variant=variant, cfg=variant_config(cfg, variant))
        )
        points, baselines = [], []
        for it in iterations:
            m = it.grid.get(variant.name)
            points.append(_point(it.label, m.regret if m else None))
            if m is not None:
                baselines = [_point(n, b) for n, b in m.baselines.items()]
        if any(p.mean is not None for p in points):
            figs.grid.append(
                GridPanel(name=variant.name, task=task, points=points, baselines=baselines)
            )
    return tasks


def build_report(run: RunPaths) -> tuple[RunReport, Figures]:
    """The report's numbers and the figures' data, from the run directory alone."""
    info, state, cfg = load_info(run), load_state(run), load_config_of(run)
    evaluated = [i for i in run.iterations() if run.iteration(i).metrics.is_file()]
    if not evaluated:
        raise StateError(f"{run.root}: no iteration has been evaluated yet (no metrics.json)")
    scenarios = {s.scenario_id: s for s in heldout_scenarios(cfg)}
    agents = _play_agents(cfg, list(scenarios.values()))
    agent_final = {
        n: {k: float(c[:, -1].mean()) for k, c in p.curves.items()} for n, p in agents.items()
    }
    figs = Figures(
        title=f"{info.run_id} · {task_label(cfg).split(';')[0]}",
        policy_bands=[],
        agent_bands=[],
        points=[],
        baseline_points=[],
    )
    collected = _Collected()
    for i in evaluated:
        _iteration(
            run, i, cfg=cfg, scenarios=scenarios, agent_final=agent_final, figs=figs, out=collected
        )
    _agent_series(cfg, agents, scenarios, figs)
    iterations = collected.iterations
    figs.baseline_points = [_point(n, s) for n, s in iterations[-1].metrics.baselines.items()]
    report = RunReport(
        run_id=info.run_id,
        run_dir=str(run.root),
        status=state.status,
        phase=state.phase,
        config_hash=info.config_hash,
        task=task_label(cfg),
        heldout=f"{cfg.eval.scenarios} scenarios × {cfg.eval.rollouts_per_scenario} episode(s)",
        trainer=cfg.trainer.kind,
        baselines=list(cfg.eval.baselines),
        iterations=iterations,
        grid_tasks=_grid_panels(cfg, iterations, figs),
        improvement=_improvement(iterations, collected.per_scenario, cfg),
        figures={},
    )
    return report, figs


def _improvement(
    iterations: list[IterationReport], per_scenario: dict[int, dict[str, float]], cfg: Config
) -> Improvement | None:
    first, last = iterations[0], iterations[-1]
    a, b = first.metrics.regret, last.metrics.regret
    if first is last or a is None or b is None:
        return None
    overlap = not (b.ci_high < a.ci_low or a.ci_high < b.ci_low)
    rng = child_rng(cfg.run.seed, _REPORT_KEY, last.index, 0xF1)
    return Improvement(
        first=first.label,
        last=last.label,
        first_regret=a,
        last_regret=b,
        ratio=paired_ratio(per_scenario[last.index], per_scenario[first.index], rng),
        cis_overlap=overlap,
        significant=(not overlap) and b.mean < a.mean,
    )


def write_report(run: RunPaths) -> RunReport:
    """Write report/report.md, report/summary.json and the PNGs; returns what was written.

    Without matplotlib the markdown and JSON are still written, saying why plots are missing.
    """
    report, figs = build_report(run)
    out = run.report
    out.mkdir(parents=True, exist_ok=True)
    try:
        report.figures = write_figures(out, figs)
    except RmftError as e:
        report.figures_error = str(e)
    report.report_md = str(out / "report.md")
    write_json_atomic(out / "summary.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    return report
