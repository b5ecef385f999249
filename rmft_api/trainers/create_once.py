"""Create a billable object on a fine-tuning service at most once per run.

Shared by the OpenAI, Azure and Together trainers for file uploads and job creates. Neither SDK
sends an idempotency key, so a create whose answer did not come back (a timeout, a 5xx, a
dropped connection, a garbled body) may still have created the object — now or a while later,
when the service catches up. The rule:

1. Announce the create in the run's registry (the caller's `announce`), then send it once.
2. An answer that proves nothing was created — a 429 rate limit, or a connection that was never
   made — is retried after a wait (up to `attempts` sends), each retry after a lookup.
3. Any other transient failure is *ambiguous*: this process never sends the create again. It
   polls the lookup (by the name / metadata / suffix the object carries) with a growing wait for
   up to `settle_s`, and stops with `CreateUnsettledError` if the object has not appeared:
   `rmft-api run --resume` looks it up again before creating anything.
   A *free* object (a training-file upload: storing a second copy costs nothing and the job
   names the one id it got) is looked up for at most `FREE_SETTLE_S` and then sent again: a
   transient 5xx on an upload does not stop the run.
4. On resume, an announced create without a recorded id is looked up first, polled until
   `settle_s` after it was announced (a crash right after sending still gets the full window),
   and only created when it is still absent after that.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx2
import numpy as np

from rmft_api.errors import RmftError, TrainingError, TransientProviderError
from rmft_api.providers.retry import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_LOOKUP_WAIT_S = 0.25  # the first wait between lookups; doubles up to the cap
MAX_LOOKUP_WAIT_S = 15.0
FREE_SETTLE_S = 5.0  # how long an ambiguous upload is looked for before it is sent again


class CreateUnsettledError(TrainingError):
    """A create's outcome is unknown and the object is not listed after the settle window; it was
    not sent again. `rmft-api run --resume` looks it up again before creating."""


@dataclass
class CreatePolicy:
    """How creates are sent and settled (one per trainer).

    Attributes:
        attempts: sends of one create in all, counting only retries after an answer that proves
            nothing was created (429, no connection).
        settle_s: how long after an ambiguous outcome the lookup is polled for the object.
        classify: the RmftError for an exception a create of `what` raised; None = not the
            SDK's (raised as it is).
        retry: the waits before a retry (a server's Retry-After is honoured).
        rng: jitter of those waits.
        sleep: how waits are slept (tests pass a recorder).
        clock: wall-clock seconds (announcements are stamped with `time.time()`).
    """

    attempts: int
    settle_s: float
    classify: Callable[[Exception, str], RmftError | None]
    retry: RetryPolicy
    rng: np.random.Generator
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = field(default=time.time)

    def create(
        self,
        what: str,
        *,
        announce: Callable[[], None],
        lookup: Callable[[], T | None],
        create: Callable[[], T],
        announced_at: float | None,
        free: bool = False,
    ) -> T:
        """The object, created at most once.

        Args:
            what: the create, for messages ("fine-tuning job for iteration 2").
            announce: records the intent durably before each send.
            lookup: the object on the server, or None when it is not listed (yet).
            create: one send (SDK retries off).
            announced_at: when an earlier create of this object was announced and never
                answered (a crash, an earlier stop); None = never announced.
            free: a duplicate costs nothing (a file upload): after an ambiguous outcome the
                lookup is polled briefly and the create then sent again, within `attempts`.
        """
        if announced_at is not None:
            window = FREE_SETTLE_S if free else None
            found = self._settle(what, lookup, since=announced_at, window=window)
            if found is not None:
                return found
        last: TransientProviderError | None = None
        for attempt in range(1, self.attempts + 1):
            if attempt > 1 and (found := lookup()) is not None:
                log.info("%s: found on the server; not created again", what)
                return found
            announce()
            sent_at = self.clock()
            try:
                return create()
            except Exception as e:
                error = self.classify(e, what)
                if error is None:
                    raise
                if not isinstance(error, TransientProviderError):
                    raise error from e
                if free and not _nothing_created(e):
                    found = self._settle(what, lookup, since=sent_at, window=FREE_SETTLE_S)
                    if found is not None:
                        return found
                elif not _nothing_created(e):
                    return self._settled_or_stop(what, lookup, since=sent_at, cause=error)
                last = error
            if attempt < self.attempts:
                wait = self.retry.wait_s(last, attempt, self.rng)
                log.warning("%s: %s; trying again in %.1fs", what, last, wait)
                self.sleep(wait)
        if (found := lookup()) is not None:
            return found
        raise TrainingError(
            f"{what} was refused {self.attempts} times ({last}); the service created nothing — "
            "resume the run (`rmft-api run --resume <run dir>`) to try again"
        ) from last

    def _settle(
        self,
        what: str,
        lookup: Callable[[], T | None],
        *,
        since: float,
        window: float | None = None,
    ) -> T | None:
        """Poll `lookup` until it finds the object or `window` (default `settle_s`) after
        `since` has passed (at least one lookup)."""
        deadline = since + (self.settle_s if window is None else min(window, self.settle_s))
        wait = FIRST_LOOKUP_WAIT_S
        while True:
            found = lookup()
            if found is not None:
                log.info("%s: found on the server; not created again", what)
                return found
            left = deadline - self.clock()
            if left <= 0:
                return None
            log.info("%s: not listed yet; looking again in %.1fs", what, min(wait, left))
            self.sleep(min(wait, left))
            wait = min(wait * 2, MAX_LOOKUP_WAIT_S)

    def _settled_or_stop(
        self,
        what: str,
        lookup: Callable[[], T | None],
        *,
        since: float,
        cause: TransientProviderError,
    ) -> T:
        log.warning("%s: %s; the outcome is unknown, looking it up (never sent again)", what, cause)
        found = self._settle(what, lookup, since=since)
        if found is not None:
            return found
        raise CreateUnsettledError(
            f"{what}: the outcome is unknown ({cause}) and the service has not listed it within "
            f"{self.settle_s:g}s (trainer.create_settle_s). It was not sent again, so nothing is "
            "paid twice. Resume the run with `rmft-api run --resume <run dir>`: it looks the "
            "object up again and creates it only if it is still absent."
        ) from cause


def _nothing_created(e: BaseException) -> bool:
    """Whether a failed create provably created nothing: a 429 (the service refused it before
    doing anything), or a connection that was never made (so nothing was sent)."""
    if getattr(e, "status_code", None) == 429:
        return True
    cause = e.__cause__ or e.__context__
    return isinstance(cause, _never_connected())


@functools.cache
def _never_connected() -> tuple[type[BaseException], ...]:
    """The transports' "no connection was made" errors: httpx2 (the openai SDK's) and, when
    installed, httpx (the together SDK's; the `together` extra brings it)."""
    kinds: list[type[BaseException]] = [httpx2.ConnectError, httpx2.ConnectTimeout]
    try:
        import httpx
    except ImportError:
        pass
    else:
        kinds += [httpx.ConnectError, httpx.ConnectTimeout]
    return tuple(kinds)
