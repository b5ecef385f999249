"""The files of one local LoRA job and the training process's entry point.

`job.json` (LoraJobSpec) is written by the trainer before it starts the process; `status.json`
(LoraStatus) by the process (rank 0), `process.json` (LoraProcess) by the trainer for each start;
`trainer.lock` is flock-ed by the trainer before each start and inherited by the process, so it is
held exactly while a training process lives; `checkpoints/step-N/` by the training loop. `main`
is what `python -m rmft_api.trainers.lora` runs: it reports every failure as status `failed`
with its message (traceback in train.log).
Nothing here imports torch; the training loop (lora_train.py) is imported only to train.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rmft_api.config import LoraTrainerConfig
from rmft_api.errors import TrainingError
from rmft_api.schema import SCHEMA_VERSION, Record
from rmft_api.store import read_json, write_json_atomic
from rmft_api.trainers.crash import hang_point
from rmft_api.trainers.lora_data import read_chat_jsonl

log = logging.getLogger(__name__)

ENTRY_MODULE = "rmft_api.trainers.lora"


class LoraJobSpec(Record):
    """Everything the training process needs; written once per job, read by every rank."""

    schema_version: int = SCHEMA_VERSION
    job_id: str
    iteration: int
    train_file: str  # absolute paths: the process may run elsewhere than the caller's cwd
    train_file_sha256: str
    base_model: str
    policy_base: str  # the base model as the caller named it; the result spec keeps this form
    init_adapter: str | None  # adapter to continue (init_from = previous), else a fresh one
    out_dir: str
    job_dir: str
    seed: int  # the effective seed (config seed mixed with the iteration)
    config: LoraTrainerConfig


class LoraStatus(Record):
    """What the training process reports in status.json (rank 0 writes it)."""

    schema_version: int = SCHEMA_VERSION
    job_id: str
    status: str  # a JobStatus
    pid: int | None = None
    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    loss: float | None = None  # mean loss over the trained tokens of the last step
    tokens_per_s: float | None = None  # all tokens (context + trained) per second, last step
    trained_tokens: int = 0  # label tokens seen so far
    examples: int | None = None
    truncated_examples: int = 0
    resumed_from_step: int | None = None
    error: str | None = None
    updated_at: float = 0.0


class LoraProcess(BaseModel):
    """The launcher process the trainer started (process.json), for liveness checks."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    command: list[str]
    started_at: float
    restarts: int = 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHECKPOINT_COMPLETE = "COMPLETE"  # written last into a checkpoint, before it is flushed and named


def list_checkpoints(job_dir: Path) -> list[Path]:
    """Complete checkpoints (`checkpoints/step-N/` holding the COMPLETE marker), oldest first."""
    root = job_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith("step-")
        and p.name[5:].isdigit()
        and (p / CHECKPOINT_COMPLETE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[5:]))


class StatusReporter:
    """Writes the process's LoraStatus to status.json: rank 0 only, at most every `interval_s`
    unless forced (a status change, a checkpoint, the end)."""

    def __init__(self, spec: LoraJobSpec, *, enabled: bool, interval_s: float = 0.5) -> None:
        self.status = LoraStatus(job_id=spec.job_id, status="queued", pid=os.getpid())
        self._path = Path(spec.job_dir) / "status.json"
        self._enabled = enabled
        self._interval_s = interval_s
        self._last_write = 0.0

    def update(self, *, force: bool = False, **fields: object) -> None:
        now = time.time()
        self.status = self.status.model_copy(update={**fields, "updated_at": now})
        if self._enabled and (force or now - self._last_write >= self._interval_s):
            write_json_atomic(self._path, self.status)
            self._last_write = now


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the training process (`python -m rmft_api.trainers.lora --job FILE`).

    Every failure ends as status `failed` with its message; the traceback goes to train.log.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_MODULE}")
    parser.add_argument("--job", type=Path, required=True, help="the job's job.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = read_json(args.job, LoraJobSpec)
    rank = int(os.environ.get("RANK", "0"))
    reporter = StatusReporter(spec, enabled=rank == 0)
    try:
        reporter.update(status="validating_files", force=True)
        hang_point("lora-validating")
        # Read the data before importing torch: a broken file fails in a fraction of a second.
        rows = read_chat_jsonl(Path(spec.train_file))
        if file_sha256(Path(spec.train_file)) != spec.train_file_sha256:
            raise TrainingError(f"{spec.train_file} changed after the job was submitted")
        from rmft_api.trainers.lora_train import train

        train(spec, rows, reporter)
    except Exception as e:
        log.exception("LoRA job %s failed", spec.job_id)
        message = str(e) if isinstance(e, TrainingError) else f"{type(e).__name__}: {e}"
        reporter.update(status="failed", error=message, force=True)
        return 1
    return 0
