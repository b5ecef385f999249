"""Fine-tuning on Together AI through the `together` SDK (3.x), behind the `Trainer` protocol.

Together trains LoRA (or full) SFT on OpenAI-style chat JSONL and serves the result on its
OpenAI-compatible chat endpoint, so a job's output model is the next policy
`openai/<output model>` (policy.base_url = `<together root>/v1`). Iteration i+1 continues
iteration i's job with `from_checkpoint` (init_from = previous).

Never pays twice, as the OpenAI trainer: every upload and job create is announced in the run's
registry (`<run>/together/openai_ft.json`, the same format) before the call, sent once with SDK
retries off, and after an unknown outcome looked up, never sent again by this process
(create_once.py). Together jobs carry no metadata, so the job's
suffix carries the tag instead: `<suffix>-<12 hex of sha256(run, iteration, data, attempt)>`,
found again in `fine_tuning.list()`. Files are found by name (which holds the data's sha256)
and size; Together also refuses a second upload of the same checksum (409 → the existing id).

A refused create (401/403, or a model that cannot be fine-tuned) is final
(TrainingUnavailableError naming the alternatives); 402/429 credit errors stop the run
(QuotaExhaustedError). The key comes from the environment only and is scrubbed from messages.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import together
from pydantic import Field

from rmft_api.config import Config, TogetherTrainerConfig
from rmft_api.credentials import read_secret, scrub, scrub_url
from rmft_api.errors import (
    ConfigError,
    QuotaExhaustedError,
    RmftError,
    StateError,
    TrainingError,
    TrainingUnavailableError,
    TransientProviderError,
)
from rmft_api.providers.retry import RetryPolicy, server_wait_s
from rmft_api.schema import JobProgress, JobRef, Record
from rmft_api.store import read_json, write_json_atomic
from rmft_api.trainers.base import JobFailedError, is_terminal
from rmft_api.trainers.crash import crash_point
from rmft_api.trainers.create_once import CreatePolicy
from rmft_api.trainers.openai_ft_api import ALTERNATIVES
from rmft_api.trainers.openai_ft_registry import JobRecord, RegistryFile, UploadRecord, job_ref

log = logging.getLogger(__name__)
T = TypeVar("T")

OUTPUTS_FILE = "together_outputs.json"
# Together's statuses → the protocol's (trainers/base.py); others are kept verbatim (in progress).
STATUS = {
    "pending": "validating_files",
    "queued": "queued",
    "running": "running",
    "compressing": "running",
    "uploading": "running",
    "completed": "succeeded",
    "error": "failed",
    "user_error": "failed",
    "cancelled": "cancelled",
}
_LOSS = re.compile(r"loss[=: ]+([-+0-9.eE]+)")


class TrainedOutputs(Record):
    """Output models of this run's finished jobs: what a later job continues from."""

    outputs: dict[str, str] = Field(default_factory=dict)  # output model → job id
    roots: dict[str, str] = Field(default_factory=dict)  # output model → root base model


