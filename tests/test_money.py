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


# ---------------------------------------------------------------- item 2: the ledger


def test_resumes_after_a_budget_stop_spend_no_more_than_the_cap_in_total(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    """`rmft-api rollout --out DIR` stopped by budget.max_usd, then resumed three times: the
    sandbox's own bill over all four invocations stays within the one cap."""
    from rmft_api.errors import BudgetError
    from rmft_api.ledger import Ledger, ledger_path
    from rmft_api.providers.pricing import PriceTable
    from rmft_api.rollout_report import rollout_and_compare

    server = start_sandbox(resolve("agent/ucb1"))
    cap = 0.004
    cfg = _cfg(
        tmp_path,
        env={"horizon": 20},
        policy={"spec": "openai/gpt-4o-mini", "base_url": server.base_url, "concurrency": 4},
        budget={"max_usd": cap},
    )
    out = tmp_path / "rollout"
    for _ in range(4):
        with pytest.raises(BudgetError):
            rollout_and_compare(cfg, out_dir=out, scenarios=8, rollouts=2)
    state = server.state
    billed = PriceTable().inference_cost(
        "gpt-4o-mini", prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens
    )
    assert 0.5 * cap < billed <= cap
    ledger = Ledger(ledger_path(out))
    assert ledger.paid() == state.completions
    assert ledger.total_usd() == pytest.approx(billed)


def test_the_budget_stop_shows_the_cap_exactly_and_counts_the_ledgers_requests(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    """A $0.0005 cap is shown as $0.0005 (not 0.00), and "spent on N requests" is what the
    sandbox served over every invocation, not what the last guard saw answered."""
    from rmft_api.errors import BudgetError
    from rmft_api.rollout_report import rollout_and_compare

    server = start_sandbox(resolve("agent/ucb1"))
    cfg = _cfg(
        tmp_path,
        env={"horizon": 20},
        policy={"spec": "openai/gpt-4o-mini", "base_url": server.base_url, "concurrency": 4},
        budget={"max_usd": 0.0005},
    )
    out = tmp_path / "rollout"
    for _ in range(2):  # the first stop, then a resume that is refused at once
        with pytest.raises(BudgetError) as stop:
            rollout_and_compare(cfg, out_dir=out, scenarios=8, rollouts=2)
        message = str(stop.value)
        assert "budget.max_usd = $0.0005 " in message
        served = server.state.requests["/v1/chat/completions"]
        assert served > 1 and f"on {served} requests" in message
        assert "0.00 " not in message


def test_the_ledger_counts_failed_and_unsettled_requests_and_survives_a_torn_line(
    tmp_path: Path,
) -> None:
    from rmft_api.ledger import Ledger

    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.settle(ledger.open(estimate_usd=0.5, tokens=100), 0.25)  # answered: its cost
    ledger.settle(ledger.open(estimate_usd=0.5, tokens=100), None)  # failed: its estimate
    ledger.open(estimate_usd=0.125, tokens=10)  # sent, never settled (a kill): its estimate
    ledger.close()
    with path.open("ab") as f:
        f.write(b'{"id":"torn","kind":"requ')  # a kill mid-write
    again = Ledger(path)
    assert again.total_usd() == pytest.approx(0.875) and again.paid() == 1
    again.settle(again.open(estimate_usd=0.0, tokens=1), 0.125)  # the torn tail is cut first
    again.close()
    assert Ledger(path).total_usd() == pytest.approx(1.0)


def test_a_run_from_before_the_ledger_carries_its_spending_into_it(tmp_path: Path) -> None:
    from rmft_api.envs.scenarios import build_scenarios
    from rmft_api.pipeline import Pipeline
    from rmft_api.rollout import run_rollouts
    from rmft_api.store import RunPaths

    cfg = _cfg(tmp_path)
    run = RunPaths(tmp_path / "run")
    episodes = run.iteration(0).episodes
    drawn = build_scenarios(cfg, split="train", count=2)
    asyncio.run(
        run_rollouts(
            resolve("agent/ucb1"), drawn, cfg=cfg, iteration=0, rollouts_per_scenario=2,
            out=episodes, sampling=SAMPLING,
        )
    )  # fmt: skip
    priced = [
        e.model_copy(update={"usage": e.usage.model_copy(update={"cost_usd": 0.25})})
        for e in read_episodes(episodes)
    ]
    episodes.write_text("".join(e.model_dump_json() + "\n" for e in priced))
    pipeline = Pipeline(cfg, run)
    assert pipeline.ledger().total_usd() == pytest.approx(1.0)
    pipeline.ledger().close()
    assert Pipeline(cfg, run).ledger().total_usd() == pytest.approx(1.0)  # carried once


# ---------------------------------------------------------------- item 3: prices


def test_a_capped_run_with_an_unpriced_model_is_refused_until_prices_gives_one(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    from rmft_api.errors import ConfigError
    from rmft_api.rollout_report import rollout_and_compare

    server = start_sandbox(resolve("agent/ucb1"))
    policy = {"spec": "openai/my-model", "base_url": server.base_url, "concurrency": 4}
    capped = _cfg(tmp_path, policy=policy, budget={"max_usd": 1.0})
    with pytest.raises(ConfigError, match=r"'my-model' has no price.*\[prices\.\"my-model\"\]"):
        rollout_and_compare(capped, out_dir=tmp_path / "a", scenarios=2, rollouts=1)
    assert server.state.completions == 0  # refused before anything was paid
    priced = _cfg(
        tmp_path,
        policy=policy,
        budget={"max_usd": 1.0},
        prices={"my-model": {"input_per_m": 1.0, "output_per_m": 2.0, "training_per_m": 3.0}},
    )
    report = rollout_and_compare(priced, out_dir=tmp_path / "b", scenarios=2, rollouts=1)
    state = server.state
    expected = (state.prompt_tokens * 1.0 + state.completion_tokens * 2.0) / 1e6
    assert report.summary.usage.cost_usd == pytest.approx(expected) and expected > 0


def test_training_an_unpriced_model_under_a_cap_is_refused(tmp_path: Path) -> None:
    from rmft_api.costs import check_prices
    from rmft_api.errors import ConfigError

    together = {"kind": "together", "model": "meta-llama/Llama-3-8b"}
    cfg = _cfg(tmp_path, trainer=together, budget={"max_usd": 5.0})
    with pytest.raises(ConfigError, match=r"Llama-3-8b' has no price.*training_per_m"):
        check_prices(cfg, policy="agent/ucb1")
    priced = _cfg(
        tmp_path,
        trainer=together,
        budget={"max_usd": 5.0},
        prices={"meta-llama/Llama-3-8b": {"input_per_m": 0.2, "output_per_m": 0.2,
                                          "training_per_m": 0.5}},
    )  # fmt: skip
    check_prices(priced, policy="agent/ucb1")
    # A fine-tuned OpenAI model is priced as its base; an Azure deployment by its name.
    openai_cfg = _cfg(tmp_path, budget={"max_usd": 5.0})
    check_prices(openai_cfg, policy="openai/ft:gpt-4o-mini-2024-07-18:org:rmft:abc123")
    check_prices(openai_cfg, policy="azure/gpt-4o-mini")
    with pytest.raises(ConfigError, match="'my-deployment' has no price"):
        check_prices(openai_cfg, policy="azure/my-deployment")


def test_billed_training_is_priced_by_the_base_model_and_the_config(tmp_path: Path) -> None:
    from rmft_api.providers.pricing import ModelPrice
    from rmft_api.run_state import training_spent_usd
    from rmft_api.schema import JobRef
    from rmft_api.store import RunPaths

    run = RunPaths(tmp_path / "run")
    for i, (backend, base) in enumerate(
        [("openai", "openai/ft:gpt-4o-mini:org:rmft:x1"), ("together", "openai/my-model")]
    ):
        run.iteration(i).root.mkdir(parents=True)
        ref = JobRef.model_validate(
            {"backend": backend, "job_id": f"j{i}", "status": "succeeded", "base_policy": base,
             "iteration": i, "trained_tokens": 1_000_000, "train_file": "train.jsonl"}
        )  # fmt: skip
        write_json_atomic(run.iteration(i).job, ref)
    assert training_spent_usd(run) == pytest.approx(3.0)  # gpt-4o-mini's training rate
    mine = {"my-model": ModelPrice(input_per_m=1, output_per_m=1, training_per_m=0.5)}
    assert training_spent_usd(run, mine) == pytest.approx(3.5)


# ---------------------------------------------------------------- low: rate-limit headers


def test_garbage_rate_limit_headers_are_ignored_not_fatal(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    garbage = {
        "retry-after-ms": "inf",
        "x-ratelimit-remaining-requests": "inf",
        "x-ratelimit-limit-requests": "nan",
        "x-ratelimit-reset-requests": "inf",
        "x-ratelimit-remaining-tokens": "-inf",
        "x-ratelimit-reset-tokens": "nan",
    }
    plan = FaultPlan(rules=[FaultRule(fault="rate_limit", at=[2, 5], headers=garbage)])
    server = start_sandbox(resolve("agent/ucb1"), faults=plan)
    metrics = _evaluate(_client(server), _cfg(tmp_path), tmp_path / "eval" / "episodes.jsonl")
    assert metrics.complete == 12 and server.state.faults.injected["rate_limit"] == 2


def test_a_daily_rate_limit_stops_cleanly_and_the_run_resumes(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    from rmft_api.errors import DailyLimitError

    plan = FaultPlan(rules=[FaultRule(fault="rate_limit", at=[30], retry_after_s=5 * 3600)])
    server = start_sandbox(resolve("agent/ucb1"), faults=plan)
    cfg = _cfg(tmp_path)
    out = tmp_path / "eval" / "episodes.jsonl"
    with pytest.raises(DailyLimitError, match=r"daily rate limit .* resets in 5.0 h"):
        _evaluate(_client(server), cfg, out)
    assert not any(e.status == "error" for e in read_episodes(out))  # no error episodes
    assert _evaluate(_client(server), cfg, out).complete == 12
    assert server.state.completions == _turns(out)
