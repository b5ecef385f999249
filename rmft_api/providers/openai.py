"""The OpenAI-compatible provider: chat completions over the `openai` SDK (3.x), any base_url.

The SDK's own retries are off (`max_retries=0`, it sends no idempotency key); one policy of ours
(providers/retry.py) retries transient failures. Every 429 is classified: a rate limit waits and
retries (and pauses all requests of this provider via the limiter), `insufficient_quota` raises
QuotaExhaustedError (stop the run), "request too large" fails that request only. 401/403/404 are
fatal. A request still failing after its attempts becomes an error Completion (ends one episode).

The API key comes only from the environment (`api_key_env`, default OPENAI_API_KEY); error texts
are scrubbed of it and of credentials in the URL (credentials.py). Servers that need no key (vLLM,
the sandbox) get a placeholder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

import httpx2
import numpy as np
import openai

from rmft_api.credentials import read_secret, scrub, scrub_url
from rmft_api.errors import (
    ConfigError,
    DailyLimitError,
    FatalProviderError,
    ProviderError,
    QuotaExhaustedError,
    RequestTooLargeError,
    TransientProviderError,
)
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.http_pool import ShardedTransport
from rmft_api.providers.limiter import RateLimiter, estimate_request_tokens
from rmft_api.providers.openai_wire import completion_from_json, request_body
from rmft_api.providers.pricing import ModelPrice, PriceTable
from rmft_api.providers.retry import (
    RetryPolicy,
    call_with_retries,
    refill_wait_s,
    server_wait_s,
)
from rmft_api.schema import Completion, Message

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
# vLLM and most local servers accept any key when started without one; the SDK insists on some.
PLACEHOLDER_KEY = "EMPTY"
# A 429 asking for a wait this long, or naming a daily limit, stops the run instead of waiting.
_DAILY_WAIT_S = 3600.0
_DAILY_MARKS = ("per day", "per_day", "daily", "rpd", "tpd")


@dataclass
class ProviderStats:
    """Running totals for the progress display (a snapshot; mutate nothing)."""

    requests: int = 0  # completions asked for
    attempts: int = 0  # HTTP calls made, retries included
    succeeded: int = 0
    failed: int = 0  # error completions returned
    retries: int = 0
    rate_limited: int = 0  # 429 rate-limit replies (not quota, not too-large)
    truncated: int = 0  # finish_reason == "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    price_known: bool = True  # False: the model is not in the price table; cost_usd is 0
    latency_s_total: float = 0.0
    in_flight: int = 0


@dataclass
class _Replica:
    url: str
    in_flight: int = 0
    sent: int = 0


class OpenAIProvider:
    """Chat completions from an OpenAI-compatible endpoint (or several replicas of one)."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | Sequence[str] | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float = 60.0,
        timeout_s: float = 60.0,
        max_retries: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_server_wait_s: float = 120.0,
        max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens",
        prices: Mapping[str, ModelPrice] | None = None,
        rng: np.random.Generator | None = None,
        spec: str | None = None,
    ) -> None:
        """
        Args:
            base_url: one endpoint, or a list of replicas (requests go to the least busy one);
                None = api.openai.com.
            api_key_env: the environment variable holding the key.
            concurrency: requests in flight at most (over all replicas).
            rpm, tpm: client-side caps per `window_s` (60 = per minute); None = no cap.
            max_retries: retries of a transient failure per request (attempts = retries + 1).
            max_tokens_param: `max_completion_tokens` (OpenAI's current name) or `max_tokens`
                for older OpenAI-compatible servers.
            prices: overrides of the price table, by model name.
            rng: jitter of the backoff; default seeded with 0 (reproducible waits).
        """
        urls = [base_url] if isinstance(base_url, str) else list(base_url or [OPENAI_BASE_URL])
        if not urls:
            urls = [OPENAI_BASE_URL]
        self.model = model
        self.spec = spec or f"openai/{model}"
        self.api_key_env = api_key_env
        self._api_key = _read_api_key(api_key_env, urls)
        self._replicas = [_Replica(u.rstrip("/")) for u in urls]
        self._next_replica = 0
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._max_tokens_param = max_tokens_param
        self._limiter = RateLimiter(rpm=rpm, tpm=tpm, window_s=window_s)
        self._policy = RetryPolicy(
            max_attempts=max_retries + 1,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            max_server_wait_s=max_server_wait_s,
        )
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._prices = PriceTable(prices)
        self._stats = ProviderStats(price_known=self._prices.rate(model).known)
        # Clients and the semaphore belong to one event loop; a new loop gets new ones.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def stats(self) -> ProviderStats:
        return dataclasses.replace(self._stats)

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        """One completion per chat, fanned out under the concurrency and rate limits."""
        self._bind_loop()
        ids = list(request_ids) if request_ids is not None else [str(i) for i in range(len(chats))]
        return await _gather_or_cancel(
            [self._complete(chat, sampling, rid) for chat, rid in zip(chats, ids, strict=True)]
        )

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    # ------------------------------------------------------------------ one request

    async def _complete(
        self, chat: Sequence[Message], sampling: SamplingParams, request_id: str
    ) -> Completion:
        self._stats.requests += 1
        started = time.monotonic()
        tokens = estimate_request_tokens((m.content for m in chat), max_tokens=sampling.max_tokens)
        try:
            self._limiter.check_fits(tokens)
            completion = await call_with_retries(
                lambda: self._attempt(chat, sampling, tokens),
                policy=self._policy,
                rng=self._rng,
                on_retry=self._on_retry,
            )
        except (TransientProviderError, RequestTooLargeError) as e:
            self._stats.failed += 1
            log.warning("request %s failed for good: %s", request_id, e)
            return Completion(error=scrub(e), latency_s=time.monotonic() - started)
        completion.latency_s = time.monotonic() - started
        self._account(completion)
        return completion

    async def _attempt(
        self, chat: Sequence[Message], sampling: SamplingParams, tokens: int
    ) -> Completion:
        assert self._semaphore is not None
        async with self._semaphore:
            await self._limiter.acquire(tokens)
            replica = min(self._replicas_in_turn(), key=lambda r: r.in_flight)
            replica.in_flight += 1
            replica.sent += 1
            self._stats.in_flight += 1
            self._stats.attempts += 1
            try:
                return await self._call(replica.url, chat, sampling, tokens)
            finally:
                replica.in_flight -= 1
                self._stats.in_flight -= 1

    async def _call(
        self, url: str, chat: Sequence[Message], sampling: SamplingParams, tokens: int
    ) -> Completion:
        client = self._client(url)
        where = scrub_url(url)  # what messages show: no user:key@, no ?api-key=
        try:
            # The request body goes out as ready JSON bytes and the reply comes back as the raw
            # HTTP response: the SDK's typed `create` walks every message of the chat with typing
            # introspection on each call (~13 ms for a 100-message chat), which dominated a
            # rollout's CPU. Same client, transport, headers, timeouts and error classes.
            response = await client.post(
                "/chat/completions",
                content=request_body(
                    self.model, chat, sampling, max_tokens_param=self._max_tokens_param
                ),
                cast_to=httpx2.Response,
            )
        except openai.APIStatusError as e:
            raise self._classify_status(e, where) from e
        except openai.APITimeoutError as e:
            raise TransientProviderError(f"timed out after {self._timeout_s:g}s at {where}") from e
        except openai.APIConnectionError as e:
            raise TransientProviderError(f"connection to {where} failed: {scrub(_cause(e))}") from e
        except openai.APIError as e:  # bodies the SDK could not read
            raise TransientProviderError(f"malformed response from {where}: {scrub(e)}") from e
        except openai.OpenAIError as e:
            raise FatalProviderError(f"OpenAI client error at {where}: {scrub(e)}") from e
        self._observe_headers(response.headers, tokens)
        try:
            return completion_from_json(json.loads(response.content))
        except (ValueError, TypeError, KeyError, IndexError) as e:
            # Invalid JSON (json.JSONDecodeError is a ValueError), invalid UTF-8, or a body that
            # is not a chat completion.
            raise TransientProviderError(
                f"malformed response from {where}: {type(e).__name__}: {scrub(e)}"[:300]
            ) from e

    def _classify_status(self, e: openai.APIStatusError, url: str) -> ProviderError:
        """The error for an HTTP status; `url` is already scrubbed."""
        status = e.status_code
        body = e.body if isinstance(e.body, Mapping) else {}
        message = scrub(str(body.get("message") or e.message))
        code = str(body.get("code") or "")
        kind = str(body.get("type") or "")
        headers = e.response.headers
        where = f"{self.model!r} at {url}"
        if status == 429 and "insufficient_quota" in (code, kind):
            return QuotaExhaustedError(
                f"quota exhausted for {where} (429 insufficient_quota): {message} — add credit "
                "or raise the limit; finished work is kept, resume the run afterwards"
            )
        # OpenAI's TPM refusal is a 429 told apart by its message; an over-long prompt is a 400
        # (code context_length_exceeded on OpenAI, only the message on vLLM).
        lowered = message.lower()
        if (
            status == 413
            or "request too large" in lowered
            or (
                status == 400 and (code == "context_length_exceeded" or "context length" in lowered)
            )
        ):
            return RequestTooLargeError(f"request too large for {where} ({status}): {message}")
        if status == 429:
            self._stats.rate_limited += 1
            wait = server_wait_s(headers, message)
            daily = any(w in f"{code} {kind} {lowered}" for w in _DAILY_MARKS)
            if daily or (wait is not None and wait >= _DAILY_WAIT_S):
                reset = f"it resets in {wait / 3600:.1f} h" if wait is not None else "a daily limit"
                return DailyLimitError(
                    f"daily rate limit of {where} reached (429, {reset}): {message} — the run "
                    "stops with its finished work kept; resume it after the reset"
                )
            if wait is not None:
                self._limiter.pause_for(min(wait, self._policy.max_server_wait_s))
            return TransientProviderError(
                f"rate limited by {url} (429): {message}", retry_after_s=wait
            )
        if status in (408, 409) or status >= 500:
            return TransientProviderError(
                f"server error {status} from {url}: {message}",
                retry_after_s=server_wait_s(headers) if status == 503 else None,
            )
        if status == 401:
            return FatalProviderError(
                f"authentication failed for {where} (401): {message} — check {self.api_key_env}"
            )
        if status == 403:
            return FatalProviderError(f"permission denied for {where} (403): {message}")
        if status == 404:
            return FatalProviderError(f"model or endpoint not found: {where} (404): {message}")
        # Other 4xx (bad parameters) would fail every request alike: stop with the reason.
        return FatalProviderError(f"request rejected by {url} ({status}): {message}")

    def _observe_headers(self, headers: Mapping[str, str], tokens: int) -> None:
        """Trust the server over our estimate: hold back while its buckets are (nearly) empty."""
        wait = refill_wait_s(headers, tokens=tokens)
        if wait > 0:
            self._limiter.pause_for(min(wait, self._policy.max_server_wait_s))

    def _on_retry(self, error: TransientProviderError, sleep_s: float) -> None:
        self._stats.retries += 1
        log.info("retrying in %.2fs: %s", sleep_s, error)

    def _account(self, completion: Completion) -> None:
        s = self._stats
        u = completion.usage
        u.cost_usd = self._prices.inference_cost(
            self.model, prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens
        )
        s.succeeded += 1
        s.truncated += completion.finish_reason == "length"
        s.prompt_tokens += u.prompt_tokens
        s.completion_tokens += u.completion_tokens
        s.reasoning_tokens += u.reasoning_tokens
        s.cost_usd += u.cost_usd
        s.latency_s_total += completion.latency_s

    # ------------------------------------------------------------------ plumbing

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections of a finished loop cannot be reused or closed from this one.
            self._loop = loop
            self._clients = {}
            self._semaphore = asyncio.Semaphore(self._concurrency)

    def _client(self, url: str) -> openai.AsyncOpenAI:
        client = self._clients.get(url)
        if client is None:
            # Pools of keep-alive connections for every request in flight (the SDK's default
            # keeps only 100 alive, so higher concurrency would reconnect); see http_pool.py.
            http_client = openai.DefaultAsyncHttpxClient(
                transport=ShardedTransport(connections=self._concurrency),
                timeout=self._timeout_s,
            )
            client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=url,
                max_retries=0,
                timeout=self._timeout_s,
                http_client=http_client,
            )
            self._clients[url] = client
        return client

    def _replicas_in_turn(self) -> list[_Replica]:
        # Rotate the start so ties in in-flight count go round-robin.
        i = self._next_replica % len(self._replicas)
        self._next_replica += 1
        return self._replicas[i:] + self._replicas[:i]


def _read_api_key(env: str, urls: Sequence[str]) -> str:
    key = read_secret(env)
    if key:
        return key
    hosted = [u for u in urls if (urlparse(u).hostname or "").endswith("openai.com")]
    if hosted:
        raise ConfigError(
            f"{env} is not set: export your API key to use {scrub_url(hosted[0])}, or set "
            "policy.base_url to an OpenAI-compatible server (vLLM, `rmft-api sandbox`)"
        )
    return PLACEHOLDER_KEY


def _cause(e: BaseException) -> str:
    inner = e.__cause__ or e.__context__
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(e)


async def _gather_or_cancel(coros: Sequence[Awaitable[Completion]]) -> list[Completion]:
    """All results in order; on the first exception (a fatal error) cancel the rest and raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
