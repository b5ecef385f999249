"""The OpenAI provider's hot path: sharded connection pools, the raw JSON request/response codec,
and the rollout's collector setting; real HTTP against the loopback sandbox."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from rmft_api.config import config_from_dict
from rmft_api.envs.scenarios import build_scenarios
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.http_pool import ShardedTransport
from rmft_api.providers.openai import OpenAIProvider
from rmft_api.providers.openai_wire import completion_from_json, request_body
from rmft_api.rollout import run_rollouts
from rmft_api.schema import Completion, Message


class Echo:
    """Sandbox backing answering every chat with its last message."""

    spec = "test/echo"

    async def generate(
        self, chats: Any, sampling: SamplingParams, *, request_ids: Any = None
    ) -> list[Completion]:
        return [Completion(text=f"echo: {c[-1].content}", finish_reason="stop") for c in chats]

    async def aclose(self) -> None:
        return None


def test_requests_spread_over_pools_and_are_released(start_sandbox: Callable[..., Any]) -> None:
    url = start_sandbox(Echo(), latency_ms=300).base_url
    transport = ShardedTransport(connections=20, shard_size=8)  # 3 pools of at most 7
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    seen: list[list[int]] = []

    async def go() -> list[int]:
        async with httpx2.AsyncClient(transport=transport, timeout=10) as client:

            async def one() -> int:
                response = await client.post(
                    f"{url}/chat/completions",
                    content=body,
                    headers={"authorization": "Bearer x", "content-type": "application/json"},
                )
                return response.status_code

            tasks = [asyncio.ensure_future(one()) for _ in range(20)]
            await asyncio.sleep(0.15)  # all 20 are waiting for the server's 300 ms
            seen.append(transport.in_flight)
            return list(await asyncio.gather(*tasks))

    codes = asyncio.run(go())
    assert codes == [200] * 20
    [during] = seen
    assert len(during) == 3 and sum(during) == 20 and max(during) <= 7
    assert transport.in_flight == [0, 0, 0]  # every reply read and closed gives its slot back


def test_provider_runs_many_concurrent_requests(
    start_sandbox: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    url = start_sandbox(Echo(), latency_ms=50).base_url
    provider = OpenAIProvider("gpt-4o-mini", base_url=url, concurrency=40, timeout_s=10)
    chats = [
        [Message(role="system", content="x" * 400), Message(role="user", content=f"q{i} é ✓")]
        for i in range(120)
    ]

    async def go() -> list[Any]:
        try:
            return await provider.generate(chats, SamplingParams(temperature=0, max_tokens=8))
        finally:
            await provider.aclose()

    replies = asyncio.run(go())
    assert [r.text for r in replies] == [f"echo: q{i} é ✓" for i in range(120)]
    assert all(r.error is None and r.usage.prompt_tokens > 100 for r in replies)
    stats = provider.stats
    assert stats.succeeded == 120 and stats.attempts == 120 and stats.in_flight == 0


def test_request_body_is_what_the_sdk_would_send() -> None:
    from openai._utils import maybe_transform
    from openai._utils._json import openapi_dumps
    from openai.types.chat import completion_create_params

    chat = [Message(role="system", content="Regeln: «wähle» ✓"), Message(role="user", content="A?")]
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=32, seed=3, stop=["\n\n"])
    ours = request_body("gpt-4o-mini", chat, sampling, max_tokens_param="max_tokens")
    sdk = openapi_dumps(
        maybe_transform(
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": m.role, "content": m.content} for m in chat],
                "temperature": 0.7,
                "top_p": 0.9,
                "max_tokens": 32,
                "seed": 3,
                "stop": ["\n\n"],
            },
            completion_create_params.CompletionCreateParamsNonStreaming,
        )
    )
    assert json.loads(ours) == json.loads(sdk)
    assert "wähle".encode() in ours  # UTF-8, not \u escapes, as the SDK sends it
    plain = json.loads(request_body("m", chat, SamplingParams(temperature=0, max_tokens=5)))
    assert plain["max_completion_tokens"] == 5 and "seed" not in plain and "stop" not in plain


def test_completion_from_json_reads_usage_and_rejects_other_bodies() -> None:
    body = {
        "choices": [
            {"message": {"role": "assistant", "content": "ANSWER: A"}, "finish_reason": "length"}
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    c = completion_from_json(body)
    assert (c.text, c.finish_reason) == ("ANSWER: A", "length")
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.reasoning_tokens) == (
        12,
        3,
        2,
    )
    no_usage = completion_from_json({"choices": [{"message": {"content": "x" * 10}}]})
    assert no_usage.usage.completion_tokens == 3 and no_usage.finish_reason is None
    bodies: list[object] = [
        [],
        {"choices": []},
        {"choices": "no"},
        {"choices": [{"message": {"content": 5}}]},
    ]
    for bad in bodies:
        with pytest.raises((ValueError, TypeError, KeyError, IndexError)):
            completion_from_json(bad)


def test_rollout_restores_the_collector_thresholds(tmp_path: Path) -> None:
    from rmft_api.providers.registry import resolve

    cfg = config_from_dict({"env": {"kind": "mab", "num_arms": 3, "horizon": 4}})
    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []

    class Watching:
        """A fan-out provider (no batch_size) recording the thresholds while the rollout runs."""

        spec = "scripted/cycle"

        def __init__(self) -> None:
            self.inner = resolve("scripted/cycle")

        async def generate(self, chats: Any, sampling: Any, *, request_ids: Any = None) -> Any:
            seen.append(gc.get_threshold())
            return await self.inner.generate(chats, sampling, request_ids=request_ids)

        async def aclose(self) -> None:
            return None

    summary = asyncio.run(
        run_rollouts(
            Watching(),
            build_scenarios(cfg, split="train", count=2),
            cfg=cfg,
            iteration=0,
            rollouts_per_scenario=1,
            out=tmp_path / "episodes.jsonl",
            sampling=SamplingParams(temperature=0, max_tokens=16),
        )
    )
    assert summary.complete == 2
    assert seen and all(t[0] == before[0] * 10 and t[1:] == before[1:] for t in seen)
    assert gc.get_threshold() == before
