"""The rollout engine: exact episode sets, resume, error / fatal / budget / abort stops, the
response cache, and the acceptance tests: transient faults and a SIGKILL halfway change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from rmft_api.config import Config, config_from_dict
from rmft_api.envs.scenarios import build_scenarios
from rmft_api.errors import BudgetError, ParseAbortError, QuotaExhaustedError
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.providers.openai import OpenAIProvider
from rmft_api.providers.registry import resolve
from rmft_api.rollout import episode_id, read_episodes, run_rollouts
from rmft_api.rollout_cache import ResponseCache
from rmft_api.rollout_progress import RolloutProgress, RolloutSummary
from rmft_api.sandbox.faults import FaultPlan, FaultRule
from rmft_api.schema import Completion, Episode, Message
from rmft_api.store import read_jsonl

SAMPLING = SamplingParams(temperature=0, max_tokens=64)


def make_cfg(horizon: int = 5, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {"env": {"kind": "mab", "num_arms": 4, "horizon": horizon}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def rollout(
    provider: Provider,
    cfg: Config,
    out: Path,
    *,
    scenarios: int,
    rollouts: int,
    **kw: Any,
) -> RolloutSummary:
    drawn = build_scenarios(cfg, split="train", count=scenarios)
    return asyncio.run(
        run_rollouts(
            provider,
            drawn,
            cfg=cfg,
            iteration=0,
            rollouts_per_scenario=rollouts,
            out=out,
            sampling=SAMPLING,
            **kw,
        )
    )


def sandbox_client(server: Any, **kw: Any) -> OpenAIProvider:
    options: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw}
    return OpenAIProvider("sandbox", base_url=server.base_url, **options)


class ChatOnly:
    """Drops request ids, as an HTTP hop does: the wrapped policy then sees the chat alone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.batch_size = inner.batch_size

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        replies: list[Completion] = await self.inner.generate(chats, sampling)
        return replies

    async def aclose(self) -> None:
        await self.inner.aclose()


def regrets(path: Path) -> dict[str, float]:
    return {e.episode_id: e.regret for e in read_episodes(path) if e.status == "complete"}


# ---------------------------------------------------------------- exact sets and resume


def test_scripted_rollout_writes_exactly_m_times_l_episodes(tmp_path: Path) -> None:
    cfg = make_cfg()
    out = tmp_path / "episodes.jsonl"
    seen: list[RolloutProgress] = []
    summary = rollout(
        resolve("scripted/cycle"), cfg, out, scenarios=3, rollouts=2, progress=seen.append
    )
    lines = read_jsonl(out, Episode)
    expected = {episode_id(0, f"train-{i:04d}", r) for i in range(3) for r in range(2)}
    assert [e.episode_id for e in lines] == sorted(expected)  # scenario-major order
    assert all(e.status == "complete" and len(e.steps) == 5 for e in lines)
    assert all(e.policy_spec == "scripted/cycle" for e in lines)
    assert (summary.written, summary.complete, summary.requests) == (6, 6, 30)
    assert summary.mean_regret == pytest.approx(sum(e.regret for e in lines) / 6)
    assert seen[-1].episodes_done == seen[-1].episodes_total == 6


