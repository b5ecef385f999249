"""OpenAIProvider with the real `openai` SDK over real HTTP against the loopback sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from rmft_api.errors import (
    ConfigError,
    FatalProviderError,
    QuotaExhaustedError,
    RequestTooLargeError,
)
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.limiter import RateLimiter
from rmft_api.providers.openai import OpenAIProvider
from rmft_api.providers.pricing import ModelPrice, PriceTable
from rmft_api.providers.retry import parse_duration, refill_wait_s, server_wait_s
from rmft_api.sandbox.faults import FaultPlan, FaultRule
from rmft_api.schema import Completion, Message

KEY = "sk-test-0123456789abcdef"
SAMPLING = SamplingParams(temperature=0.0, max_tokens=16)


class EchoProvider:
    """Backing for the sandbox: replies "echo: <last message>" (or a fixed text)."""

    spec = "test/echo"

    def __init__(self, reply: str | None = None) -> None:
        self.reply = reply

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        return [
            Completion(text=self.reply or f"echo: {chat[-1].content}", finish_reason="stop")
            for chat in chats
        ]

    async def aclose(self) -> None:
        return None


def chats(n: int, text: str = "pick an arm") -> list[list[Message]]:
    return [[Message(role="user", content=f"{text} #{i}")] for i in range(n)]


def faults(*rules: FaultRule) -> FaultPlan:
    return FaultPlan(rules=list(rules))


def provider(url: str | list[str], *, model: str = "gpt-4o-mini", **kwargs: Any) -> OpenAIProvider:
    options: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
    options.update(kwargs)
    return OpenAIProvider(model, base_url=url, **options)


def run(p: OpenAIProvider, batch: list[list[Message]], sampling: SamplingParams = SAMPLING) -> Any:
    async def go() -> list[Completion]:
        try:
            return await p.generate(batch, sampling)
        finally:
            await p.aclose()

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Any]) -> Callable[..., Any]:
    def start(*, reply: str | None = None, **settings: Any) -> Any:
        return start_sandbox(EchoProvider(reply), **settings)

    return start


def test_success_usage_cost_and_stats(sandbox: Callable[..., Any]) -> None:
    server = sandbox()
    p = provider(server.base_url)
    out = run(p, chats(3))
    assert [c.text for c in out] == [f"echo: pick an arm #{i}" for i in range(3)]
    assert all(c.error is None and c.finish_reason == "stop" for c in out)
    u = out[0].usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.cost_usd == pytest.approx((u.prompt_tokens * 0.15 + u.completion_tokens * 0.60) / 1e6)
    s = p.stats
    assert (s.requests, s.succeeded, s.failed, s.retries, s.rate_limited) == (3, 3, 0, 0, 0)
    assert s.price_known and s.cost_usd == pytest.approx(sum(c.usage.cost_usd for c in out))
    assert all(c.latency_s > 0 for c in out)
    # The provider works again in a fresh event loop (its clients are per loop).
    assert run(p, chats(1))[0].text == "echo: pick an arm #0"


def test_truncation_counted(sandbox: Callable[..., Any]) -> None:
    server = sandbox(reply="word " * 100)
    p = provider(server.base_url)
    [c] = run(p, chats(1), SamplingParams(max_tokens=4))
    assert c.finish_reason == "length" and c.usage.completion_tokens == 4
    assert p.stats.truncated == 1


def test_429_retry_after_is_waited_for(sandbox: Callable[..., Any]) -> None:
    server = sandbox(faults=faults(FaultRule(fault="rate_limit", at=[1], retry_after_s=1.0)))
    p = provider(server.base_url)
    started = time.monotonic()
    [c] = run(p, chats(1))
    assert time.monotonic() - started >= 1.0
    assert c.error is None and c.text.startswith("echo:")
    assert (p.stats.rate_limited, p.stats.retries) == (1, 1)


def test_429_reset_header_is_waited_for(sandbox: Callable[..., Any]) -> None:
    # No Retry-After: only x-ratelimit-reset-requests says when (OpenAI's duration format).
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "600ms"}
    server = sandbox(faults=faults(FaultRule(fault="rate_limit", at=[1], headers=headers)))
    p = provider(server.base_url)
    started = time.monotonic()
    [c] = run(p, chats(1))
    assert time.monotonic() - started >= 0.6 and c.error is None


def test_insufficient_quota_stops_the_run(sandbox: Callable[..., Any]) -> None:
    server = sandbox(faults=faults(FaultRule(fault="insufficient_quota")))
    p = provider(server.base_url)
    with pytest.raises(QuotaExhaustedError, match=r"quota exhausted.*insufficient_quota") as info:
        run(p, chats(4))
    assert "resume" in str(info.value) and KEY not in str(info.value)
    assert p.stats.retries == 0


@pytest.mark.parametrize("fault", ["server_error", "unavailable", "malformed", "disconnect"])
def test_transient_faults_are_retried(sandbox: Callable[..., Any], fault: str) -> None:
    server = sandbox(faults=faults(FaultRule(fault=fault, at=[1, 2])))  # type: ignore[arg-type]
    p = provider(server.base_url)
    [c] = run(p, chats(1))
    assert c.error is None and c.text == "echo: pick an arm #0"
    assert p.stats.retries == 2 and p.stats.attempts == 3
    assert server.state.faults.injected[fault] == 2


def test_timeout_is_retried(sandbox: Callable[..., Any]) -> None:
    server = sandbox(faults=faults(FaultRule(fault="slow", at=[1], delay_s=10.0)))
    p = provider(server.base_url, timeout_s=0.5)
    started = time.monotonic()
    [c] = run(p, chats(1))
    assert c.error is None and 0.5 <= time.monotonic() - started < 5.0
    assert p.stats.retries == 1


def test_retries_exhausted_single_request(sandbox: Callable[..., Any]) -> None:
    server = sandbox(faults=faults(FaultRule(fault="server_error")))
    p = provider(server.base_url, max_retries=2)
    [c] = run(p, chats(1))
    assert c.error is not None and "500" in c.error and c.text == ""
    assert (p.stats.attempts, p.stats.failed, p.stats.retries) == (3, 1, 2)


@pytest.mark.parametrize("fault", ["request_too_large", "context_length"])
def test_request_too_large_fails_that_request_only(sandbox: Callable[..., Any], fault: str) -> None:
    server = sandbox(faults=faults(FaultRule(fault=fault, at=[2])))  # type: ignore[arg-type]
    p = provider(server.base_url)
    out = run(p, chats(3))
    errors = [c.error for c in out if c.error is not None]
    assert len(errors) == 1 and "too large" in errors[0].lower()
    assert server.state.requests["/v1/chat/completions"] == 3  # never retried
    assert p.stats.failed == 1 and p.stats.succeeded == 2


def test_request_over_the_server_tpm_is_too_large(sandbox: Callable[..., Any]) -> None:
    server = sandbox(tpm=200)
    p = provider(server.base_url)
    [big, small] = run(p, [[Message(role="user", content="x" * 2000)], chats(1)[0]])
    assert big.error is not None and "too large" in big.error.lower()
    assert small.error is None
    assert server.state.too_large == 1


def test_request_over_the_client_tpm_is_never_sent(sandbox: Callable[..., Any]) -> None:
    server = sandbox()
    p = provider(server.base_url, tpm=100)
    [c] = run(p, [[Message(role="user", content="x" * 2000)]])
    assert c.error is not None and "tpm=100" in c.error
    assert server.state.requests["/v1/chat/completions"] == 0
    with pytest.raises(RequestTooLargeError):
        RateLimiter(tpm=10).check_fits(11)


def test_auth_failure_is_fatal_and_key_is_scrubbed(sandbox: Callable[..., Any]) -> None:
    server = sandbox(faults=faults(FaultRule(fault="unauthorized")))
    p = provider(server.base_url)
    with pytest.raises(FatalProviderError, match="authentication failed") as info:
        run(p, chats(2))
    text = str(info.value)
    assert KEY not in text and "OPENAI_API_KEY" in text and "***" in text


def test_unknown_model_is_fatal(sandbox: Callable[..., Any]) -> None:
    server = sandbox(models=["served-model"])
    p = provider(server.base_url, model="not-served")
    with pytest.raises(FatalProviderError, match=r"not-served.*404"):
        run(p, chats(1))


def test_missing_key_for_openai_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIProvider("gpt-4o-mini")
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        OpenAIProvider("gpt-4o-mini", base_url="https://api.openai.com/v1", api_key_env="MY_KEY")
    # A local OpenAI-compatible server needs no key.
    OpenAIProvider("m", base_url="http://127.0.0.1:9/v1")


def test_server_remaining_zero_pauses_the_client(sandbox: Callable[..., Any]) -> None:
    # Server: 3 requests per 1 s bucket. Client: no limit of its own, one request at a time. The
    # `remaining-requests: 0` header must hold the client back, so no request is refused.
    server = sandbox(rpm=3, window_s=1.0)
    p = provider(server.base_url, concurrency=1)
    out = run(p, chats(6))
    assert all(c.error is None for c in out)
    assert server.state.rate_limited == 0 and p.stats.rate_limited == 0


def test_client_rpm_never_exceeded_in_any_window(sandbox: Callable[..., Any]) -> None:
    # rpm=5 per 1 s window (the limiter's window scaled down from 60 s): 15 requests need 3
    # windows. Checked on the server's arrival clock, with a margin for delivery jitter, after a
    # warm-up request (the first call's client set-up delays its arrival by up to ~0.2 s).
    server = sandbox()
    p = provider(server.base_url, rpm=5, window_s=1.0, concurrency=15)

    async def go() -> tuple[list[Completion], float]:
        await p.generate(chats(1), SAMPLING)
        await asyncio.sleep(1.0)
        server.state.chat_arrivals.clear()
        started = time.monotonic()
        out = await p.generate(chats(15), SAMPLING)
        await p.aclose()
        return out, time.monotonic() - started

    out, elapsed = asyncio.run(go())
    assert all(c.error is None for c in out)
    assert elapsed >= 2.0
    arrivals = np.array(server.state.chat_arrivals)
    assert len(arrivals) == 15
    in_window = [np.sum((arrivals >= t) & (arrivals < t + 0.9)) for t in arrivals]
    assert max(in_window) <= 5


def test_limiter_guarantee_with_a_fake_clock() -> None:
    now = [0.0]
    limiter = RateLimiter(rpm=7, tpm=500, window_s=10.0, clock=lambda: now[0])
    rng = np.random.default_rng(3)
    admitted: list[tuple[float, int]] = []
    for _ in range(3000):
        now[0] += float(rng.exponential(0.3))
        tokens = int(rng.integers(1, 120))
        if limiter.try_acquire(tokens):
            admitted.append((now[0], tokens))
    times = np.array([a for a, _ in admitted])
    toks = np.array([n for _, n in admitted])
    for t in times:
        window = (times >= t) & (times < t + 10.0)
        assert window.sum() <= 7 and toks[window].sum() <= 500
    assert len(admitted) > 0.8 * 7 * now[0] / 10.0  # and it does not starve
    limiter.pause_for(5.0)
    assert limiter.delay(1) >= 5.0


def test_replicas_share_the_load(sandbox: Callable[..., Any]) -> None:
    a, b = sandbox(latency_ms=50), sandbox(latency_ms=50)
    p = provider([a.base_url, b.base_url], concurrency=8)
    out = run(p, chats(8))
    assert all(c.error is None for c in out)
    served = [s.state.completions for s in (a, b)]
    assert sum(served) == 8 and min(served) >= 3


def test_retry_hints_are_parsed() -> None:
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("soon") is None
    assert server_wait_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert server_wait_s({"retry-after": "2"}) == 2.0
    assert server_wait_s({}, "Please try again in 1.5s.") == 1.5
    reset = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert server_wait_s(reset) == 360.0
    assert server_wait_s({**reset, "x-ratelimit-remaining-requests": "0"}) == 1.0
    assert server_wait_s({}) is None
    # 0 of 3 requests left, full in 1.5 s: one more request fits after 0.5 s.
    empty = {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0"}
    assert refill_wait_s({**empty, "x-ratelimit-reset-requests": "1.5s"}, tokens=1) == 0.5
    tokens = {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "100"}
    assert refill_wait_s({**tokens, "x-ratelimit-reset-tokens": "9s"}, tokens=400) == 3.0
    assert refill_wait_s({**tokens, "x-ratelimit-reset-tokens": "9s"}, tokens=50) == 0.0
    assert refill_wait_s({}, tokens=10**6) == 0.0


def test_price_table() -> None:
    table = PriceTable()
    assert table.rate("gpt-4o-mini-2024-07-18").input_per_m == 0.15
    ft = table.rate("ft:gpt-4o-mini-2024-07-18:org:rmft:abc123")
    assert (ft.input_per_m, ft.output_per_m, ft.fine_tuned) == (0.30, 1.20, True)
    assert table.training_cost("gpt-4o-mini", tokens=1_000_000, epochs=3) == pytest.approx(9.0)
    unknown = table.rate("llama-local")
    assert not unknown.known
    assert table.inference_cost("llama-local", prompt_tokens=9, completion_tokens=9) == 0
    custom = PriceTable({"llama-local": ModelPrice(input_per_m=1.0, output_per_m=2.0)})
    assert custom.inference_cost("llama-local", prompt_tokens=10**6, completion_tokens=10**6) == 3.0
