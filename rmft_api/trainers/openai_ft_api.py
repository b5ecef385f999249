"""The fine-tuning service through the `openai` SDK: one client with SDK retries off, our retry
policy for reads, errors classified into the RmftError tree with the key scrubbed, and the
lookups that find an object created before a timeout or crash.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import numpy as np
import openai
from openai.pagination import SyncCursorPage
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from rmft_api.credentials import read_secret, scrub, scrub_url
from rmft_api.errors import (
    ConfigError,
    QuotaExhaustedError,
    RmftError,
    TrainingError,
    TrainingUnavailableError,
    TransientProviderError,
)
from rmft_api.providers.retry import RetryPolicy, server_wait_s
from rmft_api.schema import JobProgress

log = logging.getLogger(__name__)
T = TypeVar("T")
Listed = TypeVar("Listed", FileObject, FineTuningJob)

OPENAI_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "EMPTY"  # servers without auth (the sandbox, vLLM); the SDK insists on a key
PURPOSE: Final = "fine-tune"
PAGE_SIZE = 100
EVENTS_SCANNED = 20  # the newest events hold the latest metrics line
ALTERNATIVES = (
    "OpenAI is winding down self-serve fine-tuning (reported: new organisations refused since "
    "May 2026, all new jobs from 2027-01-06). Alternatives: Azure OpenAI ([trainer] kind = "
    '"azure", configs/azure.toml), Together AI ([trainer] kind = "together", '
    "configs/together.toml), another OpenAI-compatible fine-tuning service ([trainer] base_url), "
    'or a local model with [trainer] kind = "lora" (policy hf/<dir>)'
)
# A create refused because the model cannot be fine-tuned here (OpenAI: 400 model_not_available
# "Model ... is not available for fine-tuning or does not exist").
_REFUSAL_CODES = (
    "model_not_available",
    "model_not_found",
    "permission_denied",
    "training_not_available",
)
_REFUSAL_PHRASES = ("not available for fine-tuning", "does not exist", "not supported")
_STEP_LOSS = re.compile(r"Step (\d+)/(\d+): training loss=([-+0-9.eE]+)")


class RejectedRequest(TrainingError):
    """A 4xx other than a refusal of the model: bad parameters, unknown object, unsupported
    filter. `status` is the HTTP status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class FineTuneAPI:
    """One service endpoint; every error that leaves it is an RmftError without the key."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key_env: str,
        timeout_s: float,
        policy: RetryPolicy,
        rng: np.random.Generator,
        sleep: Callable[[float], None],
        lookup_window: int,
    ) -> None:
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.policy = policy
        self.rng = rng
        self.sleep = sleep
        self.lookup_window = lookup_window
        self._api_key = read_api_key(api_key_env, self.base_url)
        self._client: openai.OpenAI | None = None

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            # SDK retries off: a retried create would be a duplicate, billable object.
            self._client = openai.OpenAI(
                api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---------------------------------------------------------------- reads

    def read(self, call: Callable[[], T], what: str) -> T:
        """An idempotent call, retried on transient failures by our policy."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except openai.OpenAIError as e:
                error = self.classify(e, what)
                if not isinstance(error, TransientProviderError):
                    raise error from e
                if attempt >= self.policy.max_attempts:
                    raise error from e
            wait = self.policy.wait_s(error, attempt, self.rng)
            log.info("%s: %s; retrying in %.1fs", what, error, wait)
            self.sleep(wait)

    def retrieve_job(self, job_id: str) -> FineTuningJob:
        return self.read(
            functools.partial(self.client.fine_tuning.jobs.retrieve, job_id),
            f"retrieving job {job_id}",
        )

    def file_exists(self, file_id: str) -> bool:
        try:
            self.read(functools.partial(self.client.files.retrieve, file_id), f"file {file_id}")
        except RejectedRequest as e:
            if e.status in (400, 404):
                return False
            raise
        return True

    def find_file(self, filename: str, size: int) -> str | None:
        """The newest uploaded fine-tune file with this name and size, scanning recent files."""
        for f in self._scan(self.client.files.list, {"purpose": PURPOSE}, "listing files"):
            if f.filename == filename and f.bytes == size:
                return str(f.id)
        return None

    def find_job(self, metadata: Mapping[str, str]) -> FineTuningJob | None:
        """The newest job tagged with all of `metadata`. Servers that ignore the filter are
        filtered here; one that rejects it is scanned without it."""
        jobs = self.client.fine_tuning.jobs
        try:
            for job in self._scan(jobs.list, {"metadata": dict(metadata)}, "looking up the job"):
                if _tagged(job, metadata):
                    return job
            return None
        except RejectedRequest as e:
            if e.status != 400:
                raise
        for job in self._scan(jobs.list, {}, "looking up the job (unfiltered)"):
            if _tagged(job, metadata):
                return job
        return None

    def _scan(
        self, list_page: Callable[..., SyncCursorPage[Listed]], params: dict[str, Any], what: str
    ) -> Iterator[Listed]:
        """Items of a cursor-paged list, newest first, up to `lookup_window` of them."""
        after: str | None = None
        scanned = 0
        while scanned < self.lookup_window:
            kwargs = {**params, "limit": PAGE_SIZE, **({"after": after} if after else {})}
            page = self.read(functools.partial(list_page, **kwargs), what)
            yield from page.data
            scanned += len(page.data)
            if not page.data or not page.has_more:
                return
            after = page.data[-1].id

    def progress(self, job_id: str) -> JobProgress | None:
        """The latest metrics event; None when there is none. Progress is for display: errors
        reading it are logged, not raised."""
        try:
            page = self.read(
                functools.partial(
                    self.client.fine_tuning.jobs.list_events, job_id, limit=EVENTS_SCANNED
                ),
                f"reading the events of {job_id}",
            )
        except (TrainingError, TransientProviderError) as e:
            log.info("no progress for %s: %s", job_id, e)
            return None
        for event in page.data:  # newest first
            found = metrics_of(event)
            if found is not None:
                return found
        return None

    def checkpoints(self, job_id: str) -> list[str]:
        """The job's checkpoint models, oldest first ([] when the service has none)."""
        try:
            page = self.read(
                functools.partial(
                    self.client.fine_tuning.jobs.checkpoints.list, job_id, limit=PAGE_SIZE
                ),
                f"listing the checkpoints of {job_id}",
            )
        except (TrainingError, TransientProviderError) as e:
            log.info("no checkpoints for %s: %s", job_id, e)
            return []
        ordered = sorted(page.data, key=lambda c: c.step_number)
        return [str(c.fine_tuned_model_checkpoint) for c in ordered]

    # ---------------------------------------------------------------- errors

    def classify(self, e: openai.OpenAIError, what: str, *, creating: bool = False) -> RmftError:
        """The RmftError for an SDK error; `creating`: refusals of the model name alternatives."""
        where = scrub_url(self.base_url)
        if isinstance(e, openai.APIStatusError):
            status = e.status_code
            body = e.body if isinstance(e.body, Mapping) else {}
            message = self.scrub(str(body.get("message") or e.message))
            code = str(body.get("code") or "")
            if status == 429 and "insufficient_quota" in (code, str(body.get("type") or "")):
                return QuotaExhaustedError(
                    f"{what}: quota exhausted at {where} (429 insufficient_quota): {message} — "
                    "add credit, then resume the run (nothing is lost or paid twice)"
                )
            if status in (408, 409, 429) or status >= 500:
                wait = server_wait_s(e.response.headers, message)
                return TransientProviderError(
                    f"{what}: {status} from {where}: {message}", retry_after_s=wait
                )
            if status == 401:
                return TrainingError(
                    f"{what}: authentication failed at {where} (401): {message} — check "
                    f"{self.api_key_env}"
                )
            refused = status == 403 or (
                creating
                and status in (400, 404)
                and (code in _REFUSAL_CODES or any(p in message.lower() for p in _REFUSAL_PHRASES))
            )
            if refused or code == "training_not_available":
                # Final: a refusal to train never turns into a success on retry.
                return TrainingUnavailableError(
                    f"{what}: refused by {where} ({status}{', ' + code if code else ''}): "
                    f"{message}. {ALTERNATIVES}"
                )
            return RejectedRequest(
                f"{what}: rejected by {where} ({status}): {message}", status=status
            )
        if isinstance(e, openai.APITimeoutError):
            return TransientProviderError(f"{what}: timed out after {self.timeout_s:g}s at {where}")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__ or e
            return TransientProviderError(
                f"{what}: connection to {where} failed: {self.scrub(cause)}"
            )
        if isinstance(e, openai.APIError):  # a body the SDK could not read
            return TransientProviderError(
                f"{what}: malformed response from {where}: {self.scrub(e)}"
            )
        return TrainingError(f"{what}: OpenAI client error: {self.scrub(e)}")

    def scrub(self, e: object) -> str:
        return scrub(e)


