"""Terminal tables of a numeric RMFT result (rich): one table per task, then generalization.

A task is a FOL family or a MAB noise. Each is shown on its own, with the model − baseline
difference paired per scenario against the first (no-regret) baseline: a pooled mean would mix an
easy task with a hard one and hide where the model stands on each.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rmft_api.console import table_console
from rmft_api.growth import NO_REGRET
from rmft_api.numeric.evaluate import Difference, RegretSummary
from rmft_api.numeric.experiment import NumericResult


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _task(s: RegretSummary, group: str | None) -> RegretSummary:
    return s.groups[group] if group is not None and group in s.groups else s


def _diff(d: Difference | None, group: str | None) -> str:
    if d is None:
        return "—"
    x = d.groups[group] if group is not None and group in d.groups else d
    return f"{x.mean:+.2f} [{x.ci_low:+.2f}, {x.ci_high:+.2f}]"


def _cells(s: RegretSummary, *, bandit: bool) -> list[str]:
    beta = NO_REGRET if s.no_regret else _num(s.growth_exponent)
    shown = [f"{s.mean_regret:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]", beta]
    return [*shown, _num(s.suff_fail_freq)] if bandit else shown


def render_numeric(result: NumericResult, *, console: Console | None = None) -> None:
    console = console or table_console()
    groups: list[str | None] = [*result.iterations[0].groups] or [None]
    bandit = result.env == "mab"
    ref = next(iter(result.baselines))
    extra = ["SuffFail(T/2)"] if bandit else []
    for group in groups:
        task = f", {group}" if group else ""
        table = Table(title=f"numeric RMFT ({result.env}{task}): {result.split} final regret R_T")
        for col in ["", "mean [95% CI]", "growth β", *extra, f"− {ref} [95% CI] (paired)"]:
            table.add_column(col, justify="right")
        for it in result.iterations:
            label = "it 0 (random init)" if it.index == 0 else f"it {it.index}"
            cells = _cells(_task(it, group), bandit=bandit)
            table.add_row(label, *cells, _diff(it.vs_baselines.get(ref), group))
        for name, s in result.baselines.items():
            table.add_row(name, *_cells(_task(s, group), bandit=bandit), "", style="dim")
        console.print(table)
    gen = Table(title="generalization: sizes never trained on (mean R_T, per task)")
    names = list(result.baselines)
    for col in ["setting", "task", "T", "K", "random init", "trained", f"− {ref}", *names]:
        gen.add_column(col, justify="right")
    for key, g in result.generalization.items():
        for group in groups:
            gen.add_row(
                key,
                group or "",
                str(g.horizon),
                str(g.num_arms),
                f"{_task(g.initial, group).mean_regret:.2f}",
                f"{_task(g.trained, group).mean_regret:.2f}",
                _diff(g.trained_vs_baselines.get(ref), group),
                *[f"{_task(g.baselines[n], group).mean_regret:.2f}" for n in names],
            )
    console.print(gen)
    sets = ", ".join(f"{k} {v}" for k, v in result.scenario_sets.items())
    console.print(f"scenario sets (no seed shared): {sets}")
    console.print(f"{result.elapsed_s:.0f} s; figures: {', '.join(result.figures) or 'none'}")
