"""Terminal rendering of runs (rich): the live reporter of `rmft-api run` and the status table.

Only this module, the CLI and report.py write to the terminal.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from rmft_api.credentials import scrub
from rmft_api.evaluate import RegretSummary
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
        self.console.print(f"[bold]{label}[/bold] · {phase} · [dim]{escape(policy)}[/dim]")

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
            self.console.print(f"  {escape(line)}", highlight=False)

    def note(self, message: str) -> None:
        self._stop_bar()
        self.console.print(f"  [yellow]{escape(scrub(message))}[/yellow]")

    def close(self) -> None:
        self._stop_bar()


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _ci(row: IterationStatus) -> str:
    if row.eval_ci_low is None or row.eval_ci_high is None:
        return "—"
    return f"[{row.eval_ci_low:.2f}, {row.eval_ci_high:.2f}]"


@contextlib.contextmanager
def pretraining_progress() -> Iterator[Callable[[int, int, float], None]]:
    """A step callback for building the bootstrap model: a progress bar on stderr, shown only
    once a build actually starts (a cached model prints nothing)."""
    progress = Progress(
        TextColumn("pre-training the bootstrap model"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("pretrain", total=None, loss="—")

    def on_step(done: int, steps: int, loss: float) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=steps, loss=f"{loss:.3f}")

    try:
        yield on_step
    finally:
        progress.stop()


def table_console(*, stderr: bool = False) -> Console:
    """A console for tables: the terminal's width, or 200 columns when piped into a file or a CI
    log (rich would assume 80 there and elide every cell)."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=max(probe.width, 200))


def short_policy(spec: str, base: str | None = None) -> str:
    """A policy spec short enough for a table cell: `base` (P_0's spec, named in the caption)
    becomes "P_0" and its adapters "+iter-002/adapter"; other paths keep their last part."""
    if base and (spec == base or spec.startswith(base + "+")):
        adapter = spec[len(base) + 1 :]
        return "+" + "/".join(Path(adapter).parts[-2:]) if adapter else "P_0"
    head, plus, adapter = spec.partition("+")
    kind, slash, rest = head.partition("/")
    if slash and "/" in rest.strip("/"):
        head = f"{kind}/…/{Path(rest).name}"
    return head + ("+" + "/".join(Path(adapter).parts[-2:]) if plus else "")


def _elide(text: str, width: int) -> str:
    """The end of `text` (where model and job names differ) within `width` characters."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _difference(d: RegretSummary | None) -> str:
    """Policy − agent per scenario with its paired CI: below 0 everywhere = beats the agent."""
    return "—" if d is None else f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]"


def render_status(report: StatusReport, console: Console | None = None) -> None:
    console = console or table_console()
    table = Table(
        title=f"{report.run} · {report.status} · iteration {report.iteration} · {report.phase}"
        " · held-out mean regret"
    )
    # Figures never elide; long policy and job names give way first.
    columns = {"iter": 5, "phase": 8, "policy": 16, "regret": 6, "95% CI": 12, "ucb1": 5}
    columns |= {"thompson": 8, "− ucb1 [95% CI]": 21, "kept": 8, "tokens": 7, "$": 6}
    columns |= {"job": 12, "status": 9}
    for col, least in columns.items():
        left = col in ("phase", "policy", "job", "status")
        table.add_column(col, justify="left" if left else "right", no_wrap=True, min_width=least)
    rows = [(str(r.index), r) for r in report.iterations]
    base = report.iterations[0].policy if report.iterations else None
    if base:
        table.caption = f"P_0 = {escape(base)}"
    if report.final is not None:
        rows.append(("final", report.final))
    for label, r in rows:
        table.add_row(
            label,
            r.phase,
            escape(_elide(short_policy(r.policy, base) if r.policy else "—", 36)),
            _fmt(r.eval_mean_regret),
            _ci(r),
            _fmt(r.baselines.get("ucb1")),
            _fmt(r.baselines.get("thompson")),
            _difference(r.differences.get("ucb1")),
            f"{r.kept}/{r.total}" if r.kept is not None else "—",
            f"{r.tokens:,}" if r.tokens is not None else "—",
            f"{r.usd:.4f}",
            escape(r.job_id or "—"),
            escape(r.job_status or "—"),
        )
    console.print(table)
    if report.message:
        console.print(f"[yellow]{escape(report.message)}[/yellow]")


def elapsed(start: float) -> str:
    return f"{time.monotonic() - start:.0f}s"
