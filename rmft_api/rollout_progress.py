"""What a rollout reports while it runs and when it ends (records only; the CLI draws them)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from rmft_api.schema import Usage


class RolloutProgress(BaseModel):
    """A snapshot of a running rollout. Rates and ETA are the renderer's to derive."""

    model_config = ConfigDict(frozen=True)

    episodes_total: int  # M × L of this call, finished earlier ones included
    episodes_done: int  # finished (any status), skipped ones included
    episodes_skipped: int  # finished before this call (resume)
    requests: int  # replies obtained: paid + cached
    cached: int  # replies replayed from the response cache
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    parse_failures: int  # replies that failed to parse (re-prompted or fallen back)
    rate_limited: int  # 429 rate-limit replies seen by the provider
    errors: int  # episodes ended by a request that failed for good
    elapsed_s: float


class ProgressCallback(Protocol):
    """Called with a fresh snapshot now and then (at most ~10 times a second) and at the end."""

    def __call__(self, progress: RolloutProgress) -> None: ...


class RolloutSummary(BaseModel):
    """The outcome of one `run_rollouts` call."""

    model_config = ConfigDict(frozen=True)

    out: str
    policy_spec: str
    iteration: int
    episodes_total: int
    skipped: int  # already finished on disk; not played again
    written: int  # episodes appended by this call
    complete: int  # complete episodes on disk for this call's ids (skipped ones included)
    errors: int  # error episodes written by this call (re-run on the next resume)
    aborted: int
    requests: int
    cached_requests: int
    parse_failures: int
    rate_limited: int
    usage: Usage = Field(default_factory=Usage)  # paid usage of this call (cached turns: $0)
    wall_s: float
    mean_regret: float | None  # over complete episodes of this call's ids; None if none