class TogetherFineTuner:
    """The `Trainer` protocol over Together's fine-tuning API; one instance per run."""

    def __init__(
        self,
        config: TogetherTrainerConfig,
        *,
        run_id: str,
        state_dir: Path,
        rng: np.random.Generator | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.state_dir = Path(state_dir)
        self.registry = RegistryFile(self.state_dir, run_id=run_id)
        self.policy = RetryPolicy(max_attempts=config.max_retries + 1)
        self.rng = rng if rng is not None else np.random.default_rng(config.seed)
        self._sleep = sleep
        self.creates = CreatePolicy(
            attempts=config.create_attempts,
            settle_s=config.create_settle_s,
            classify=self._classify_create,
            retry=self.policy,
            rng=self.rng,
            sleep=sleep,
        )
        self._key = read_secret(config.api_key_env) or ""
        if not self._key:
            raise ConfigError(
                f"{config.api_key_env} is not set: export your Together API key (read from the "
                "environment only)"
            )
        self.client = together.Together(
            api_key=self._key,
            base_url=config.base_url.rstrip("/"),
            max_retries=0,  # a retried create would be a duplicate, billable job
            timeout=config.timeout_s,
        )

    @classmethod
    def for_run(cls, cfg: Config, *, run_id: str, state_dir: Path) -> TogetherFineTuner:
        if not isinstance(cfg.trainer, TogetherTrainerConfig):
            raise ConfigError(f'trainer.kind is {cfg.trainer.kind!r}, not "together"')
        return cls(cfg.trainer, run_id=run_id, state_dir=state_dir)

    def close(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------- protocol

    def submit(
        self, train_file: Path, *, base_policy: str, iteration: int, out_dir: Path
    ) -> JobRef:
        """Upload the file and create the job, each at most once; re-attach to this iteration's
        job when it exists (a failed or cancelled one is retried as a new attempt)."""
        start = self.start_of(base_policy)
        if not train_file.is_file():
            raise TrainingError(f"training file not found: {train_file}")
        sha = _sha256(train_file)
        record = self.registry.latest_job(iteration, sha, start)
        announced = False
        if record is None:
            record = self._new_record(iteration, sha, start, attempt=1)
        elif record.job_id is None:
            announced = True
        else:
            job = self._read(functools.partial(self.client.fine_tuning.retrieve, record.job_id))
            if STATUS.get(str(job.status)) not in ("failed", "cancelled"):
                return self._ref(job, base_policy, iteration, train_file, sha)
            record = self._new_record(iteration, sha, start, attempt=record.attempt + 1)
        file_id = self._upload(train_file, sha)
        job = self._create_job(record, file_id, announced=announced)
        return self._ref(job, base_policy, iteration, train_file, sha)

    def poll(self, ref: JobRef) -> JobRef:
        job = self._read(functools.partial(self.client.fine_tuning.retrieve, _job_id(ref)))
        status = STATUS.get(str(job.status), str(job.status))
        update: dict[str, Any] = {"status": status}
        events = self._events(job.id)
        progress = _progress(events)
        if progress is not None:
            update["progress"] = progress
        if status == "succeeded":
            output = job.x_model_output_name
            if not output:
                raise TrainingError(f"job {job.id} completed without a model_output_name")
            self._record_output(output, job.id, root=self._root_of(ref.base_policy))
            update["result_policy"] = f"openai/{output}"
            update["checkpoints"] = self._checkpoints(job.id)
            if job.token_count and job.n_epochs:
                update["trained_tokens"] = int(job.token_count) * int(job.n_epochs)
        updated = ref.model_copy(update=update)
        if is_terminal(status):
            self.registry.record_status(job.id, status)
        if status == "failed":
            reason = next((e.message for e in reversed(events) if e.level == "error"), None)
            updated = updated.model_copy(update={"error": reason or "no reason given"})
            raise JobFailedError(f"Together job {job.id} failed: {updated.error}", ref=updated)
        return updated

    def cancel(self, ref: JobRef) -> JobRef:
        job_id = _job_id(ref)
        job = self._read(functools.partial(self.client.fine_tuning.cancel, job_id))
        status = STATUS.get(str(job.status), str(job.status))
        self.registry.record_status(job_id, status)
        return ref.model_copy(update={"status": status, "error": "cancelled by the user"})

    def registered_jobs(self) -> list[JobRef]:
        """Unfinished jobs of the registry, and those whose create was never answered but that
        Together lists (found by their suffix)."""
        found = []
        for record in self.registry.unanswered():
            job = self._find_job(record.metadata.get("suffix", ""))
            status = STATUS.get(str(job.status), str(job.status)) if job is not None else ""
            if job is not None:  # its id is known now: recorded, so a resume re-attaches
                self.registry.save_job(record.model_copy(update={"job_id": str(job.id)}))
            if job is not None and not is_terminal(status):
                found.append(job_ref(record, "together", job_id=str(job.id), status=status))
        return self.registry.unfinished("together") + found

    def _find_job(self, suffix: str) -> Any:
        """The newest job with this suffix (the run's tag), or None."""
        if not suffix:
            return None
        listed = self._read(self.client.fine_tuning.list)
        return next((j for j in listed.data if j.suffix == suffix), None)

    def start_of(self, base_policy: str) -> str:
        """What a job on `base_policy` starts from: a base model, or (continuing) the output
        model of an earlier job of this run."""
        backend, _, model = base_policy.partition("/")
        if backend == "openai" and model in self._outputs().outputs:
            if self.config.init_from == "base":
                return self._root_of(base_policy)
            return model
        if self.config.model is not None:
            return self.config.model
        if backend != "openai" or not model:
            raise TrainingError(
                f"the Together trainer fine-tunes openai/<model> policies served by Together, "
                f"not {base_policy!r}; set trainer.model to the Together base model"
            )
        return model

    # ---------------------------------------------------------------- creates, at most once

    def _new_record(self, iteration: int, sha: str, start: str, *, attempt: int) -> JobRecord:
        record = self.registry.new_job(iteration, sha, start, attempt=attempt)
        tag = hashlib.sha256(f"{self.run_id}|{iteration}|{sha}|{attempt}".encode()).hexdigest()
        suffix = f"{self.config.suffix}-{tag[:12]}".lstrip("-")
        return record.model_copy(update={"metadata": {**record.metadata, "suffix": suffix}})

    def _upload(self, path: Path, sha: str) -> str:
        record = self.registry.upload(sha)
        if record is not None and record.file_id is not None:
            return record.file_id
        announced = record is not None
        if record is None:
            record = UploadRecord(
                sha256=sha,
                filename=f"rmft-{_slug(self.run_id)}-{sha[:16]}.jsonl",
                bytes=path.stat().st_size,
                requested_at=time.time(),
            )
        upload = record
        # The SDK names the upload after the file: a copy under the name that finds it again.
        named = self.state_dir / "uploads" / upload.filename
        named.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, named)

        def find() -> str | None:
            listed = self._read(self.client.files.list)
            hit = [
                f for f in listed.data if f.filename == upload.filename and f.bytes == upload.bytes
            ]
            return str(hit[-1].id) if hit else None

        def create() -> str:
            return str(self.client.files.upload(file=named, purpose="fine-tune", check=True).id)

        file_id = self.creates.create(
            f"upload of {path.name}",
            announce=lambda: self.registry.save_upload(upload),
            lookup=find,
            create=create,
            announced_at=upload.requested_at if announced else None,
            free=True,  # a second stored copy costs nothing: a 5xx is looked up, then re-sent
        )
        self.registry.save_upload(upload.model_copy(update={"file_id": file_id}))
        return file_id

    def _create_job(self, record: JobRecord, file_id: str, *, announced: bool) -> Any:
        c = self.config
        suffix = record.metadata["suffix"]
        continuing = record.model in self._outputs().outputs
        root = self._outputs().roots.get(record.model, record.model)
        params: dict[str, Any] = {
            "training_file": file_id,
            "n_epochs": c.n_epochs,
            "batch_size": c.batch_size,
            "learning_rate": c.learning_rate,
            "lora": c.lora,
            "lora_r": c.lora_r,
            "lora_alpha": c.lora_alpha,
            "suffix": suffix,
            "random_seed": _job_seed(c.seed, record.iteration),
            "train_on_inputs": "auto",  # conversational data: loss on the assistant turns
        }
        if continuing:
            params["from_checkpoint"] = self._outputs().outputs[record.model]
        else:
            params["model"] = record.model

        def create() -> Any:
            # The limits of the root model; the SDK would otherwise ask for a checkpoint's.
            limits = self.client.fine_tuning.model_limits(model_name=root)
            return self.client.fine_tuning.create(model_limits=limits, **params)

        job = self.creates.create(
            f"Together job for iteration {record.iteration}",
            announce=lambda: self.registry.save_job(record),
            lookup=lambda: self._find_job(suffix),
            create=create,
            announced_at=record.requested_at if announced else None,
        )
        crash_point("together:job-created")  # created on the server, not yet recorded here
        self.registry.save_job(record.model_copy(update={"job_id": job.id}))
        log.info("Together job %s created (iteration %d)", job.id, record.iteration)
        return job

    def _classify_create(self, e: Exception, what: str) -> RmftError | None:
        if isinstance(e, together.TogetherError):
            return self.classify(e, what, creating=True)
        if isinstance(e, ValueError):  # the SDK's own checks of the request
            return TrainingError(f"{what}: {self.scrub(e)}")
        return None

    # ---------------------------------------------------------------- reads

    def _read(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except together.TogetherError as e:
                error = self.classify(e, "reading from Together")
                if not isinstance(error, TransientProviderError) or (
                    attempt >= self.policy.max_attempts
                ):
                    raise error from e
            self._sleep(self.policy.wait_s(error, attempt, self.rng))

    def _events(self, job_id: str) -> list[Any]:
        try:
            return list(
                self._read(functools.partial(self.client.fine_tuning.list_events, job_id)).data
            )
        except (TrainingError, TransientProviderError) as e:
            log.info("no events for %s: %s", job_id, e)
            return []

    def _checkpoints(self, job_id: str) -> list[str]:
        try:
            page = self._read(functools.partial(self.client.fine_tuning.list_checkpoints, job_id))
        except (TrainingError, TransientProviderError) as e:
            log.info("no checkpoints for %s: %s", job_id, e)
            return []
        return [str(c.path) for c in sorted(page.data, key=lambda c: c.step)]

    def classify(
        self, e: together.TogetherError, what: str, *, creating: bool = False
    ) -> RmftError:
        where = scrub_url(self.config.base_url)
        if isinstance(e, together.APIStatusError):
            status = e.status_code
            body = e.body if isinstance(e.body, dict) else {}
            error = body.get("error") if isinstance(body.get("error"), dict) else body
            message = self.scrub((error or {}).get("message") or e.message)
            code = str((error or {}).get("code") or "")
            if status == 402 or "insufficient" in code or "credit" in message.lower():
                return QuotaExhaustedError(
                    f"{what}: out of credit at {where} ({status}): {message} — add credit, "
                    "then resume the run (nothing is lost or paid twice)"
                )
            if status in (408, 409, 429) or status >= 500:
                return TransientProviderError(
                    f"{what}: {status} from {where}: {message}",
                    retry_after_s=server_wait_s(e.response.headers, message),
                )
            if status in (401, 403) or (creating and status in (400, 404)):
                return TrainingUnavailableError(
                    f"{what}: refused by {where} ({status}): {message} — check "
                    f"{self.config.api_key_env} and trainer.model. {ALTERNATIVES}"
                )
            return TrainingError(f"{what}: rejected by {where} ({status}): {message}")
        if isinstance(e, together.APIConnectionError):  # timeouts included
            return TransientProviderError(f"{what}: no answer from {where}: {self.scrub(e)}")
        return TrainingError(f"{what}: Together client error: {self.scrub(e)}")

    def scrub(self, e: object) -> str:
        return scrub(e)

    # ---------------------------------------------------------------- outputs

    def _outputs(self) -> TrainedOutputs:
        path = self.state_dir / OUTPUTS_FILE
        return read_json(path, TrainedOutputs) if path.is_file() else TrainedOutputs()

    def _record_output(self, output: str, job_id: str, *, root: str) -> None:
        outputs = self._outputs()
        if outputs.outputs.get(output) == job_id:
            return
        write_json_atomic(
            self.state_dir / OUTPUTS_FILE,
            TrainedOutputs(
                outputs={**outputs.outputs, output: job_id}, roots={**outputs.roots, output: root}
            ),
        )

    def _root_of(self, base_policy: str) -> str:
        model = base_policy.partition("/")[2]
        roots = self._outputs().roots
        if model in roots:
            return roots[model]
        return self.config.model or model

    def _ref(
        self, job: Any, base_policy: str, iteration: int, train_file: Path, sha: str
    ) -> JobRef:
        created = job.created_at.timestamp() if job.created_at is not None else None
        return JobRef(
            backend="together",
            job_id=str(job.id),
            status=STATUS.get(str(job.status), str(job.status)),
            iteration=iteration,
            base_policy=base_policy,
            train_file=str(train_file),
            train_file_sha256=sha,
            file_id=job.training_file,
            metadata={"suffix": str(job.suffix or "")},
            created_at=created,
        )


def _progress(events: list[Any]) -> JobProgress | None:
    for event in reversed(events):  # oldest first: the last one with a step is the latest
        if event.step is None:
            continue
        match = _LOSS.search(event.message or "")
        return JobProgress(
            step=int(event.step),
            total_steps=int(event.total_steps) if event.total_steps is not None else None,
            loss=float(match.group(1)) if match else None,
        )
    return None


def _job_id(ref: JobRef) -> str:
    if ref.backend != "together":
        raise StateError(f"job {ref.job_id} is a {ref.backend} job, not a Together one")
    return ref.job_id


def _job_seed(seed: int, iteration: int) -> int:
    state = np.random.SeedSequence([seed, iteration]).generate_state(1)[0]
    return int(state) % 2**31


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:64]
