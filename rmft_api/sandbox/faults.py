"""Injected faults: which request gets which failure, by script or by seeded rate.

A plan is a list of rules; the first rule matching a request decides its fault. A rule matches
by request number on its path (`at`, 1-based), by period (`every`), by probability (`rate`,
drawn from the plan's seeded Generator, one draw per rate rule per request so the sequence is
reproducible), or always when none of these is given; `times` caps how often it fires; `method`
restricts it to one HTTP method (a create, not the list on the same path). `jobs` rules make
fine-tuning jobs fail on the server, by creation order (sandbox/ft_jobs.py).

File format (JSON or TOML), e.g. TOML:

    seed = 0
    [[rules]]
    fault = "rate_limit"
    at = [1, 2]
    retry_after_s = 0.5
    [[rules]]
    fault = "server_error"
    rate = 0.1
    [[rules]]
    fault = "late_reply"          # the job is created, the client times out
    path = "/v1/fine_tuning/jobs"
    method = "POST"
    times = 1
    [[rules]]
    fault = "late_create"         # 500 now, the job appears 5 s later
    path = "/v1/fine_tuning/jobs"
    method = "POST"
    times = 1
    delay_s = 5
    [[jobs]]
    fault = "job_failed"
    at = [2]
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rmft_api.errors import ConfigError

FaultKind = Literal[
    "rate_limit",  # 429 rate_limit_exceeded with Retry-After / x-ratelimit-* headers
    "insufficient_quota",  # 429 insufficient_quota (never succeeds)
    "request_too_large",  # 429 "Request too large ... tokens per min" (never succeeds)
    "context_length",  # 400 context_length_exceeded (never succeeds)
    "server_error",  # 500
    "unavailable",  # 503 overloaded
    "slow",  # the reply is held for delay_s (longer than the client's timeout)
    "late_reply",  # the request is carried out, then its reply held for delay_s (the server
    # created the object; the client timed out and never learnt its id)
    "late_create",  # answered 500 at once, but carried out delay_s later: the object appears
    # in the listings after a while (a service that finishes a create it reported as failed)
    "disconnect",  # the socket is closed with no response at all
    "malformed",  # 200 with a truncated JSON body
    "unauthorized",  # 401 invalid_api_key, echoing the key it got (to test scrubbing)
    "permission_denied",  # 403
    "training_not_available",  # 403 training_not_available (fine-tuning refused for good)
    "model_not_found",  # 404 model_not_found
]

CHAT_PATH = "/v1/chat/completions"


class FaultRule(BaseModel):
    """One rule of a fault plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: FaultKind
    path: str = Field(default=CHAT_PATH, description="Request path the rule applies to.")
    method: str | None = Field(
        default=None,
        description="HTTP method it applies to (e.g. POST); None = any. `at` and "
        "`every` still count every request on the path.",
    )
    at: list[int] = Field(default_factory=list, description="1-based request numbers on path.")
    every: int | None = Field(default=None, ge=1, description="Every n-th request on path.")
    rate: float | None = Field(default=None, ge=0, le=1, description="Probability per request.")
    times: int | None = Field(default=None, ge=1, description="Fire at most this many times.")
    retry_after_s: float | None = Field(
        default=None, ge=0, description="rate_limit/unavailable: Retry-After to send."
    )
    delay_s: float = Field(
        default=30.0,
        ge=0,
        description="slow / late_reply: how long the reply is held; late_create: how long after "
        "its 500 the request is carried out.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra response headers, e.g. x-ratelimit-reset-*."
    )
    message: str | None = Field(
        default=None,
        description="server_error / unavailable: the error message sent instead of the usual "
        "(e.g. one quoting a URL, to test that clients scrub it).",
    )


class JobFaultRule(BaseModel):
    """A fine-tuning job that goes wrong on the server (sandbox/ft_jobs.py), by creation order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal["invalid_file", "job_failed"] = Field(
        description="invalid_file: fails while validating_files (code invalid_training_file); "
        "job_failed: fails while running."
    )
    at: list[int] = Field(
        default_factory=list, description="1-based job numbers (creation order); empty = all."
    )
    code: str | None = Field(default=None, description="error.code; None = the fault's usual.")
    message: str | None = Field(default=None, description="error.message; None = a default.")


class FaultPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(default=0, ge=0, description="Seed of the rate draws.")
    rules: list[FaultRule] = Field(default_factory=list)
    jobs: list[JobFaultRule] = Field(
        default_factory=list, description="Fine-tuning jobs that fail on the server."
    )


def load_fault_plan(path: str | Path) -> FaultPlan:
    """Read a plan from a .json or .toml file (a JSON list is taken as the rules)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        if isinstance(data, list):
            data = {"rules": data}
        return FaultPlan.model_validate(data)
    except FileNotFoundError as e:
        raise ConfigError(f"fault file not found: {p}") from e
    except (ValueError, tomllib.TOMLDecodeError) as e:  # ValidationError is a ValueError
        detail = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise ConfigError(f"{p}: not a valid fault plan: {detail}") from e


class FaultInjector:
    """Numbers requests per path and says which fault (if any) each one gets."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan or FaultPlan()
        self._rng = np.random.default_rng(self.plan.seed)
        self._seen: Counter[str] = Counter()
        self._fired: Counter[int] = Counter()  # by rule index
        self.injected: Counter[str] = Counter()  # by fault kind

    def decide(self, path: str, method: str | None = None) -> tuple[int, FaultRule | None]:
        """(this request's 1-based number on `path`, the fault rule it triggers or None)."""
        self._seen[path] += 1
        n = self._seen[path]
        chosen: FaultRule | None = None
        for i, rule in enumerate(self.plan.rules):
            if rule.path != path:
                continue
            # Draw for every rate rule, matched or not, so draws do not depend on other rules.
            hit_by_rate = rule.rate is not None and float(self._rng.random()) < rule.rate
            if chosen is not None or (rule.times is not None and self._fired[i] >= rule.times):
                continue
            if rule.method is not None and (method or "").upper() != rule.method.upper():
                continue
            unconditional = not rule.at and rule.every is None and rule.rate is None
            if (
                unconditional
                or n in rule.at
                or (rule.every is not None and n % rule.every == 0)
                or hit_by_rate
            ):
                chosen = rule
                self._fired[i] += 1
                self.injected[rule.fault] += 1
        return n, chosen
