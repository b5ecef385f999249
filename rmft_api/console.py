"""Terminal rendering of runs (rich): the live reporter of `rmft-api run` and the status table.

Only this module, the CLI and report.py write to the terminal.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from rmft_api.rollout_progress import RolloutProgress
from rmft_api.run_state import Phase
from rmft_api.run_status import IterationStatus, StatusReport
from rmft_api.schema import JobRef


class RichReporter:
    """Phase lines, a progress bar per rollout/evaluation, and job progress, on stderr."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None
        self._label = ""
        self._job_line = ""

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def phase(self, iteration: int, phase: Phase, policy: str) -> None:
        self._stop_bar()
        label = f"iter {iteration}"
        self._label = f"{label} {phase}"
        self.console.print(f"[bold]{label}[/bold] · {phase} · [dim]{policy}[/dim]")

    def rollout(self, progress: RolloutProgress) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn(self._label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=True,
            )
            self._task = self._progress.add_task("episodes", total=None, info="")
            self._progress.start()
        p = progress
        elapsed = max(p.elapsed_s, 1e-9)
        played = p.episodes_done - p.episodes_skipped
        left = p.episodes_total - p.episodes_done
        eta = f"{left * elapsed / played:.0f}s" if played > 0 else "?"
        info = (
            f"{p.requests / elapsed:.1f} req/s · tok {p.prompt_tokens:,}/{p.completion_tokens:,}"
            f" · ${p.cost_usd:.4f} · parse fails {p.parse_failures} · 429s {p.rate_limited}"
            f" · ETA {eta}"
        )
        self._progress.update(
            self._task, total=p.episodes_total, completed=p.episodes_done, info=info
        )

    def job(self, ref: JobRef) -> None:
        self._stop_bar()
        pr = ref.progress
        parts = [f"job {ref.job_id}: {ref.status}"]
        if pr.step is not None:
            parts.append(f"step {pr.step}/{pr.total_steps or '?'}")
        if pr.loss is not None:
            parts.append(f"loss {pr.loss:.4f}")
        if pr.tokens_per_s:
            parts.append(f"{pr.tokens_per_s:,.0f} tok/s")
        line = " · ".join(parts)
        if line != self._job_line:
            self._job_line = line
            self.console.print(f"  {line}", highlight=False)

    def note(self, message: str) -> None:
        self._stop_bar()
        self.console.print(f"  [yellow]{message}[/yellow]")

    def close(self) -> None:
        self._stop_bar()


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _ci(row: IterationStatus) -> str:
    if row.eval_ci_low is None or row.eval_ci_high is None:
        return "—"
    return f"[{row.eval_ci_low:.2f}, {row.eval_ci_high:.2f}]"


def render_status(report: StatusReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(
        title=f"{report.run} · {report.status} · iteration {report.iteration} · {report.phase}"
    )
    for col in (
        "iter",
        "phase",
        "policy",
        "held-out regret",
        "95% CI",
        "ucb1",
        "thompson",
        "kept/total",
        "tokens",
        "$",
        "job",
    ):
        table.add_column(col, justify="left" if col in ("phase", "policy", "job") else "right")
    rows = [(str(r.index), r) for r in report.iterations]
    if report.final is not None:
        rows.append(("final", report.final))
    for label, r in rows:
        kept = f"{r.kept}/{r.total}" if r.kept is not None else "—"
        job = f"{r.job_id} ({r.job_status})" if r.job_id else "—"
        policy = r.policy or "—"
        if len(policy) > 48:
            policy = "…" + policy[-47:]
        table.add_row(
            label,
            r.phase,
            policy,
            _fmt(r.eval_mean_regret),
            _ci(r),
            _fmt(r.baselines.get("ucb1")),
            _fmt(r.baselines.get("thompson")),
            kept,
            f"{r.tokens:,}" if r.tokens is not None else "—",
            f"{r.usd:.4f}",
            job,
        )
    console.print(table)
    if report.message:
        console.print(f"[yellow]{report.message}[/yellow]")


def elapsed(start: float) -> str:
    return f"{time.monotonic() - start:.0f}s"