def test_resume_skips_finished_episodes_and_a_torn_line(tmp_path: Path) -> None:
    cfg = make_cfg()
    out = tmp_path / "episodes.jsonl"
    rollout(resolve("scripted/random"), cfg, out, scenarios=3, rollouts=2)
    first = out.read_bytes().split(b"\n")
    # A kill mid-write: two whole records and half of the third.
    out.write_bytes(b"\n".join(first[:2]) + b"\n" + first[2][: len(first[2]) // 2])
    provider = resolve("scripted/random")
    summary = rollout(provider, cfg, out, scenarios=3, rollouts=2)
    assert summary.skipped == 2 and summary.written == 4
    assert provider.requests == 4 * 5  # type: ignore[attr-defined]
    lines = out.read_bytes().split(b"\n")
    assert lines[:2] == first[:2] and len(read_jsonl(out, Episode)) == 6
    # Seeds are per (scenario, rollout): the replayed episodes equal the lost ones.
    assert [json.loads(x)["steps"] for x in lines[2:6]] == [
        json.loads(x)["steps"] for x in first[2:6]
    ]


def test_a_finished_file_of_another_policy_is_refused(tmp_path: Path) -> None:
    cfg = make_cfg()
    out = tmp_path / "episodes.jsonl"
    rollout(resolve("scripted/first"), cfg, out, scenarios=1, rollouts=1)
    with pytest.raises(Exception, match="of policy 'scripted/first'"):
        rollout(resolve("scripted/cycle"), cfg, out, scenarios=1, rollouts=1)


# ---------------------------------------------------------------- stops


def test_error_episodes_are_written_and_played_again_on_resume(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    plan = FaultPlan(rules=[FaultRule(fault="server_error", at=[3, 8])])
    server = start_sandbox(resolve("agent/greedy"), faults=plan)
    cfg = make_cfg()
    out = tmp_path / "episodes.jsonl"
    first = rollout(sandbox_client(server, max_retries=0), cfg, out, scenarios=2, rollouts=2)
    assert first.errors == 2 and first.complete == 2
    errors = [e for e in read_jsonl(out, Episode) if e.status == "error"]
    assert len(errors) == 2 and all("500" in (e.error or "") for e in errors)
    again = rollout(sandbox_client(server, max_retries=0), cfg, out, scenarios=2, rollouts=2)
    assert again.skipped == 2 and again.written == 2 and again.complete == 4
    assert len(read_jsonl(out, Episode)) == 6  # the error records stay, superseded
    assert sorted(regrets(out)) == sorted(
        episode_id(0, f"train-{i:04d}", r) for i in (0, 1) for r in (0, 1)
    )


def test_quota_exhausted_stops_after_finished_work_is_on_disk(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    plan = FaultPlan(rules=[FaultRule(fault="insufficient_quota", at=[12])])
    server = start_sandbox(resolve("agent/greedy"), faults=plan)
    cfg = make_cfg(horizon=5)
    out = tmp_path / "episodes.jsonl"
    with pytest.raises(QuotaExhaustedError, match="quota"):
        rollout(sandbox_client(server), cfg, out, scenarios=3, rollouts=1, live_episodes=1)
    assert [e.status for e in read_jsonl(out, Episode)] == ["complete", "complete"]
    summary = rollout(sandbox_client(server), cfg, out, scenarios=3, rollouts=1)
    assert summary.skipped == 2 and summary.complete == 3


def test_budget_cap_stops_before_passing_it_and_the_cache_replays_paid_turns(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    server = start_sandbox(resolve("agent/ucb1"))
    cfg = make_cfg(horizon=20)
    out = tmp_path / "episodes.jsonl"
    cache = ResponseCache(tmp_path / "responses.jsonl")
    priced = {"model": "gpt-4o-mini"}
    client = OpenAIProvider(priced["model"], base_url=server.base_url, concurrency=4)
    with pytest.raises(BudgetError, match=r"budget.max_usd = \$0.01"):
        rollout(client, cfg, out, scenarios=4, rollouts=2, cache=cache, budget_usd=0.01)
    spent = client.stats.cost_usd
    assert 0.008 < spent <= 0.01  # close to the cap, never over it
    paid_turns = len(cache)
    assert paid_turns == server.state.completions
    cache.close()
    # Resume without a cap: turns already paid for come from the cache, free.
    cache = ResponseCache(tmp_path / "responses.jsonl")
    again = OpenAIProvider(priced["model"], base_url=server.base_url, concurrency=4)
    summary = rollout(again, cfg, out, scenarios=4, rollouts=2, cache=cache)
    cache.close()
    assert summary.complete == 8
    turns = sum(len(s.attempts) for e in read_episodes(out) for s in e.steps)
    assert server.state.completions == turns  # not one request repeated
    assert summary.cached_requests == paid_turns - sum(
        len(s.attempts) for e in read_jsonl(out, Episode)[: summary.skipped] for s in e.steps
    )


def test_parse_abort_stops_the_run_with_the_episode_marked(tmp_path: Path) -> None:
    cfg = make_cfg(parse={"fallback": "abort", "max_reprompts": 0})
    out = tmp_path / "episodes.jsonl"
    with pytest.raises(ParseAbortError, match="no valid answer"):
        rollout(resolve("scripted/garbage"), cfg, out, scenarios=2, rollouts=1)
    written = read_jsonl(out, Episode)
    assert written and all(e.status == "aborted" for e in written)


# ---------------------------------------------------------------- acceptance: faults and kills


def test_transient_faults_change_nothing(tmp_path: Path, start_sandbox: Callable[..., Any]) -> None:
    """512 episodes, ~10% of requests failing transiently: all complete, none duplicated, none
    lost, and every episode's regret equals a fault-free run of the same deterministic policy."""
    plan = FaultPlan(
        seed=3,
        rules=[
            FaultRule(fault="server_error", rate=0.04),
            FaultRule(fault="rate_limit", rate=0.03, retry_after_s=0.0),
            FaultRule(fault="disconnect", rate=0.02),
            FaultRule(fault="malformed", rate=0.01),
        ],
    )
    server = start_sandbox(resolve("agent/ucb1"), faults=plan)
    cfg = make_cfg(horizon=3)
    faulty = tmp_path / "faulty.jsonl"
    client = sandbox_client(server, concurrency=64, max_retries=10)
    summary = rollout(client, cfg, faulty, scenarios=128, rollouts=4)
    injected = sum(server.state.faults.injected.values())
    assert injected > 0.07 * summary.requests and client.stats.retries == injected
    records = read_jsonl(faulty, Episode)
    assert len(records) == 512 and len({e.episode_id for e in records}) == 512
    assert all(e.status == "complete" for e in records)

    clean = tmp_path / "clean.jsonl"
    rollout(ChatOnly(resolve("agent/ucb1")), cfg, clean, scenarios=128, rollouts=4)
    assert regrets(faulty) == regrets(clean)


def test_sigkill_halfway_then_resume_gives_the_full_set_without_repeating_answered_turns(
    tmp_path: Path, start_sandbox: Callable[..., Any]
) -> None:
    server = start_sandbox(resolve("agent/ucb1"))
    out_dir = tmp_path / "run"
    # 8 episodes live at a time (2 × concurrency): at 60% of the turns, one wave is finished
    # and the next is midway.
    horizon, scenarios, rollouts, concurrency = 15, 12, 2, 4
    command = [
        sys.executable, "-m", "rmft_api.cli", "rollout",
        "--out", str(out_dir), "--policy", "openai/sandbox",
        "--scenarios", str(scenarios), "--rollouts", str(rollouts),
        "--set", f"env.horizon={horizon}", "--set", "env.num_arms=4",
        "--set", f'policy.base_url="{server.base_url}"',
        "--set", f"policy.concurrency={concurrency}", "--json",
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": ""}
    total_turns = horizon * scenarios * rollouts
    log = tmp_path / "first-run.log"
    with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while server.state.completions < total_turns * 6 // 10:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    served_before = server.state.completions
    finished_before = len(read_episodes(out_dir / "episodes.jsonl"))
    assert 0 < finished_before < scenarios * rollouts  # really halfway

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["summary"]["cached_requests"] > 0
    records = read_jsonl(out_dir / "episodes.jsonl", Episode)
    assert len(records) == len({e.episode_id for e in records}) == scenarios * rollouts
    assert all(e.status == "complete" for e in records)
    # Every answered turn was kept: only replies not yet cached at the kill (at most one per
    # live episode, 2 × concurrency) can have been asked for twice.
    assert served_before <= server.state.completions <= total_turns + 2 * concurrency
    assert report["policy"]["scenarios"] == scenarios and "ucb1" in report["baselines"]

    clean = tmp_path / "clean.jsonl"
    cfg = make_cfg(horizon=horizon)
    rollout(ChatOnly(resolve("agent/ucb1")), cfg, clean, scenarios=scenarios, rollouts=rollouts)
    assert regrets(out_dir / "episodes.jsonl") == regrets(clean)


# ---------------------------------------------------------------- local models: lock-step


def test_local_model_rollout_runs_lock_step(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from rmft_api.models.tiny import build_tiny_lm
    from rmft_api.providers.hf import HFProvider

    model = build_tiny_lm(tmp_path / "tiny", seed=0)
    provider = HFProvider("hf/tiny", model_path=model, batch_size=16, device="cpu")
    cfg = make_cfg(horizon=3, parse={"max_reprompts": 1})
    summary = rollout(provider, cfg, tmp_path / "e.jsonl", scenarios=3, rollouts=2)
    assert summary.complete == 6
    # All six episodes advance together: one generate per attempt round, never one per episode.
    attempts = {len(s.attempts) for e in read_episodes(tmp_path / "e.jsonl") for s in e.steps}
    assert provider.batches <= 3 * max(attempts)
    assert summary.usage.prompt_tokens > 0 and summary.usage.completion_tokens > 0


@pytest.mark.slow
def test_openai_provider_plays_episodes_against_transformers_serve(tmp_path: Path) -> None:
    """`transformers serve` (needs FastAPI: `pip install "transformers[serving]"`) hosting a
    tiny local model, offline, as the OpenAI-compatible endpoint of a rollout."""
    pytest.importorskip("fastapi")
    import socket

    import httpx

    from rmft_api.models.tiny import build_tiny_lm

    model = build_tiny_lm(tmp_path / "tiny", seed=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [str(cli), "serve", "--port", str(port), "--device", "cpu", str(model)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.5)
        client = OpenAIProvider(str(model), base_url=f"http://127.0.0.1:{port}/v1", concurrency=2)
        summary = rollout(
            client, make_cfg(horizon=2), tmp_path / "e.jsonl", scenarios=2, rollouts=1
        )
        assert summary.complete == 2 and summary.errors == 0
        assert summary.usage.prompt_tokens > 0 and summary.usage.completion_tokens > 0
    finally:
        proc.terminate()
        proc.wait(30)
