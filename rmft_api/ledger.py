"""The ledger: one append-only record of every paid request, in the run directory.

A line is written (and fsynced) before each request is sent, at an estimate; a second line
settles it after the reply with what it cost. A request that failed, or whose process died
before it settled, counts at its estimate: the service may have billed it. The total is what
every budget guard starts from, so a resumed run is not granted the cap again. Cached replays
are free and never enter it. A torn last line (a kill mid-write) is ignored and cut off.

Every paid request of a run passes through its ledger, so it is also where a stop request
(stop_request.py) is honoured: `admit()`, called before each request, runs the run's `gate`.

Lines: {"id", "kind", "estimate_usd", "tokens"} to open, {"id", "cost_usd"} to settle
(cost_usd null: failed, counted at the estimate).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rmft_api.store import JsonlWriter, read_jsonl

LEDGER_FILE = "ledger.jsonl"


class LedgerLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: str | None = None  # set on the opening line: "request", "carried"
    estimate_usd: float | None = None
    tokens: int | None = None  # the request's estimated size (for the guard's price per token)
    cost_usd: float | None = None
    settled: bool = False


class Ledger:
    """The run's paid requests: open before sending, settle after."""

    def __init__(self, path: str | Path, *, gate: Callable[[], None] | None = None) -> None:
        """`gate`: raises (StopRequested) when no further request may be sent."""
        self.path = Path(path)
        self.gate = gate
        self._lines: dict[str, LedgerLine] = {}
        self._settled: dict[str, float | None] = {}
        for line in read_jsonl(self.path, LedgerLine, missing_ok=True):
            if line.settled:
                self._settled[line.id] = line.cost_usd
            else:
                self._lines[line.id] = line
        self._writer: JsonlWriter | None = None

    def _write(self, line: LedgerLine) -> None:
        if self._writer is None:
            self._writer = JsonlWriter(self.path)
        self._writer.write(line)
        self._writer.sync()

    def admit(self) -> None:
        """Before a paid request is sent: raises when the run was asked to stop."""
        if self.gate is not None:
            self.gate()

    def open(self, *, estimate_usd: float, tokens: int, kind: str = "request") -> str:
        """Record a request about to be sent; returns its id for `settle`."""
        line = LedgerLine(id=uuid.uuid4().hex, kind=kind, estimate_usd=estimate_usd, tokens=tokens)
        self._write(line)
        self._lines[line.id] = line
        return line.id

    def settle(self, entry: str, cost_usd: float | None) -> None:
        """What the request cost; None when it failed (it then counts at its estimate)."""
        self._write(LedgerLine(id=entry, cost_usd=cost_usd, settled=True))
        self._settled[entry] = cost_usd

    def carry(self, usd: float) -> None:
        """Record spending from before the ledger existed (an older run directory), once."""
        if usd > 0 and not self._lines:
            self.settle(self.open(estimate_usd=usd, tokens=0, kind="carried"), usd)

    def total_usd(self) -> float:
        total = 0.0
        for entry, line in self._lines.items():
            cost = self._settled.get(entry)
            total += cost if cost is not None else (line.estimate_usd or 0.0)
        return total

    def requests(self) -> int:
        """Requests recorded as sent, answered or not (what the service may have served)."""
        return sum(1 for line in self._lines.values() if line.kind == "request")

    def paid(self) -> int:
        """Requests settled as answered (what the service billed, as far as this side knows)."""
        return sum(
            1
            for entry, line in self._lines.items()
            if line.kind == "request" and self._settled.get(entry) is not None
        )

    def usd_per_token(self) -> list[float]:
        """Cost per estimated token of the answered requests, oldest first."""
        rates = []
        for entry, line in self._lines.items():
            cost = self._settled.get(entry)
            if line.kind == "request" and cost is not None and line.tokens:
                rates.append(cost / line.tokens)
        return rates

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def format_usd(amount: float) -> str:
    """Dollars with the digits that matter: `$12.50`, `$0.50`, `$0.0005`, `$0.000523`."""
    if amount == 0:
        return "$0.00"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    decimals = max(2, 2 - math.floor(math.log10(abs(amount))))  # three significant digits
    text = f"{amount:.{decimals}f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def ledger_path(directory: str | Path) -> Path:
    return Path(directory) / LEDGER_FILE
