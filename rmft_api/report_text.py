"""report.md: the numbers of a RunReport in words and tables, stated as they are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rmft_api import __version__
from rmft_api.evaluate import EvalMetrics, RegretSummary
from rmft_api.growth import NO_REGRET

if TYPE_CHECKING:
    from rmft_api.report import Improvement, IterationReport, Ratio, RunReport

_CAPTIONS = {
    "regret_curves": "Mean cumulative regret by round on the held-out scenarios, one line per "
    "iteration's policy, the classic agents dashed (bands: pointwise 95% bootstrap CI).",
    "heldout_regret": "Held-out mean regret R_T by iteration (95% CI); dashed lines: the classic "
    "agents on the same draws (shaded: their CI).",
    "suff_fail": "SuffFailFreq(t): share of episodes that never play the best arm from round t "
    "on. Lower mean regret bought by greedier play shows up here as a higher curve.",
    "action_heatmap": "Share of plays on the best, 2nd, ... arm by round (tied arms share their "
    "ranks equally; full information: probability mass, arms ranked by total reward).",
    "grid": "Generalization grid: each iteration's policy on variants of the task, each on its "
    "own held-out scenarios; dashed: the classic agents on the variant's draws.",
}


def _ci(s: RegretSummary | None) -> str:
    if s is None:
        return "—"
    return f"{s.mean:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]"


def _ratio(r: Ratio | None) -> str:
    return "—" if r is None else f"{r.ratio:.2f}× [{r.ci_low:.2f}, {r.ci_high:.2f}]"


def _num(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _diff(d: RegretSummary | None) -> str:
    return "—" if d is None else f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]"


def _beta(m: EvalMetrics) -> str:
    return NO_REGRET if m.no_regret else _num(m.growth_exponent)


def _short(policy: str, width: int = 44) -> str:
    return policy if len(policy) <= width else "…" + policy[-(width - 1) :]


def _agent_name(name: str) -> str:
    return {"ucb1": "UCB1", "thompson": "Thompson sampling"}.get(name, name)


def _iteration(label: str) -> str:
    return "the final policy" if label == "final" else f"iteration {label}"


def _improvement_lines(imp: Improvement | None, iterations: list[IterationReport]) -> list[str]:
    if imp is None:
        if len(iterations) < 2:
            return ["- Only one policy has been evaluated so far: nothing to compare yet."]
        return ["- The first or the last evaluated policy has no complete episode: no comparison."]
    a, b = imp.first_regret, imp.last_regret
    direction = "fell" if b.mean < a.mean else "rose" if b.mean > a.mean else "stayed"
    ratio = ""
    if imp.ratio is not None:
        ratio = (
            f"; ratio {_ratio(imp.ratio)} (paired bootstrap over the same "
            f"{imp.ratio.scenarios} held-out scenarios)"
        )
    line = (
        f"- Held-out mean regret {direction} from **{_ci(a)}** ({_iteration(imp.first)}) to "
        f"**{_ci(b)}** ({_iteration(imp.last)}){ratio}."
    )
    if imp.significant:
        verdict = (
            "  The 95% CIs do not overlap: the improvement is significant by this "
            "(conservative) criterion."
        )
    elif not imp.cis_overlap:
        verdict = "  The 95% CIs do not overlap: regret got significantly **worse**."
    else:
        verdict = "  The 95% CIs overlap: the change is **not** significant by this criterion."
    return [line, verdict]


def _headline(report: RunReport) -> list[str]:
    last = report.iterations[-1]
    lines = _improvement_lines(report.improvement, report.iterations)
    headline: list[str] = [n for n in ("ucb1", "thompson") if n in last.vs_baselines]
    names = headline or list(last.vs_baselines)
    seeds = last.metrics.baseline_seeds
    for name in names:
        r = last.vs_baselines[name]
        agent = last.metrics.baselines.get(name)
        if r is None or agent is None:
            continue
        # The paired difference per scenario decides; records without one fall back to the ratio.
        d = last.metrics.differences.get(name)
        low, high = (d.ci_low, d.ci_high) if d is not None else (r.ci_low - 1, r.ci_high - 1)
        if low > 0:
            verdict = "worse than"
        elif high < 0:
            verdict = "better than"
        else:
            verdict = "not distinguishable from"
        diff = f"; difference {_diff(d)} per scenario (paired)" if d is not None else ""
        plays = (
            f", {_agent_name(name)} averaged over {seeds} plays per scenario" if seeds > 1 else ""
        )
        lines.append(
            f"- {_iteration(last.label).capitalize()} vs {_agent_name(name)}: {r.ratio:.2f}× "
            f"its regret [95% CI {r.ci_low:.2f}, {r.ci_high:.2f}]{diff} "
            f"({_ci(last.metrics.regret)} vs {_ci(agent)} on the same draws{plays}): "
            f"{verdict} {_agent_name(name)}."
        )
    first = report.iterations[0].metrics
    if first.suff_fail_freq is not None and last.metrics.suff_fail_freq is not None:
        lines.append(
            f"- SuffFailFreq(T/2) went from {first.suff_fail_freq:.2f} to "
            f"{last.metrics.suff_fail_freq:.2f}; K·MinFrac from {_num(first.k_min_frac)} to "
            f"{_num(last.metrics.k_min_frac)}. (A fine-tuned agent can lower mean regret by "
            "exploring less and failing more often; read these next to the mean.)"
        )
    lines.append(
        f"- Parse failures: {first.parse_failure_rate:.1%} of rounds at "
        f"{_iteration(report.iterations[0].label)}, {last.metrics.parse_failure_rate:.1%} at "
        f"{_iteration(last.label)}."
    )
    return lines


def headline_lines(report: RunReport) -> list[str]:
    """The summary bullets as plain terminal lines."""
    return [line.replace("**", "") for line in _headline(report)]


def _iteration_table(report: RunReport) -> list[str]:
    heads = ["iter", "policy", "episodes", "mean regret [95% CI]"]
    heads += [f"÷ {n} [95% CI]" for n in report.baselines[:2]]
    heads += [f"− {n} [95% CI]" for n in report.baselines[:2]]
    heads += ["SuffFail(T/2)", "K·MinFrac", "parse fail", "lenient", "β", "β p", "trend p"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for it in report.iterations:
        m = it.metrics
        cells = [it.label, f"`{_short(it.policy)}`", f"{m.complete}/{m.episodes}", _ci(m.regret)]
        cells += [_ratio(it.vs_baselines.get(n)) for n in report.baselines[:2]]
        cells += [_diff(m.differences.get(n)) for n in report.baselines[:2]]
        cells += [
            _num(m.suff_fail_freq),
            _num(m.k_min_frac),
            f"{m.parse_failure_rate:.1%}",
            f"{m.lenient_rate:.1%}",
            _beta(m),
            _num(m.growth_p_value, ".3g"),
            _num(m.trend_p_value, ".3g"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _baseline_table(report: RunReport) -> list[str]:
    labels = [it.label for it in report.iterations]
    lines = ["| agent | " + " | ".join(f"iter {x}" for x in labels) + " |"]
    lines.append("|" + "---|" * (len(labels) + 1))
    for name in report.baselines:
        cells = [_ci(it.metrics.baselines.get(name)) for it in report.iterations]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _grid_table(report: RunReport) -> list[str]:
    labels = [it.label for it in report.iterations]
    last = report.iterations[-1]
    agents = report.baselines[:2]
    heads = ["variant", "task", *(f"iter {x}" for x in labels), *agents]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, task in report.grid_tasks.items():
        cells = [name, task]
        cells += [_ci(it.grid[name].regret) if name in it.grid else "—" for it in report.iterations]
        latest = last.grid.get(name)
        cells += [_ci(latest.baselines.get(a)) if latest else "—" for a in agents]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: RunReport) -> str:
    """The whole report.md."""
    first = report.iterations[0]
    out = [
        f"# rmft-api report: {report.run_id}",
        "",
        f"- run: `{report.run_dir}` · status **{report.status}** (phase {report.phase}) · "
        f"config hash `{report.config_hash}` · rmft-api {__version__}",
        f"- task: {report.task}",
        f"- policy P_0: `{first.policy}` · trainer: {report.trainer} · evaluated iterations: "
        + ", ".join(it.label for it in report.iterations),
        f"- held-out evaluation: {report.heldout} per iteration, scenario seeds disjoint from "
        f"training; classic agents on the same draws: {', '.join(report.baselines)}",
        "",
        "## Summary",
        "",
        *_headline(report),
        "",
        "## Held-out evaluation by iteration",
        "",
        "Iteration *i* is policy P_i before its own fine-tuning; *final* is the last fine-tuned "
        "policy. Ratios are policy ÷ agent mean regret and differences policy − agent regret "
        "per scenario, on the same scenarios (paired bootstrap 95% CIs over scenarios; > 1 or "
        "> 0 = more regret than the agent); each agent is the mean of its plays per scenario. "
        "β: growth exponent of the mean regret curve (< 1 sublinear; no-regret: the curve ends "
        "at or below 0); β p: regression test of H0 β ≥ 1; trend p: Park et al.'s test that "
        "R_t/t falls.",
        "",
        *_iteration_table(report),
        "",
        "Classic agents (mean regret [95% CI]) on the scenarios the policy completed: the means "
        "differ between columns only when some episodes did not complete; each column's CI is "
        "resampled on its own.",
        "",
        *_baseline_table(report),
        "",
    ]
    if report.grid_tasks:
        out += [
            "## Generalization grid",
            "",
            "Each variant is played on held-out scenarios of its own (seeds disjoint from "
            "training, the main held-out set and the other variants). Mean regret [95% CI]; "
            "the agents' columns are from the last iteration's evaluation of the variant.",
            "",
            *_grid_table(report),
            "",
        ]
    out += ["## Figures", ""]
    if report.figures_error:
        out += [f"No figures: {report.figures_error}", ""]
    for key, name in report.figures.items():
        out += [f"![{key}]({name})", "", _CAPTIONS.get(key, ""), ""]
    return "\n".join(out).rstrip() + "\n"
