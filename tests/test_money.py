"""Never pay twice, never spend past the cap (issue 14): evaluation and the grid replay paid
turns from the response cache, a failed evaluation is not a result. Real SDK, real HTTP,
against the loopback sandbox; the sandbox's own counters are the bill."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rmft_api.config import Config, config_from_dict
from rmft_api.errors import EvaluationError, QuotaExhaustedError
from rmft_api.evaluate import EvalMetrics, evaluate_policy
from rmft_api.generalization import evaluate_grid, grid_entries
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.openai import OpenAIProvider
from rmft_api.providers.registry import resolve
from rmft_api.rollout import read_episodes
from rmft_api.sandbox.faults import FaultPlan, FaultRule
from rmft_api.store import read_json, write_json_atomic

SAMPLING = SamplingParams(temperature=0, max_tokens=64)


def _cfg(tmp: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "run": {"seed": 5, "runs_dir": str(tmp)},
        "env": {"kind": "mab", "num_arms": 4, "horizon": 10},
        "eval": {"scenarios": 6, "rollouts_per_scenario": 2, "baselines": ["ucb1"]},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def _client(server: Any, **kw: Any) -> OpenAIProvider:
    options: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "concurrency": 4}
    return OpenAIProvider("sandbox", base_url=server.base_url, **{**options, **kw})


def _evaluate(provider: OpenAIProvider, cfg: Config, out: Path) -> EvalMetrics:
    async def go() -> EvalMetrics:
        try:
            return await evaluate_policy(provider, cfg, iteration=0, out=out, sampling=SAMPLING)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def _turns(path: Path) -> int:
    return sum(len(s.attempts) for e in read_episodes(path) for s in e.steps)


# ---------------------------------------------------------------- item 1: the response cache


def test_a_stopped_evaluation_resumes_paying_only_unanswered_turns(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    # The 40th request reports the quota exhausted: the evaluation stops with 8 episodes live.
    plan = FaultPlan(rules=[FaultRule(fault="insufficient_quota", at=[40])])
    server = start_sandbox(resolve("agent/ucb1"), faults=plan)
    cfg = _cfg(tmp_path)
    out = tmp_path / "eval" / "episodes.jsonl"
    with pytest.raises(QuotaExhaustedError):
        _evaluate(_client(server), cfg, out)
    paid_before = server.state.completions
    assert paid_before >= 39 and len(read_episodes(out)) < 12  # really stopped midway
    metrics = _evaluate(_client(server), cfg, out)
    assert metrics.complete == 12
    # Every turn was paid for exactly once, across both invocations.
    assert server.state.completions == _turns(out) == 12 * 10


def test_a_stopped_grid_variant_resumes_paying_only_unanswered_turns(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    plan = FaultPlan(rules=[FaultRule(fault="insufficient_quota", at=[30])])
    server = start_sandbox(resolve("agent/ucb1"), faults=plan)
    cfg = _cfg(tmp_path, eval={"grid": [{"name": "long", "env": {"horizon": 12}}]})
    entries = grid_entries(cfg)
    out_dir = tmp_path / "grid"

    def grid() -> dict[str, EvalMetrics]:
        provider = _client(server)

        async def go() -> dict[str, EvalMetrics]:
            try:
                return await evaluate_grid(
                    provider, entries, iteration=0, out_dir=out_dir, sampling=SAMPLING
                )
            finally:
                await provider.aclose()

        return asyncio.run(go())

    with pytest.raises(QuotaExhaustedError):
        grid()
    results = grid()
    assert results["long"].complete == 12
    assert server.state.completions == _turns(out_dir / "long" / "episodes.jsonl") == 12 * 12


# ---------------------------------------------------------------- item 7: failed evaluations


def test_an_evaluation_whose_every_episode_failed_is_not_a_result(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    broken = start_sandbox(resolve("agent/ucb1"), faults=FaultPlan(rules=[
        FaultRule(fault="server_error")
    ]))  # fmt: skip
    cfg = _cfg(tmp_path)
    out = tmp_path / "eval" / "episodes.jsonl"
    with pytest.raises(EvaluationError, match="all 12 episodes ended in errors"):
        _evaluate(_client(broken, max_retries=0), cfg, out)
    assert all(e.status == "error" for e in read_episodes(out))
    # Once the service answers again, the same call plays the evaluation for real.
    healthy = start_sandbox(resolve("agent/ucb1"))
    assert _evaluate(_client(healthy), cfg, out).complete == 12


def test_failed_metrics_on_disk_are_played_again_on_resume(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    """A metrics.json with no completed episode (as older versions wrote after every episode
    failed) is not final: the grid (like the pipeline's main evaluation) plays it again."""
    server = start_sandbox(resolve("agent/ucb1"))
    cfg = _cfg(tmp_path, eval={"grid": [{"name": "long", "env": {"horizon": 12}}]})
    entries = grid_entries(cfg)
    where = tmp_path / "grid" / "long"
    where.mkdir(parents=True)
    failed = EvalMetrics.model_validate(
        {
            "iteration": 0, "policy": "openai/sandbox", "episodes": 12, "complete": 0,
            "regret": None, "curve": [], "parse_failure_rate": 0.0, "suff_fail_freq": None,
            "k_min_frac": None, "growth_exponent": None, "trend_p_value": None,
            "baselines": {}, "baseline_curves": {}, "usage": {},
        }
    )  # fmt: skip
    write_json_atomic(where / "metrics.json", failed)
    provider = _client(server)

    async def go() -> dict[str, EvalMetrics]:
        try:
            return await evaluate_grid(
                provider, entries, iteration=0, out_dir=tmp_path / "grid", sampling=SAMPLING
            )
        finally:
            await provider.aclose()

    assert asyncio.run(go())["long"].complete == 12
    assert read_json(where / "metrics.json", EvalMetrics).complete == 12
