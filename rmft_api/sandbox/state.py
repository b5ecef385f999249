"""The sandbox's settings and the mutable state its routes share (counters, limits, backings).

All routes run on the server's one event loop, so the state needs no locks; other threads only
read it (tests), or go through `/sandbox/stats`.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from rmft_api.errors import ConfigError
from rmft_api.providers.base import Provider
from rmft_api.sandbox.azure import AzureSandboxSettings
from rmft_api.sandbox.faults import FaultInjector, FaultPlan
from rmft_api.sandbox.files import FileStore
from rmft_api.sandbox.ft_jobs import FineTuningJobs
from rmft_api.sandbox.ft_objects import FineTuneSettings
from rmft_api.sandbox.ratelimit import ServerRateLimiter

if TYPE_CHECKING:
    from rmft_api.sandbox.azure import AzureState
    from rmft_api.sandbox.together import TogetherState

MAX_ARRIVALS_KEPT = 10_000


class SandboxSettings(BaseModel):
    """How the sandbox behaves; every field has a matching `rmft-api sandbox` option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Loopback address to bind.")
    port: int = Field(default=0, ge=0, le=65535, description="0 = any free port.")
    latency_ms: float = Field(default=0.0, ge=0, description="Added before every completion.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per window; None = off.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per window; None = off.")
    window_s: float = Field(default=60.0, gt=0, description="Rate-limit window (60 = per min).")
    models: list[str] = Field(
        default_factory=list, description="Model names served; empty = any name is accepted."
    )
    default_max_tokens: int = Field(default=256, ge=1, description="When a request sets none.")
    shutdown_dates: dict[str, str] = Field(
        default_factory=dict,
        description="`shutdown_date` that /v1/models reports, by model (YYYY-MM-DD); fine-tuned "
        "models inherit their root base's.",
    )
    faults: FaultPlan = Field(default_factory=FaultPlan)
    fine_tuning: FineTuneSettings = Field(default_factory=FineTuneSettings)
    azure: AzureSandboxSettings = Field(default_factory=AzureSandboxSettings)


def check_loopback(host: str) -> None:
    """Refuse anything but a loopback address: the sandbox accepts any key and has no auth."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"sandbox host {host!r} is not a loopback address; use 127.0.0.1, ::1 or localhost "
            "(the sandbox accepts any API key and must not be reachable from other machines)"
        )


class SandboxState:
    """Counters, limiter, fault injector and the providers answering chats, by model."""

    def __init__(self, settings: SandboxSettings, backing: Provider) -> None:
        self.settings = settings
        self.backing = backing
        # Later route modules (fine-tuning) register more models with their own backings.
        self.backings: dict[str, Provider] = {}
        self.models: list[str] = list(settings.models)
        self.limiter = ServerRateLimiter(
            rpm=settings.rpm, tpm=settings.tpm, window_s=settings.window_s
        )
        self.faults = FaultInjector(settings.faults)
        self.requests: Counter[str] = Counter()  # by path
        self.responses: Counter[int] = Counter()  # by status code
        self.rate_limited = 0  # 429s from the limiter (not injected)
        self.too_large = 0
        self.completions = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # The bill by model: [completions, prompt tokens, completion tokens] answered.
        self.billed_by_model: dict[str, list[int]] = {}
        self.dropped = 0  # connections closed with no response
        # time.monotonic() of each chat request reaching the limiter, for rate checks in tests.
        self.chat_arrivals: deque[float] = deque(maxlen=MAX_ARRIVALS_KEPT)
        self.files = FileStore(settings.fine_tuning.work_dir)
        self.jobs = FineTuningJobs(self)  # registers the models it trains in `backings`
        self.together: TogetherState | None = None  # set by the Together routes
        self.azure: AzureState | None = None  # set by the Azure routes

    def backing_for(self, model: str) -> Provider:
        return self.backings.get(model, self.backing)

    def known_model(self, model: str) -> bool:
        return not self.models or model in self.models or model in self.backings

    def listed_models(self) -> list[str]:
        names = list(self.models) or [self.backing.spec]
        return names + [m for m in self.backings if m not in names]

    def record_arrival(self) -> None:
        self.chat_arrivals.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "responses": {str(k): v for k, v in self.responses.items()},
            "faults": dict(self.faults.injected),
            "rate_limited": self.rate_limited,
            "too_large": self.too_large,
            "completions": self.completions,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "billed_by_model": {m: list(v) for m, v in self.billed_by_model.items()},
            "dropped": self.dropped,
            "files": len(self.files.files),
            "fine_tuning_jobs": {job.id: job.status for job in self.jobs.jobs.values()},
            "chat_arrivals": list(self.chat_arrivals),
        }
