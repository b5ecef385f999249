"""`rmft-api status`: one row per iteration, built only from what the run directory holds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rmft_api.datasets import DataCard
from rmft_api.evaluate import EvalMetrics, RegretSummary
from rmft_api.run_state import load_info, load_state
from rmft_api.schema import Episode, JobRef
from rmft_api.selection import SelectionReport
from rmft_api.store import RunPaths, read_json, read_jsonl
from rmft_api.validation import ValidationReport


class IterationStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    phase: str  # the phase this iteration is in, or "done"
    policy: str | None
    eval_mean_regret: float | None
    eval_ci_low: float | None
    eval_ci_high: float | None
    eval_episodes: int
    baselines: dict[str, float]  # classic agents' mean regret on the same held-out draws
    # policy − agent regret per scenario with its paired 95% CI (metrics.json `differences`)
    differences: dict[str, RegretSummary] = Field(default_factory=dict)
    kept: int | None
    total: int | None
    tokens: int | None  # training-file tokens
    usd: float  # spent: rollout + evaluation requests + billed training
    usd_estimated: float | None  # validation's training estimate
    job_id: str | None
    job_status: str | None


class StatusReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str
    run_dir: str
    status: str
    iteration: int
    phase: str
    message: str | None
    config_hash: str
    iterations: list[IterationStatus]
    final: IterationStatus | None  # evaluation of the last policy P_N, once reached


def requests_usd(paths: Any) -> float:
    """Requests paid in this iteration: rollout, held-out evaluation and the generalization grid."""
    from rmft_api.generalization import grid_dir

    total = 0.0
    grid = sorted(grid_dir(paths.root).glob("*/episodes.jsonl"))
    for path in (paths.episodes, paths.eval_episodes, *grid):
        if path.is_file():
            total += sum(e.usage.cost_usd for e in read_jsonl(path, Episode))
    return total


def _row(run: RunPaths, index: int, *, phase: str, policy: str | None) -> IterationStatus:
    paths = run.iteration(index)
    metrics = read_json(paths.metrics, EvalMetrics) if paths.metrics.is_file() else None
    selection = read_json(paths.selection, SelectionReport) if paths.selection.is_file() else None
    card = read_json(paths.data_card, DataCard) if paths.data_card.is_file() else None
    valid = read_json(paths.validation, ValidationReport) if paths.validation.is_file() else None
    job = read_json(paths.job, JobRef) if paths.job.is_file() else None
    usd = requests_usd(paths)
    if job is not None and job.backend == "openai" and job.trained_tokens:
        from rmft_api.providers.pricing import PriceTable

        usd += PriceTable().training_cost(
            job.base_policy.removeprefix("openai/"), tokens=job.trained_tokens
        )
    summary = metrics.regret if metrics else None
    return IterationStatus(
        index=index,
        phase=phase,
        policy=policy,
        eval_mean_regret=summary.mean if summary else None,
        eval_ci_low=summary.ci_low if summary else None,
        eval_ci_high=summary.ci_high if summary else None,
        eval_episodes=metrics.complete if metrics else 0,
        baselines={k: v.mean for k, v in metrics.baselines.items()} if metrics else {},
        differences=dict(metrics.differences) if metrics else {},
        kept=selection.kept if selection else None,
        total=selection.total if selection else None,
        tokens=card.tokens.total if card else None,
        usd=usd,
        usd_estimated=valid.cost.training_usd if valid and valid.cost else None,
        job_id=job.job_id if job else None,
        job_status=job.status if job else None,
    )


def run_status(run: RunPaths) -> StatusReport:
    info, state = load_info(run), load_state(run)
    count = int(info.config["iterations"]["count"])
    rows: list[IterationStatus] = []
    for i in range(min(state.iteration + 1, count)):
        phase = state.phase if i == state.iteration else "done"
        policy = state.policies[i] if i < len(state.policies) else None
        rows.append(_row(run, i, phase=phase, policy=policy))
    final = None
    if state.iteration >= count:
        policy = state.policies[count] if count < len(state.policies) else state.policy
        final = _row(run, count, phase=state.phase, policy=policy)
    return StatusReport(
        run=info.run_id,
        run_dir=str(run.root),
        status=state.status,
        iteration=state.iteration,
        phase=state.phase,
        message=state.message,
        config_hash=info.config_hash,
        iterations=rows,
        final=final,
    )
