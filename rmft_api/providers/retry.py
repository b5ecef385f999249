"""The one retry policy for API calls: what to wait, how long, how often.

Waits come from the server when it says (`retry-after-ms`, `Retry-After`, "try again in 20s" in
the message, `x-ratelimit-reset-*`), else capped exponential backoff with jitter drawn from a
seeded numpy Generator. Only `TransientProviderError` is retried; everything else passes through.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from rmft_api.errors import TransientProviderError

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_TRY_AGAIN = re.compile(r"try again in\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "120ms", "1h2m3.5s", bare "2.5") → seconds."""
    text = text.strip().lower()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:  # "inf" / "nan" are garbage, not a wait
        return max(0.0, value) if math.isfinite(value) else None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """`Retry-After`: delta seconds or an HTTP date → seconds from now."""
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def server_wait_s(headers: Mapping[str, str], message: str = "") -> float | None:
    """The wait a rate-limited reply asks for, most specific source first; None if it says none."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            value = float(ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value / 1000.0)
    if (ra := headers.get("retry-after")) is not None and (s := parse_retry_after(ra)) is not None:
        return s
    if (m := _TRY_AGAIN.search(message)) and (s := parse_duration(m.group(1))) is not None:
        return s
    return reset_wait_s(headers)


def reset_wait_s(headers: Mapping[str, str]) -> float | None:
    """From `x-ratelimit-reset-*`: the reset of the exhausted limit, else the longer of both."""
    resets: dict[str, float] = {}
    exhausted: list[str] = []
    for kind in ("requests", "tokens"):
        raw = headers.get(f"x-ratelimit-reset-{kind}")
        if raw is not None and (s := parse_duration(raw)) is not None:
            resets[kind] = s
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is not None and _as_int(remaining) == 0:
            exhausted.append(kind)
    chosen = [resets[k] for k in exhausted if k in resets] or list(resets.values())
    return max(chosen) if chosen else None


def refill_wait_s(headers: Mapping[str, str], *, tokens: int) -> float:
    """How long until the server's buckets hold one more request and `tokens` more tokens.

    OpenAI's `reset` is the time until a bucket is full again, refilling continuously, so the
    refill rate is (limit - remaining) / reset and the wait for `need` units follows from it.
    0 when the headers are missing (vLLM sends none) or show room enough.
    """
    wait = 0.0
    for kind, need in (("requests", 1), ("tokens", tokens)):
        limit = _as_int(headers.get(f"x-ratelimit-limit-{kind}", ""))
        remaining = _as_int(headers.get(f"x-ratelimit-remaining-{kind}", ""))
        reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
        if remaining is None or reset is None or remaining >= need:
            continue
        if limit is not None and limit > remaining and reset > 0:
            wait = max(wait, min(reset, (need - remaining) * reset / (limit - remaining)))
        else:
            wait = max(wait, reset)
    return wait


def _as_int(text: str) -> int | None:
    """An integer header value; None when it is missing or garbage (`inf`, `nan`, words)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class RetryPolicy:
    """How a transient failure is retried.

    Attributes:
        max_attempts: tries per request in all (1 = no retry).
        backoff_base_s: first backoff; doubles each retry up to `backoff_max_s`.
        backoff_max_s: cap of the exponential backoff.
        max_server_wait_s: cap on a server-requested wait (a longer ask is waited this long).
    """

    max_attempts: int = 7
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_server_wait_s: float = 120.0

    def backoff_s(self, retry_number: int, rng: np.random.Generator) -> float:
        """Equal jitter: half the capped exponential fixed, half uniform, so retries spread out."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(0, retry_number - 1))
        return cap / 2 + float(rng.uniform(0.0, cap / 2))

    def wait_s(
        self, error: BaseException | None, retry_number: int, rng: np.random.Generator
    ) -> float:
        asked = error.retry_after_s if isinstance(error, TransientProviderError) else None
        if asked is not None:
            return min(asked, self.max_server_wait_s)
        return self.backoff_s(retry_number, rng)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    rng: np.random.Generator,
    on_retry: Callable[[TransientProviderError, float], None] | None = None,
) -> T:
    """Run `attempt` until it succeeds, raises a non-transient error, or attempts run out.

    The last `TransientProviderError` is re-raised when attempts run out.
    """

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return policy.wait_s(error, state.attempt_number, rng)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(error, TransientProviderError):
            on_retry(error, state.upcoming_sleep)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_exception_type(TransientProviderError),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def once() -> T:
        # tenacity awaits only coroutine functions; `attempt` may be a lambda returning one.
        return await attempt()

    result: T = await retrying(once)
    return result
