"""The spending cap of a rollout: refuse the request that could take spending past `max_usd`.

Each request is priced before it is sent, from its own size (prompt characters / 4 +
max_tokens, as rate limiters count it) at the dearest cost per token among the last 64 paid
requests; requests in flight count as if they cost that much too. Pricing by size rather than
by the average cost of past requests matters because chats grow round by round: an average over
the past lags behind the next request. No price is known before the first reply, so with a cap
the first request goes alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from rmft_api.errors import BudgetError
from rmft_api.ledger import Ledger, format_usd

_RATES_KEPT = 64


class BudgetGuard:
    """Reservations against a dollar cap (None = no cap: every call returns at once)."""

    def __init__(self, max_usd: float | None, *, ledger: Ledger | None = None) -> None:
        """With a ledger, spending starts from its total (what earlier invocations paid,
        failed requests at their estimate) and its recent prices per token."""
        self.max_usd = max_usd
        self.ledger = ledger
        self.spent_usd = ledger.total_usd() if ledger is not None else 0.0
        self.paid = 0
        self.settled = 0  # requests this guard released, answered or not
        self._reserved_tokens = 0
        self._in_flight = 0
        self._usd_per_token: deque[float] = deque(maxlen=_RATES_KEPT)
        if ledger is not None:
            self._usd_per_token.extend(ledger.usd_per_token()[-_RATES_KEPT:])
        self._priced: asyncio.Event | None = None

    async def reserve(self, sizes: Sequence[int]) -> None:
        """Admit requests of these estimated sizes (tokens) or raise BudgetError; settle each."""
        tokens = sum(sizes)
        if self.max_usd is not None and not self._usd_per_token and self._in_flight > 0:
            if self._priced is None:
                self._priced = asyncio.Event()
            await self._priced.wait()
        if self.max_usd is not None and self.spent_usd >= self.max_usd:
            raise BudgetError(
                f"budget.max_usd = {format_usd(self.max_usd)} is spent "
                f"({format_usd(self.spent_usd)} on {self.requests_sent()} requests in the "
                "ledger); raise it and resume"
            )
        if self.max_usd is not None and self._usd_per_token:
            rate = max(self._usd_per_token)
            if self.spent_usd + rate * (self._reserved_tokens + tokens) > self.max_usd:
                raise BudgetError(
                    f"budget.max_usd = {format_usd(self.max_usd)} reached: "
                    f"{format_usd(self.spent_usd)} spent on {self.requests_sent()} requests; "
                    f"the next (~{tokens} tokens at up to {format_usd(rate * 1e6)} per 1M) "
                    "could pass the cap. Finished episodes are saved; raise the budget and resume."
                )
        self._reserved_tokens += tokens
        self._in_flight += len(sizes)

    def requests_sent(self) -> int:
        """Requests sent so far: the ledger's (every invocation of the run, answered or not),
        else this guard's own."""
        if self.ledger is not None:
            return self.ledger.requests()
        return self.settled + self._in_flight

    def estimate_usd(self, tokens: int) -> float:
        """What a request of this size may cost at the dearest recent price (0 before any)."""
        return max(self._usd_per_token, default=0.0) * tokens

    def settle(
        self, tokens: int, *, cost_usd: float | None, failed_estimate_usd: float = 0.0
    ) -> None:
        """Release a reservation; `cost_usd` None when the request failed, which counts at
        `failed_estimate_usd` (the service may have billed it)."""
        self._reserved_tokens -= tokens
        self._in_flight -= 1
        self.settled += 1
        self.spent_usd += failed_estimate_usd if cost_usd is None else 0.0
        if cost_usd is not None:
            self.paid += 1
            self.spent_usd += cost_usd
            self._usd_per_token.append(cost_usd / max(tokens, 1))
        if self._priced is not None:
            self._priced.set()
