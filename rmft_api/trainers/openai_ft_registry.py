"""What a run asked the fine-tuning service to create: `<state_dir>/openai_ft.json`.

Each upload and job create is written here (atomically) before the call — the "intent", without
an id — and again with the id once the answer arrives. An intent without an id means the answer
was lost (a timeout, a crash): the object may exist on the server and must be looked up before
anything is created again. Holds ids, names, sizes and hashes; never a key.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from rmft_api.errors import StateError
from rmft_api.schema import SCHEMA_VERSION, TERMINAL_JOB_STATUSES, JobRef, Record
from rmft_api.store import read_json, write_json_atomic

REGISTRY_FILE = "openai_ft.json"
Backend = Literal["openai", "azure", "together"]


class UploadRecord(Record):
    sha256: str
    filename: str  # carries the sha, so a lost upload is found by name and size
    bytes: int
    file_id: str | None = None  # None: announced, its answer never received
    requested_at: float


class JobRecord(Record):
    iteration: int
    attempt: int = 1  # a new attempt only after the previous job failed or was cancelled
    model: str
    data_sha256: str
    metadata: dict[str, str]  # the job's metadata: what finds it again on the server
    job_id: str | None = None  # None: announced, its answer never received
    status: str | None = None  # the last status seen
    requested_at: float


class FineTuneRegistry(Record):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    uploads: list[UploadRecord] = Field(default_factory=list)
    jobs: list[JobRecord] = Field(default_factory=list)


class RegistryFile:
    """The registry of one run, read and replaced whole on every change (it stays small)."""

    def __init__(self, state_dir: Path, *, run_id: str) -> None:
        self.path = Path(state_dir) / REGISTRY_FILE
        self.run_id = run_id

    def load(self) -> FineTuneRegistry:
        if not self.path.is_file():
            return FineTuneRegistry(run_id=self.run_id)
        registry = read_json(self.path, FineTuneRegistry)
        if registry.run_id != self.run_id:
            raise StateError(f"{self.path} belongs to run {registry.run_id!r}, not {self.run_id!r}")
        return registry

    def upload(self, sha: str) -> UploadRecord | None:
        return next((u for u in self.load().uploads if u.sha256 == sha), None)

    def save_upload(self, record: UploadRecord) -> None:
        registry = self.load()
        uploads = [u for u in registry.uploads if u.sha256 != record.sha256] + [record]
        write_json_atomic(self.path, registry.model_copy(update={"uploads": uploads}))

    def latest_job(self, iteration: int, sha: str, model: str) -> JobRecord | None:
        """The newest attempt for this iteration, data and model."""
        mine = [
            j
            for j in self.load().jobs
            if (j.iteration, j.data_sha256, j.model) == (iteration, sha, model)
        ]
        return max(mine, key=lambda j: j.attempt) if mine else None

    def save_job(self, record: JobRecord) -> None:
        registry = self.load()
        key = _job_key(record)
        jobs = [j for j in registry.jobs if _job_key(j) != key] + [record]
        write_json_atomic(self.path, registry.model_copy(update={"jobs": jobs}))

    def record_status(self, job_id: str, status: str) -> None:
        for record in self.load().jobs:
            if record.job_id == job_id and record.status != status:
                self.save_job(record.model_copy(update={"status": status}))

    def unfinished(self, backend: Backend) -> list[JobRef]:
        """Jobs created (an id recorded) whose last seen status is not terminal, as refs of
        `backend` (enough to poll or cancel them; job.json may not hold them yet)."""
        return [
            job_ref(j, backend, job_id=j.job_id, status=j.status or "queued")
            for j in self.load().jobs
            if j.job_id is not None and j.status not in TERMINAL_JOB_STATUSES
        ]

    def unanswered(self) -> list[JobRecord]:
        """Job creates announced whose answer never came (the job may exist on the server)."""
        return [j for j in self.load().jobs if j.job_id is None]

    def new_job(self, iteration: int, sha: str, model: str, *, attempt: int) -> JobRecord:
        """A job record (not saved yet) with the metadata that tags the job on the server."""
        metadata = {
            "run_id": self.run_id[:512],  # OpenAI: values ≤ 512 characters, ≤ 16 pairs
            "iteration": str(iteration),
            "data_sha": sha,
            "attempt": str(attempt),
        }
        return JobRecord(
            iteration=iteration,
            attempt=attempt,
            model=model,
            data_sha256=sha,
            metadata=metadata,
            requested_at=time.time(),
        )


def job_ref(record: JobRecord, backend: Backend, *, job_id: str, status: str) -> JobRef:
    """A ref to the job of `record` with enough to poll or cancel it."""
    return JobRef(
        backend=backend,
        job_id=job_id,
        status=status,
        iteration=record.iteration,
        base_policy=f"openai/{record.model}",
        train_file="",
        train_file_sha256=record.data_sha256,
        metadata=record.metadata,
    )


def _job_key(record: JobRecord) -> tuple[int, str, str, int]:
    return (record.iteration, record.data_sha256, record.model, record.attempt)
