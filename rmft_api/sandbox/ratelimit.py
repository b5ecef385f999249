"""The sandbox's server-side rate limits, shaped like OpenAI's: token buckets and their headers.

Each limit is a bucket of `limit` units refilled continuously at `limit / window_s` per second
(OpenAI replenishes the same way rather than resetting each minute). A request costs 1 request
and its token estimate (prompt chars / 4 + max_tokens, as OpenAI counts before generating).
Responses carry `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, reset being the time
until the bucket is full again, written like OpenAI's durations ("1s", "6m0s", "120ms").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


def format_duration(seconds: float) -> str:
    """Seconds → OpenAI's duration text: "120ms", "1.5s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    head = f"{int(hours)}h" if hours else ""
    return f"{head}{int(minutes)}m{round(secs, 3):g}s"


class TokenBucket:
    def __init__(
        self, limit: int, *, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.rate = limit / window_s
        self._clock = clock
        self._level = float(limit)
        self._at = clock()

    def level(self) -> float:
        now = self._clock()
        self._level = min(float(self.limit), self._level + (now - self._at) * self.rate)
        self._at = now
        return self._level

    def wait_for(self, units: int) -> float:
        """Seconds until `units` are available (0 = now)."""
        return max(0.0, (units - self.level()) / self.rate)

    def take(self, units: int) -> None:
        self._level = self.level() - units

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.limit - self.level()) / self.rate)


@dataclass(frozen=True)
class Verdict:
    """The limiter's answer for one request."""

    allowed: bool
    too_large: bool  # the request alone exceeds the token limit: it can never pass
    limited_by: str  # "requests" | "tokens" | "" when allowed
    retry_after_s: float
    headers: dict[str, str]


class ServerRateLimiter:
    """Requests and tokens per window (None = unlimited; then no headers, like vLLM)."""

    def __init__(
        self,
        *,
        rpm: int | None,
        tpm: int | None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = TokenBucket(rpm, window_s=window_s, clock=clock) if rpm else None
        self.tokens = TokenBucket(tpm, window_s=window_s, clock=clock) if tpm else None

    def admit(self, tokens: int) -> Verdict:
        """Take 1 request and `tokens` if both are available; say why not otherwise."""
        if self.tokens is not None and tokens > self.tokens.limit:
            return Verdict(False, True, "tokens", 0.0, self.headers())
        waits = {
            "requests": self.requests.wait_for(1) if self.requests else 0.0,
            "tokens": self.tokens.wait_for(tokens) if self.tokens else 0.0,
        }
        kind, wait = max(waits.items(), key=lambda kv: kv[1])
        if wait > 0:
            return Verdict(False, False, kind, wait, self.headers())
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        return Verdict(True, False, "", 0.0, self.headers())

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level())))
            out[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_s())
        return out
