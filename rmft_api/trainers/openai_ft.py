"""Fine-tuning through the OpenAI API, or any OpenAI-compatible fine-tuning service (`base_url`).

Never pays twice. The SDK sends no idempotency key, so a `files.create` or
`fine_tuning.jobs.create` that timed out may still have created a billable object. Every create
is therefore announced in the run's registry (openai_ft_registry.py) before the call, sent once
with SDK retries off, and after an unknown outcome never sent again by this process: it is looked
up on the server (create_once.py) — files by name (which carries the data's sha256) and size,
jobs by their metadata {run_id, iteration, data_sha, attempt} (openai_ft_api.py) — and on
resume an announced create without a recorded id is looked up before anything is created.
Reads (retrieve, list, events) are retried by our own policy.

A refused create (403, or a model not available for fine-tuning) raises TrainingError naming
the alternatives, since OpenAI is winding down self-serve fine-tuning (REFERENCE §4); 429
insufficient_quota raises QuotaExhaustedError. The key comes from the environment only and is
scrubbed from every message.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import openai
from openai.types.fine_tuning import FineTuningJob

from rmft_api.config import Config, OpenAITrainerConfig
from rmft_api.errors import ConfigError, RmftError, StateError, TrainingError
from rmft_api.providers.retry import RetryPolicy
from rmft_api.schema import JobRef
from rmft_api.trainers.base import JobFailedError, is_terminal
from rmft_api.trainers.create_once import CreatePolicy
from rmft_api.trainers.openai_ft_api import (
    ALTERNATIVES,
    PURPOSE,
    FineTuneAPI,
    RejectedRequest,
    error_text,
)
from rmft_api.trainers.openai_ft_registry import (
    REGISTRY_FILE,
    JobRecord,
    RegistryFile,
    UploadRecord,
    job_ref,
)

__all__ = ["ALTERNATIVES", "REGISTRY_FILE", "OpenAIFineTuner"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class OpenAIFineTuner:
    """The `Trainer` protocol over the fine-tuning API; one instance per run (not thread-safe)."""

    backend: ClassVar[Literal["openai", "azure"]] = "openai"  # JobRef.backend of its jobs

    def __init__(
        self,
        config: OpenAITrainerConfig,
        *,
        run_id: str,
        state_dir: Path,
        base_url: str | None = None,
        rng: np.random.Generator | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """
        Args:
            state_dir: where the registry (openai_ft.json) lives: the run directory.
            base_url: the service; default `config.base_url`, else api.openai.com.
            rng: jitter of the retry backoff; default seeded with `config.seed`.
            sleep: how waits are slept (tests pass a recorder).
        """
        self.config = config
        self.run_id = run_id
        self.registry = RegistryFile(state_dir, run_id=run_id)
        self.api = FineTuneAPI(
            base_url=base_url or config.base_url,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            policy=RetryPolicy(max_attempts=config.max_retries + 1),
            rng=rng if rng is not None else np.random.default_rng(config.seed),
            sleep=sleep,
            lookup_window=config.lookup_window,
        )
        self._sleep = sleep
        self.creates = CreatePolicy(
            attempts=config.create_attempts,
            settle_s=config.create_settle_s,
            classify=self._classify_create,
            retry=self.api.policy,
            rng=self.api.rng,
            sleep=sleep,
        )

    @classmethod
    def for_run(cls, cfg: Config, *, run_id: str, state_dir: Path) -> OpenAIFineTuner:
        """The trainer of a run: `[trainer]`, its base_url defaulting to `policy.base_url`."""
        if not isinstance(cfg.trainer, OpenAITrainerConfig):
            raise ConfigError(f'trainer.kind is {cfg.trainer.kind!r}, not "openai"')
        base_url = cfg.trainer.base_url or cfg.policy.base_url
        return cls(cfg.trainer, run_id=run_id, state_dir=state_dir, base_url=base_url)

    @property
    def base_url(self) -> str:
        return self.api.base_url

    def close(self) -> None:
        self.api.close()

    # ---------------------------------------------------------------- protocol

    def submit(
        self, train_file: Path, *, base_policy: str, iteration: int, out_dir: Path
    ) -> JobRef:
        """Upload the file and create the job, each at most once per run; re-attach to a job
        already created for this iteration and data (a failed or cancelled one is retried as a
        new attempt). `out_dir` is unused: the result lives on the service."""
        model = self.model_for(base_policy)
        if not train_file.is_file():
            raise TrainingError(f"training file not found: {train_file}")
        sha = _sha256(train_file)
        record = self.registry.latest_job(iteration, sha, model)
        announced = False  # an earlier create whose answer never came: the job may exist
        if record is None:
            record = self.registry.new_job(iteration, sha, model, attempt=1)
        elif record.job_id is None:
            announced = True
        else:
            job = self.api.retrieve_job(record.job_id)
            if job.status not in ("failed", "cancelled"):
                return self._ref(job, base_policy, iteration, train_file, sha)
            record = self.registry.new_job(iteration, sha, model, attempt=record.attempt + 1)
        file_id = self._upload(train_file, sha)
        job = self._create_job(record, file_id, announced=announced)
        return self._ref(job, base_policy, iteration, train_file, sha)

    def poll(self, ref: JobRef) -> JobRef:
        """The job's state, its latest loss (from the events), and on success the `ft:` model,
        billed tokens and checkpoints. Raises JobFailedError when it failed."""
        job = self.api.retrieve_job(_job_id(ref, self.backend))
        update: dict[str, Any] = {"status": job.status, "trained_tokens": job.trained_tokens}
        if job.status not in ("validating_files", "queued"):
            progress = self.api.progress(job.id)
            if progress is not None:
                update["progress"] = progress
        error = error_text(job)
        if error is not None:
            update["error"] = error
        if job.status == "succeeded":
            if not job.fine_tuned_model:
                raise TrainingError(f"job {job.id} succeeded without a fine_tuned_model")
            update["result_policy"] = f"openai/{job.fine_tuned_model}"
            update["checkpoints"] = self.api.checkpoints(job.id)
        updated = ref.model_copy(update=update)
        if is_terminal(job.status):
            self.registry.record_status(job.id, job.status)
        if job.status == "failed":
            reason = updated.error or "no reason given"
            raise JobFailedError(f"fine-tuning job {job.id} failed: {reason}", ref=updated)
        return updated

    def cancel(self, ref: JobRef) -> JobRef:
        job_id = _job_id(ref, self.backend)
        try:
            job = self.api.read(
                functools.partial(self.api.client.fine_tuning.jobs.cancel, job_id),
                f"cancelling job {job_id}",
            )
        except RejectedRequest:  # already finished: say how
            job = self.api.retrieve_job(job_id)
        self.registry.record_status(job.id, job.status)
        error = error_text(job) or ("cancelled by the user" if job.status == "cancelled" else None)
        return ref.model_copy(update={"status": job.status, "error": error})

    def registered_jobs(self) -> list[JobRef]:
        """Unfinished jobs of the registry, and those whose create was never answered but that
        the service lists (found by their metadata)."""
        found = []
        for record in self.registry.unanswered():
            job = self.api.find_job(record.metadata)
            if job is not None:  # its id is known now: recorded, so a resume re-attaches
                self.registry.save_job(record.model_copy(update={"job_id": job.id}))
            if job is not None and not is_terminal(job.status):
                found.append(job_ref(record, self.backend, job_id=job.id, status=job.status))
        return self.registry.unfinished(self.backend) + found

    def wait(
        self,
        ref: JobRef,
        *,
        on_update: Callable[[JobRef], None] | None = None,
        timeout_s: float | None = None,
    ) -> JobRef:
        """Poll until the job ends: after `poll_interval_s`, growing ×1.5 up to
        `max_poll_interval_s` while nothing changes. Raises JobFailedError when it failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = self.config.poll_interval_s
        ref = self.poll(ref)
        while not is_terminal(ref.status):
            if on_update is not None:
                on_update(ref)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TrainingError(f"job {ref.job_id} still {ref.status} after {timeout_s:g}s")
            self._sleep(delay)
            before = (ref.status, ref.progress.step)
            ref = self.poll(ref)
            changed = (ref.status, ref.progress.step) != before
            grown = min(delay * 1.5, self.config.max_poll_interval_s)
            delay = self.config.poll_interval_s if changed else grown
        if on_update is not None:
            on_update(ref)
        return ref

    def model_for(self, base_policy: str) -> str:
        """The model a job fine-tunes for the policy `openai/<model>` (with init_from = base,
        the base model of an `ft:<base>:...` policy)."""
        backend, _, model = base_policy.partition("/")
        if backend != "openai" and self.config.model is not None:
            # Episodes from another kind of policy (a local model, a classic agent): distil them
            # into the configured OpenAI model.
            return self.config.model
        if backend != "openai" or not model:
            raise TrainingError(
                f"the OpenAI trainer fine-tunes openai/<model> policies, not {base_policy!r}; "
                'for a local hf/<dir> model use [trainer] kind = "lora", or set trainer.model to '
                "the OpenAI model to distil the episodes into"
            )
        if self.config.init_from == "base" and model.startswith("ft:"):
            model = model.split(":")[1]
        return model

    # ---------------------------------------------------------------- creates, at most once

    def _upload(self, path: Path, sha: str) -> str:
        record = self.registry.upload(sha)
        if record is not None and record.file_id is not None:
            if self.api.file_exists(record.file_id):
                return record.file_id
            record = None  # deleted on the server since: upload again
        announced = record is not None
        if record is None:
            record = UploadRecord(
                sha256=sha,
                filename=f"rmft-{_slug(self.run_id)}-{sha[:16]}.jsonl",
                bytes=path.stat().st_size,
                requested_at=time.time(),
            )
        upload = record

        def create() -> str:
            with path.open("rb") as f:
                created = self.api.client.files.create(file=(upload.filename, f), purpose=PURPOSE)
            return str(created.id)

        file_id = self.creates.create(
            f"upload of {path.name}",
            announce=lambda: self.registry.save_upload(upload),
            lookup=lambda: self.api.find_file(upload.filename, upload.bytes),
            create=create,
            announced_at=upload.requested_at if announced else None,
            free=True,  # a second stored copy costs nothing: a 5xx is looked up, then re-sent
        )
        self.registry.save_upload(upload.model_copy(update={"file_id": file_id}))
        log.info("training file %s uploaded as %s", path, file_id)
        return file_id

    def _create_job(self, record: JobRecord, file_id: str, *, announced: bool) -> FineTuningJob:
        c = self.config
        hyperparameters = {
            "n_epochs": c.n_epochs,
            "batch_size": c.batch_size,
            "learning_rate_multiplier": c.learning_rate_multiplier,
        }
        params: dict[str, Any] = {
            "model": record.model,
            "training_file": file_id,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            "seed": self._job_seed(record.iteration),
            "metadata": record.metadata,
        }
        if c.suffix:
            params["suffix"] = c.suffix
        params.update(self._service_params())
        job = self.creates.create(
            f"fine-tuning job for iteration {record.iteration}",
            announce=lambda: self.registry.save_job(record),
            lookup=lambda: self.api.find_job(record.metadata),
            create=functools.partial(self.api.client.fine_tuning.jobs.create, **params),
            announced_at=record.requested_at if announced else None,
        )
        self.registry.save_job(record.model_copy(update={"job_id": job.id, "status": job.status}))
        log.info("fine-tuning job %s created (iteration %d)", job.id, record.iteration)
        return job

    def _classify_create(self, e: Exception, what: str) -> RmftError | None:
        if isinstance(e, openai.OpenAIError):
            return self.api.classify(e, what, creating=True)
        return None

    def _service_params(self) -> dict[str, Any]:
        """Create parameters a service adds to OpenAI's (Azure: `trainingType`)."""
        return {}

    def _job_seed(self, iteration: int) -> int:
        state = np.random.SeedSequence([self.config.seed, iteration]).generate_state(1)[0]
        return int(state) % 2**31

    def _ref(
        self, job: FineTuningJob, base_policy: str, iteration: int, train_file: Path, sha: str
    ) -> JobRef:
        return JobRef(
            backend=self.backend,
            job_id=job.id,
            status=job.status,
            iteration=iteration,
            base_policy=base_policy,
            train_file=str(train_file),
            train_file_sha256=sha,
            file_id=job.training_file,
            metadata=dict(job.metadata or {}),
            created_at=float(job.created_at),
        )


def _job_id(ref: JobRef, backend: str) -> str:
    if ref.backend != backend:
        raise StateError(f"job {ref.job_id} is a {ref.backend} job, not an {backend} one")
    return ref.job_id


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:64]
