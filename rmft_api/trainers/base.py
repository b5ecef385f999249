"""The trainer protocol: submit a chat JSONL file, poll the job, cancel it.

Every backend (OpenAI fine-tuning, local LoRA) speaks OpenAI's job statuses: validating_files →
queued → running → succeeded | failed | cancelled. A status the backend does not document is kept
verbatim and treated as still in progress. The caller persists the `JobRef` returned by `submit`
before polling it, so a restarted run re-attaches to the same job instead of creating another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from rmft_api.errors import TrainingError
from rmft_api.schema import TERMINAL_JOB_STATUSES, JobRef, JobStatus

__all__ = ["JobFailedError", "JobRef", "JobStatus", "RegisteredJobs", "Trainer", "is_terminal"]


def is_terminal(status: str) -> bool:
    """True for succeeded, failed and cancelled; unknown statuses are still in progress."""
    return status in TERMINAL_JOB_STATUSES


class JobFailedError(TrainingError):
    """A job ended in `failed`; `ref` is the final JobRef (with `error` set) to persist."""

    def __init__(self, message: str, *, ref: JobRef) -> None:
        super().__init__(message)
        self.ref = ref


@runtime_checkable
class Trainer(Protocol):
    """A fine-tuning backend. Success yields the next policy's provider spec."""

    def submit(
        self, train_file: Path, *, base_policy: str, iteration: int, out_dir: Path
    ) -> JobRef:
        """Start (or re-attach to) the job training `base_policy` on `train_file`.

        Submitting the same inputs again returns the existing job rather than starting a second.
        `out_dir` is where a local backend saves its result; remote backends may ignore it.
        """
        ...

    def poll(self, ref: JobRef) -> JobRef:
        """The job's current state. On `succeeded`, `result_policy` is the next provider spec
        (e.g. "hf/<base>+<adapter-dir>", "openai/ft:..."); `cancelled` is returned as a status.

        Raises:
            JobFailedError: the job ended in `failed`; the message carries the backend's error.
        """
        ...

    def cancel(self, ref: JobRef) -> JobRef:
        """Stop the job; returns it with status `cancelled` (or its terminal status if it had
        already finished)."""
        ...


@runtime_checkable
class RegisteredJobs(Protocol):
    """A hosted backend that records every job it creates in the run's registry."""

    def registered_jobs(self) -> list[JobRef]:
        """Jobs the registry records as created (with an id) and not known to have ended, e.g.
        one created just before a kill, whose job.json was never written."""
        ...