def read_api_key(env: str, base_url: str) -> str:
    """The key from the environment; a placeholder for servers that need none."""
    key = read_secret(env)
    if key:
        return key
    if (urlparse(base_url).hostname or "").endswith("openai.com"):
        raise ConfigError(
            f"{env} is not set: export your API key to fine-tune at {scrub_url(base_url)}, or set "
            "trainer.base_url to another OpenAI-compatible service (`rmft-api sandbox` for a "
            "free dry run)"
        )
    return PLACEHOLDER_KEY


def error_text(job: FineTuningJob) -> str | None:
    """`code: message` of a job's error; None when it has none."""
    error = job.error
    if error is None:
        return None
    # Some servers send an empty object; the SDK builds models without validating them.
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    if not code and not message:
        return None
    return f"{code or 'error'}: {message or 'no message'}"


def metrics_of(event: FineTuningJobEvent) -> JobProgress | None:
    """Step, total steps and training loss of a metrics event (OpenAI's `data`, or its
    "Step 12/100: training loss=0.53" message); None for other events."""
    data = event.data if isinstance(event.data, dict) else {}
    if "step" in data and ("train_loss" in data or event.type == "metrics"):
        loss = data.get("train_loss")
        total = data.get("total_steps")
        return JobProgress(
            step=int(data["step"]),
            total_steps=int(total) if total is not None else None,
            loss=float(loss) if loss is not None else None,
        )
    match = _STEP_LOSS.search(event.message or "")
    if match is None:
        return None
    step, total, loss = match.groups()
    return JobProgress(step=int(step), total_steps=int(total), loss=float(loss))


def _tagged(job: FineTuningJob, metadata: Mapping[str, str]) -> bool:
    found = job.metadata or {}
    return all(found.get(k) == v for k, v in metadata.items())
