"""Terminal tables of a numeric RMFT result (rich): iterations, baselines, generalization."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rmft_api.console import table_console
from rmft_api.numeric.evaluate import RegretSummary
from rmft_api.numeric.experiment import NumericResult


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _cells(s: RegretSummary, groups: list[str], *, bandit: bool) -> list[str]:
    shown = [f"{s.mean_regret:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]", _num(s.growth_exponent)]
    if bandit:
        shown.append(_num(s.suff_fail_freq))
    return shown + [f"{s.groups[g].mean_regret:.2f}" if g in s.groups else "" for g in groups]


def render_numeric(result: NumericResult, *, console: Console | None = None) -> None:
    console = console or table_console()
    groups = list(result.iterations[0].groups)
    bandit = result.env == "mab"
    table = Table(title=f"numeric RMFT ({result.env}): held-out final regret R_T")
    extra = ["SuffFail(T/2)"] if bandit else []
    for col in ["", "mean [95% CI]", "growth β", *extra, *groups]:
        table.add_column(col, justify="right")
    for it in result.iterations:
        label = "it 0 (random init)" if it.index == 0 else f"it {it.index}"
        table.add_row(label, *_cells(it, groups, bandit=bandit))
    for name, s in result.baselines.items():
        table.add_row(name, *_cells(s, groups, bandit=bandit), style="dim")
    console.print(table)
    gen = Table(title="generalization: sizes never trained on (mean R_T)")
    names = (
        list(next(iter(result.generalization.values())).baselines) if result.generalization else []
    )
    for col in ["setting", "T", "K", "random init", "trained", *names]:
        gen.add_column(col, justify="right")
    for key, g in result.generalization.items():
        gen.add_row(
            key,
            str(g.horizon),
            str(g.num_arms),
            f"{g.initial.mean_regret:.2f}",
            f"{g.trained.mean_regret:.2f}",
            *[f"{g.baselines[n].mean_regret:.2f}" for n in names],
        )
    console.print(gen)
    console.print(f"{result.elapsed_s:.0f} s; figures: {', '.join(result.figures) or 'none'}")
