"""The loopback sandbox over plain HTTP: response shapes, real rate limits, injected faults."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from rmft_api.errors import ConfigError, TransientProviderError
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.retry import parse_duration
from rmft_api.sandbox.faults import FaultInjector, FaultPlan, FaultRule, load_fault_plan
from rmft_api.sandbox.ratelimit import ServerRateLimiter, format_duration
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings, check_loopback
from rmft_api.schema import Completion, Message, Usage

AUTH = {"Authorization": "Bearer sk-anything"}


class FixedProvider:
    """Backing that answers every chat with one text (and optionally its own token counts)."""

    spec = "test/fixed"

    def __init__(self, text: str = "Answer: B", usage: Usage | None = None) -> None:
        self.text = text
        self.usage = usage or Usage()
        self.seen: list[SamplingParams] = []

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        self.seen.append(sampling)
        return [Completion(text=self.text, finish_reason="stop", usage=self.usage) for _ in chats]

    async def aclose(self) -> None:
        return None


def body(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def post(server: SandboxServer, payload: Any = None, **kwargs: Any) -> httpx.Response:
    kwargs = {"headers": AUTH, "timeout": 5.0, **kwargs}
    url = f"{server.base_url}/chat/completions"
    return httpx.post(url, json=body() if payload is None else payload, **kwargs)


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Any]) -> Callable[..., SandboxServer]:
    def start(backing: Any = None, **settings: Any) -> SandboxServer:
        server: SandboxServer = start_sandbox(backing or FixedProvider(), **settings)
        return server

    return start


def test_chat_completion_shape_and_usage(sandbox: Callable[..., SandboxServer]) -> None:
    backing = FixedProvider()
    server = sandbox(backing)
    r = post(server, body(max_tokens=7, temperature=0.5, seed=3, stop="END"))
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "m"
    assert data["id"].startswith("chatcmpl-") and isinstance(data["created"], int)
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "Answer: B"}
    usage = data["usage"]
    # "hello there" = 11 chars → 3 tokens, + 3 per message + 3 priming; "Answer: B" → 3.
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (9, 3, 12)
    assert backing.seen[0] == SamplingParams(temperature=0.5, max_tokens=7, seed=3, stop=["END"])
    assert "x-ratelimit-limit-requests" not in r.headers  # no limits set: no headers, like vLLM


def test_backing_usage_wins_and_max_tokens_truncates(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(FixedProvider(usage=Usage(prompt_tokens=40, completion_tokens=2)))
    assert post(server).json()["usage"]["prompt_tokens"] == 40
    long = sandbox(FixedProvider(text="x" * 400))
    data = post(long, body(max_completion_tokens=5)).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 5
    assert len(data["choices"][0]["message"]["content"]) == 20


def test_models_health_auth_and_bad_requests(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(models=["a", "b"])
    models = httpx.get(f"{server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    assert httpx.get(f"{server.root_url}/health").json() == {"status": "ok"}
    assert post(server, body(), headers={}).status_code == 401
    missing = post(server, body())  # model "m" is not served
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = post(server, {"model": "a", "messages": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert post(server, {"model": "a", "messages": [{"role": "robot", "content": "x"}]}).is_error


def test_real_rate_limit_429_with_headers(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(rpm=2, window_s=10.0)
    first, second, third = (post(server) for _ in range(3))
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    # Refill is 2 per 10 s: the bucket is full again in ~10 s, one request fits in ~5 s.
    reset = parse_duration(second.headers["x-ratelimit-reset-requests"])
    assert reset is not None and 9.0 < reset <= 10.0
    assert third.status_code == 429
    error = third.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert 4000 < int(third.headers["retry-after-ms"]) <= 5000
    assert third.headers["retry-after"] == "5"
    assert server.state.rate_limited == 1 and server.state.responses[429] == 1


def test_token_limit_and_request_too_large(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(tpm=100, window_s=60.0)
    ok = post(server, body("x" * 200, max_tokens=10))  # 50 + 10 tokens
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-tokens"] == "40"
    limited = post(server, body("x" * 200, max_tokens=10))
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "tokens"
    too_large = post(server, body("x" * 1000, max_tokens=10))
    assert too_large.status_code == 429
    assert "Request too large" in too_large.json()["error"]["message"]
    assert server.state.too_large == 1


def test_scripted_faults_shapes(sandbox: Callable[..., SandboxServer]) -> None:
    rules = [
        FaultRule(fault="insufficient_quota", at=[1]),
        FaultRule(fault="server_error", at=[2]),
        FaultRule(fault="unavailable", at=[3], retry_after_s=2),
        FaultRule(fault="malformed", at=[4]),
        FaultRule(fault="permission_denied", at=[5]),
    ]
    server = sandbox(faults=FaultPlan(rules=rules))
    quota, e500, e503, malformed, denied, fine = (post(server) for _ in range(6))
    assert quota.status_code == 429
    assert quota.json()["error"]["code"] == quota.json()["error"]["type"] == "insufficient_quota"
    assert set(quota.json()["error"]) == {"message", "type", "param", "code"}
    assert e500.status_code == 500 and e503.status_code == 503
    assert e503.headers["retry-after"] == "2"
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        malformed.json()
    assert denied.status_code == 403
    assert fine.status_code == 200
    stats = httpx.get(f"{server.root_url}/sandbox/stats").json()
    assert stats["faults"] == {
        "insufficient_quota": 1,
        "server_error": 1,
        "unavailable": 1,
        "malformed": 1,
        "permission_denied": 1,
    }
    assert stats["requests"]["/v1/chat/completions"] == 6 and stats["completions"] == 1


def test_disconnect_closes_without_a_response(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(faults=FaultPlan(rules=[FaultRule(fault="disconnect", at=[1])]))
    with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
        post(server)
    assert post(server).status_code == 200
    assert server.state.dropped == 1 and sum(server.state.responses.values()) == 1


def test_slow_fault_outlasts_a_client_timeout(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(faults=FaultPlan(rules=[FaultRule(fault="slow", at=[1], delay_s=5.0)]))
    with pytest.raises(httpx.ReadTimeout):
        post(server, timeout=0.3)
    assert post(server).status_code == 200


def test_fault_rules_every_times_and_seeded_rate() -> None:
    plan = FaultPlan(
        seed=7,
        rules=[
            FaultRule(fault="server_error", every=3, times=2),
            FaultRule(fault="malformed", rate=0.25),
        ],
    )
    first = FaultInjector(plan)
    decisions = [first.decide("/v1/chat/completions")[1] for _ in range(400)]
    kinds = [d.fault if d else None for d in decisions]
    assert kinds[2] == kinds[5] == "server_error" and kinds.count("server_error") == 2
    assert 70 <= kinds.count("malformed") <= 130  # 0.25 × ~398, seeded
    again = FaultInjector(plan)
    assert [
        d.fault if d else None
        for d in (again.decide("/v1/chat/completions")[1] for _ in range(400))
    ] == kinds
    assert FaultInjector(plan).decide("/v1/models") == (1, None)  # other paths untouched


def test_fault_plan_files(tmp_path: Path) -> None:
    toml_file = tmp_path / "faults.toml"
    toml_file.write_text('seed = 3\n[[rules]]\nfault = "rate_limit"\nat = [1, 2]\n')
    plan = load_fault_plan(toml_file)
    assert plan.seed == 3 and plan.rules[0].at == [1, 2]
    json_file = tmp_path / "faults.json"
    json_file.write_text(json.dumps([{"fault": "disconnect", "every": 4}]))
    assert load_fault_plan(json_file).rules[0].every == 4
    json_file.write_text(json.dumps([{"fault": "explode"}]))
    with pytest.raises(ConfigError, match="not a valid fault plan"):
        load_fault_plan(json_file)
    with pytest.raises(ConfigError, match="not found"):
        load_fault_plan(tmp_path / "missing.toml")


def test_loopback_only() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        check_loopback(host)
    for host in ("0.0.0.0", "10.1.2.3", "example.com", "::"):
        with pytest.raises(ConfigError, match="not a loopback"):
            check_loopback(host)
    with pytest.raises(ConfigError):
        SandboxServer(SandboxSettings(host="0.0.0.0"), FixedProvider())


def test_cli_refuses_public_host() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", "sandbox", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "not a loopback address" in out.stderr


def test_durations_round_trip() -> None:
    for seconds in (0.12, 1.0, 17.6, 360.0, 3723.5):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-3)
    assert format_duration(360.0) == "6m0s" and format_duration(0.02) == "20ms"
    clock = [0.0]
    limiter = ServerRateLimiter(rpm=2, tpm=None, window_s=1.0, clock=lambda: clock[0])
    assert limiter.admit(0).allowed and limiter.admit(0).allowed
    refused = limiter.admit(0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    clock[0] = 0.5
    assert limiter.admit(0).allowed


class BrokenProvider(FixedProvider):
    """Backing that fails: by raising `error`, or (error None) with an error completion."""

    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        if self.error is not None:
            raise self.error
        return [Completion(error="model crashed") for _ in chats]


def test_backing_failures_map_to_status_codes(sandbox: Callable[..., SandboxServer]) -> None:
    refused = post(sandbox(BrokenProvider(ConfigError("cannot read the chat"))))
    assert refused.status_code == 400 and "cannot read the chat" in refused.text
    busy = post(sandbox(BrokenProvider(TransientProviderError("overloaded"))))
    assert busy.status_code == 503
    crashed = post(sandbox(BrokenProvider(None)))
    assert crashed.status_code == 500 and "model crashed" in crashed.text


def test_shared_fixture_serves_the_scripted_backing(sandbox_url: str) -> None:
    models = httpx.get(f"{sandbox_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["scripted/cycle"]
