"""Why replies failed to parse, per iteration and phase, read from a run directory.

Every rejected attempt carries the parser's category (`envs/parsing.FailureCategory`) and
whether the reply hit max_tokens; every played step whether the lenient answer-line reader
(`parse.answer_line = "unique_name"`) took it. This module counts them for
`rmft-api parse-failures RUN`, with a few replies of each kind as examples.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

from pydantic import Field

from rmft_api.rollout import read_episodes
from rmft_api.schema import Attempt, Episode, Record
from rmft_api.store import RunPaths

Phase = Literal["rollout", "eval"]
# Records written before attempts were categorised name no category.
UNCATEGORISED = "uncategorised"
_SHOWN_CHARS = 100


class FailureKind(Record):
    """The rejected attempts of one category in one phase."""

    category: str
    count: int
    truncated: int  # of these, replies that hit max_tokens
    examples: list[str] = Field(default_factory=list)


class PhaseFailures(Record):
    """One phase of one iteration: rounds played, attempts rejected by kind, lenient takes."""

    iteration: int
    phase: Phase
    episodes: int
    rounds: int
    attempts: int
    failed: int  # rejected attempts
    unparsed_rounds: int  # rounds with no parsed answer (fallback or forfeit)
    lenient: int  # rounds whose answer was taken by answer_line = unique_name
    truncated: int  # attempts (parsed or not) that hit max_tokens
    kinds: list[FailureKind] = Field(default_factory=list)  # most frequent first

    @property
    def unparsed_rate(self) -> float:
        return self.unparsed_rounds / self.rounds if self.rounds else 0.0

    @property
    def lenient_rate(self) -> float:
        return self.lenient / self.rounds if self.rounds else 0.0


class ParseFailureReport(Record):
    run: str
    phases: list[PhaseFailures] = Field(default_factory=list)


def _shown(reply: str) -> str:
    text = " ".join(reply.split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _category(attempt: Attempt) -> str:
    return attempt.parse_category or UNCATEGORISED


def phase_failures(
    episodes: list[Episode], *, iteration: int, phase: Phase, examples: int = 3
) -> PhaseFailures:
    """Count the rejected attempts of `episodes` by category, keeping `examples` of each."""
    counts: dict[str, int] = defaultdict(int)
    cut: dict[str, int] = defaultdict(int)
    shown: dict[str, list[str]] = defaultdict(list)
    rounds = attempts = unparsed = lenient = truncated = 0
    for episode in episodes:
        for step in episode.steps:
            rounds += 1
            unparsed += not step.valid
            lenient += step.lenient
            for attempt in step.attempts:
                attempts += 1
                truncated += attempt.truncated
                if attempt.parse_error is None:
                    continue
                kind = _category(attempt)
                counts[kind] += 1
                cut[kind] += attempt.truncated
                example = _shown(attempt.reply)
                if len(shown[kind]) < examples and example not in shown[kind]:
                    shown[kind].append(example)
    kinds = [
        FailureKind(category=k, count=n, truncated=cut[k], examples=shown[k])
        for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return PhaseFailures(
        iteration=iteration,
        phase=phase,
        episodes=len(episodes),
        rounds=rounds,
        attempts=attempts,
        failed=sum(counts.values()),
        unparsed_rounds=unparsed,
        lenient=lenient,
        truncated=truncated,
        kinds=kinds,
    )


def parse_failure_report(run: RunPaths, *, examples: int = 3) -> ParseFailureReport:
    """Every iteration's evaluation (held-out) and rollout (training) episodes, counted."""
    phases = []
    for index in run.iterations():
        paths = run.iteration(index)
        sources: tuple[tuple[Phase, Path], ...] = (
            ("eval", paths.eval_episodes),
            ("rollout", paths.episodes),
        )
        for phase, path in sources:
            episodes = read_episodes(path)
            if episodes:
                phases.append(
                    phase_failures(episodes, iteration=index, phase=phase, examples=examples)
                )
    return ParseFailureReport(run=run.run_id, phases=phases)


def render_parse_failures(report: ParseFailureReport) -> list[str]:
    """Plain-text lines: one header per phase, then each kind with its examples."""
    if not report.phases:
        return [f"{report.run}: no episodes yet"]
    lines = []
    for p in report.phases:
        lines.append(
            f"iter {p.iteration} · {p.phase}: {p.rounds} rounds, {p.unparsed_rounds} unparsed "
            f"({p.unparsed_rate:.1%}), {p.lenient} lenient ({p.lenient_rate:.1%}); "
            f"{p.failed} of {p.attempts} attempts rejected, {p.truncated} hit max_tokens"
        )
        for kind in p.kinds:
            lines.append(f"  {kind.category}: {kind.count} ({kind.truncated} truncated)")
            lines += [f"    {example!r}" for example in kind.examples]
    return lines
