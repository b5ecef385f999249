"""`rmft-api compare RUN_A RUN_B`: two runs side by side, from their metrics files alone."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from rich import box
from rich.console import Console
from rich.table import Table

from rmft_api.console import table_console
from rmft_api.evaluate import EvalMetrics, RegretSummary
from rmft_api.generalization import read_grid
from rmft_api.report import iteration_label, task_label
from rmft_api.run_state import config_differences, load_config_of, load_info, load_state
from rmft_api.store import RunPaths, read_json


class IterationSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    label: str
    policy: str
    regret: RegretSummary | None
    baselines: dict[str, RegretSummary]
    suff_fail_freq: float | None
    parse_failure_rate: float
    grid: dict[str, RegretSummary | None]
    differences: dict[str, RegretSummary] = {}  # policy − agent per scenario, paired CI


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    run_dir: str
    status: str
    phase: str
    config_hash: str
    task: str
    trainer: str
    iterations: list[IterationSummary]


class RunComparison(BaseModel):
    """What `compare` prints; `model_dump(mode="json")` is its --json line."""

    model_config = ConfigDict(extra="forbid")

    a: RunSummary
    b: RunSummary
    config_differences: list[str]  # "key: A's value → B's value"


def summarize_run(run: RunPaths) -> RunSummary:
    info, state, cfg = load_info(run), load_state(run), load_config_of(run)
    rows: list[IterationSummary] = []
    for i in run.iterations():
        paths = run.iteration(i)
        if not paths.metrics.is_file():
            continue
        m = read_json(paths.metrics, EvalMetrics)
        rows.append(
            IterationSummary(
                index=i,
                label=iteration_label(i, cfg.iterations.count),
                policy=m.policy,
                regret=m.regret,
                baselines=m.baselines,
                suff_fail_freq=m.suff_fail_freq,
                parse_failure_rate=m.parse_failure_rate,
                grid={k: g.regret for k, g in read_grid(paths.root).items()},
                differences=dict(m.differences),
            )
        )
    return RunSummary(
        run_id=info.run_id,
        run_dir=str(run.root),
        status=state.status,
        phase=state.phase,
        config_hash=info.config_hash,
        task=task_label(cfg),
        trainer=cfg.trainer.kind,
        iterations=rows,
    )


def compare_runs(a: RunPaths, b: RunPaths) -> RunComparison:
    return RunComparison(
        a=summarize_run(a),
        b=summarize_run(b),
        config_differences=config_differences(load_config_of(a), load_config_of(b)),
    )


def _ci(s: RegretSummary | None) -> str:
    return "—" if s is None else f"{s.mean:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]"


def _verdict(a: RegretSummary | None, b: RegretSummary | None) -> str:
    """Which run has less regret, by non-overlapping 95% CIs (the report's criterion)."""
    if a is None or b is None:
        return "—"
    if b.ci_high < a.ci_low:
        return "[green]B lower[/green]"
    if a.ci_high < b.ci_low:
        return "[red]B higher[/red]"
    return "CIs overlap"


def _ratio(s: RegretSummary | None, ref: RegretSummary | None) -> str:
    if s is None or ref is None or ref.mean <= 0:
        return "—"
    return f"{s.mean / ref.mean:.2f}"


def _difference(d: RegretSummary | None) -> str:
    return "—" if d is None else f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]"


def _labels(cmp: RunComparison) -> list[str]:
    order = {it.label: it.index for r in (cmp.a, cmp.b) for it in r.iterations}
    return sorted(order, key=lambda label: (label == "final", order[label]))


def render_comparison(cmp: RunComparison, console: Console | None = None) -> None:
    console = console or table_console()
    a = {it.label: it for it in cmp.a.iterations}
    b = {it.label: it for it in cmp.b.iterations}
    table = Table(title="held-out mean regret by iteration, run A vs run B", box=box.SIMPLE_HEAD)
    cols = ("iter", "run", "regret [95% CI]", "÷ ucb1", "− ucb1 [95% CI]", "SuffFail")
    for col in (*cols, "parse fail", "B vs A"):
        table.add_column(col, justify="left" if col in ("iter", "run", "B vs A") else "right")
        table.columns[-1].no_wrap = col in ("regret [95% CI]", "− ucb1 [95% CI]", "B vs A")
    for label in _labels(cmp):
        x, y = a.get(label), b.get(label)
        for tag, it in (("A", x), ("B", y)):
            s = it.regret if it else None
            table.add_row(
                label if tag == "A" else "",
                tag,
                _ci(s),
                _ratio(s, it.baselines.get("ucb1") if it else None),
                _difference(it.differences.get("ucb1") if it else None),
                "—" if it is None or it.suff_fail_freq is None else f"{it.suff_fail_freq:.2f}",
                "—" if it is None else f"{it.parse_failure_rate:.1%}",
                _verdict(x.regret if x else None, y.regret if y else None) if tag == "B" else "",
                end_section=tag == "B",
            )
    console.print(table)
    for tag, run in (("A", cmp.a), ("B", cmp.b)):
        console.print(
            f"  {tag}: {run.run_dir} ({run.run_id}) · {run.status} · {run.task} · "
            f"trainer {run.trainer}",
            highlight=False,
        )
    variants = sorted({v for r in (cmp.a, cmp.b) for it in r.iterations for v in it.grid})
    if variants:
        grid = Table(title="generalization grid, last evaluated iteration", box=box.SIMPLE_HEAD)
        for col in ("variant", "A", "B", "95% CIs"):
            grid.add_column(col, justify="left" if col in ("variant", "95% CIs") else "right")
        last_a = cmp.a.iterations[-1].grid if cmp.a.iterations else {}
        last_b = cmp.b.iterations[-1].grid if cmp.b.iterations else {}
        for v in variants:
            ga, gb = last_a.get(v), last_b.get(v)
            grid.add_row(v, _ci(ga), _ci(gb), _verdict(ga, gb))
        console.print(grid)
    if cmp.config_differences:
        console.print(f"  config differences ({len(cmp.config_differences)}):")
        for line in cmp.config_differences[:25]:
            console.print(f"    {line}", highlight=False, markup=False)
        if len(cmp.config_differences) > 25:
            console.print(f"    … {len(cmp.config_differences) - 25} more (see --json)")
    else:
        console.print("  same config")
