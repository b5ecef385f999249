"""Client-side rate limiting: requests and tokens per window, never exceeded in any window.

A sliding-window log (not a token bucket): a request is admitted only if the requests, and the
tokens, admitted in the last `window_s` seconds plus this one stay within the limits. A token
bucket of the same rate would let a full bucket's burst follow a window's worth of traffic, going
over the limit in some windows; the log cannot. The server's own view corrects the client's:
`pause_until` (fed by 429 Retry-After and by `x-ratelimit-remaining-*` reaching 0) stops all
admissions until then, so one rate-limited reply slows every concurrent request, not just its own.

Tokens are estimated as OpenAI's limiter counts them before generation: prompt characters / 4
(rounded up) plus the request's `max_tokens`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable

from rmft_api.errors import RequestTooLargeError

CHARS_PER_TOKEN = 4


def estimate_text_tokens(text: str) -> int:
    """ceil(characters / 4): the rule of thumb OpenAI quotes for English text."""
    return -(-len(text) // CHARS_PER_TOKEN)  # integer ceiling (no float round trip)


def estimate_request_tokens(contents: Iterable[str], *, max_tokens: int) -> int:
    """What a chat request counts against a tokens-per-minute limit (prompt estimate + cap)."""
    # Inlined: this runs over every message of every request, on the client and the server.
    return sum(-(-len(c) // CHARS_PER_TOKEN) for c in contents) + max_tokens


class RateLimiter:
    """Admits requests within `rpm` requests and `tpm` tokens per `window_s` (None = no limit).

    `window_s` is 60 for real per-minute limits; tests shrink it to check the guarantee quickly.
    Safe for concurrent use by tasks of one event loop (admission has no await between check and
    record), and holds no loop-bound objects, so it can be reused across `asyncio.run` calls.
    """

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._clock = clock
        self._log: deque[tuple[float, int]] = deque()  # (admitted at, tokens), oldest first
        self._tokens_in_window = 0
        self._paused_until = 0.0
        self.admitted = 0
        self.waited_s = 0.0

    def check_fits(self, tokens: int) -> None:
        """Raise RequestTooLargeError for a request that could never be admitted."""
        if self.tpm is not None and tokens > self.tpm:
            raise RequestTooLargeError(
                f"request needs ~{tokens} tokens (prompt estimate + max_tokens), more than the "
                f"client limit tpm={self.tpm}; shorten the prompt or lower max_tokens"
            )

    def pause_until(self, deadline: float) -> None:
        """Admit nothing before `deadline` (on this limiter's clock); later deadlines win."""
        self._paused_until = max(self._paused_until, deadline)

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock() + max(0.0, seconds))

    def delay(self, tokens: int) -> float:
        """Seconds until a request of `tokens` could be admitted (0 = now)."""
        now = self._clock()
        self._expire(now)
        wait = max(0.0, self._paused_until - now)
        if self.rpm is not None and len(self._log) >= self.rpm:
            # The oldest entry that must leave before one more request fits.
            leave = self._log[len(self._log) - self.rpm][0]
            wait = max(wait, leave + self.window_s - now)
        if self.tpm is not None and self._tokens_in_window + tokens > self.tpm:
            excess = self._tokens_in_window + tokens - self.tpm
            freed = 0
            for at, n in self._log:
                freed += n
                if freed >= excess:
                    wait = max(wait, at + self.window_s - now)
                    break
        return wait

    def try_acquire(self, tokens: int = 0) -> bool:
        """Admit now if the limits allow; record the request and return True."""
        if self.delay(tokens) > 0:
            return False
        self._log.append((self._clock(), tokens))
        self._tokens_in_window += tokens
        self.admitted += 1
        return True

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until a request of `tokens` fits, then admit it."""
        self.check_fits(tokens)
        while True:
            wait = self.delay(tokens)
            if wait <= 0 and self.try_acquire(tokens):
                return
            # A small floor stops a busy loop on float rounding at the window edge.
            wait = max(wait, 1e-3)
            self.waited_s += wait
            await asyncio.sleep(wait)

    def _expire(self, now: float) -> None:
        # Windows are half-open: an entry counts while now - admitted_at < window_s, so any
        # [t, t + window_s) holds at most `rpm` admissions.
        while self._log and self._log[0][0] <= now - self.window_s:
            _, n = self._log.popleft()
            self._tokens_in_window -= n
