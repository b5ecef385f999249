"""The figures of docs/real-model.md, read from one finished run directory.

    .venv/bin/python benchmarks/real_model_figures.py runs/<smollm2-run-id>

Prints markdown: per iteration the held-out regret ± 95% CI, ÷ UCB1, parse-failure and lenient
rates, SuffFailFreq(T/2) and K·MinFrac (from report/summary.json, which `rmft-api run` writes),
then the wall time of every phase and the tokens per second of rollout, evaluation and training.

Phase wall times come from the modification times of the files each phase writes last (the run
directory records no per-phase clock): evaluation → iter-NNN/metrics.json, rollout →
iter-NNN/episodes.jsonl, select + export + validate → iter-NNN/validation.json, train →
iter-NNN/job.json. Each phase runs from the end of the one before it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rmft_api.rollout import read_episodes
from rmft_api.store import RunPaths


def _ci(s: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not s:
        return "—"
    mean = s.get("mean", s.get("ratio"))
    return f"{mean:{fmt}} [{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else f"{x:{fmt}}"


def metrics_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| iter | held-out regret [95% CI] | ÷ UCB1 [95% CI] | − UCB1 [95% CI] | parse fail "
        "| lenient | SuffFailFreq(T/2) | K·MinFrac |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for it in summary["iterations"]:
        m = it["metrics"]
        lines.append(
            f"| {it['label']} | {_ci(m['regret'])} | {_ci(it['vs_baselines'].get('ucb1'))} "
            f"| {_ci(m['differences'].get('ucb1'), '+.2f')} | {m['parse_failure_rate']:.1%} "
            f"| {m.get('lenient_rate', 0.0):.1%} | {_num(m['suff_fail_freq'])} "
            f"| {_num(m['k_min_frac'])} |"
        )
    return lines


def _tokens(path: Path) -> tuple[int, int, int]:
    """(episodes, prompt tokens, completion tokens) of an episodes file."""
    episodes = read_episodes(path)
    prompt = sum(e.usage.prompt_tokens for e in episodes)
    return len(episodes), prompt, sum(e.usage.completion_tokens for e in episodes)


def timing_table(run: RunPaths) -> list[str]:
    lines = [
        "| iter | phase | wall s | requests | prompt tok | completion tok | completion tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    clock = run.run_json.stat().st_mtime
    start = clock
    for index in run.iterations():
        it = run.iteration(index)
        phases = [("evaluate", it.metrics, it.eval_episodes), ("rollout", it.episodes, it.episodes)]
        phases += [("select+export+validate", it.validation, None), ("train", it.job, None)]
        for name, marker, episodes in phases:
            if not marker.is_file():
                continue
            end = marker.stat().st_mtime
            wall = end - clock
            clock = end
            if episodes is None:
                extra = ""
                if name == "train":
                    job = json.loads(it.job.read_text())
                    tok = job.get("trained_tokens") or 0
                    extra = f" ({tok} trained tokens, {tok / wall:.0f}/s of phase wall"
                    status = it.root / "adapter-job" / "status.json"
                    if status.is_file():
                        speed = json.loads(status.read_text()).get("tokens_per_s")
                        extra += f"; trainer reports {_num(speed, '.0f')} tok/s"
                    extra += ")"
                lines.append(f"| {index} | {name}{extra} | {wall:.0f} | | | | |")
                continue
            n, prompt, completion = _tokens(episodes)
            requests = sum(len(s.attempts) for e in read_episodes(episodes) for s in e.steps)
            lines.append(
                f"| {index} | {name} ({n} episodes) | {wall:.0f} | {requests} | {prompt} "
                f"| {completion} | {completion / wall:.1f} |"
            )
    lines.append(f"| all | run.json → last file | {clock - start:.0f} | | | | |")
    return lines


def decomposition_table(run: RunPaths) -> list[str]:
    """Held-out regret split into rounds lost to parsing and rounds played badly."""
    lines = [
        "| iter | rounds | unparsed | regret / episode from unparsed rounds | from played rounds "
        "| played rounds on the best arm | played rounds, same arm as the round before |",
        "|---|---|---|---|---|---|---|",
    ]
    for index in run.iterations():
        episodes = read_episodes(run.iteration(index).eval_episodes)
        if not episodes:
            continue
        steps = [s for e in episodes for s in e.steps]
        lost = sum(s.best_expected_reward - s.expected_reward for s in steps if not s.valid)
        played = [s for s in steps if s.valid]
        bad = sum(s.best_expected_reward - s.expected_reward for s in played)
        best = sum(s.expected_reward >= s.best_expected_reward - 1e-12 for s in played)
        pairs = [(a, b) for e in episodes for a, b in zip(e.steps, e.steps[1:], strict=False)]
        both = [(a, b) for a, b in pairs if a.valid and b.valid]
        same = sum(a.action == b.action for a, b in both)
        n = len(episodes)
        lines.append(
            f"| {index} | {len(steps)} | {len(steps) - len(played)} | {lost / n:.2f} "
            f"| {bad / n:.2f} | {best}/{len(played)} ({best / max(len(played), 1):.0%}) "
            f"| {same}/{len(both)} ({same / max(len(both), 1):.0%}) |"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run = RunPaths(Path(argv[0]))
    summary = json.loads((run.report / "summary.json").read_text())
    print("\n".join(metrics_table(summary)))
    print()
    print("\n".join(decomposition_table(run)))
    print()
    print("\n".join(timing_table(run)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
