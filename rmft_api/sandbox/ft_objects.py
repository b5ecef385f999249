"""The sandbox's fine-tuning settings and its job objects, in OpenAI's JSON shapes (the
`fine_tuning.job`, `fine_tuning.job.event` and `fine_tuning.job.checkpoint` objects)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from rmft_api.config import LoraTrainerConfig
from rmft_api.schema import JobRef

if TYPE_CHECKING:
    from rmft_api.trainers.lora import LocalLoraTrainer

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _fast_lora() -> LoraTrainerConfig:
    return LoraTrainerConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=1e-3,
        epochs=1,
        batch_size=4,
        max_seq_len=1024,
        checkpoint_every_steps=10,
        keep_checkpoints=3,
    )


class FineTuneSettings(BaseModel):
    """How the sandbox's fine-tuning jobs behave (failures: the fault plan's `jobs`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validating_s: float = Field(default=1.0, ge=0, description="Time in validating_files.")
    queued_s: float = Field(default=1.0, ge=0, description="Time in queued.")
    steps: int = Field(default=10, ge=1, description="Simulated training: steps per job.")
    step_s: float = Field(default=0.2, ge=0, description="Simulated training: time per step.")
    train_local: bool = Field(
        default=True,
        description="With an hf/<dir> backing, train every job for real with the local LoRA "
        "trainer and serve its adapter; False = simulate as with remote backings.",
    )
    lora: LoraTrainerConfig = Field(
        default_factory=_fast_lora,
        description="The local trainer's settings; a job's n_epochs / batch_size / learning-rate "
        "multiplier override epochs / batch_size / learning_rate (× multiplier).",
    )
    max_epochs: int | None = Field(
        default=None, ge=1, description="Cap on the epochs a job trains (keeps demos short)."
    )
    work_dir: str | None = Field(
        default=None, description="Uploaded files and job directories; None = a temp dir."
    )
    max_upload_bytes: int = Field(
        default=512 * 1024**2,
        ge=1,
        description="Largest file `/v1/files` accepts (OpenAI's limit: 512 MB); larger is a 413.",
    )
    organization: str = Field(default="sandbox", description="The org part of ft: names.")
    seed: int = Field(default=0, ge=0, description="Seeds of jobs created without one.")


@dataclass
class SandboxJob:
    id: str
    number: int  # 1-based creation order (what fault rules' `at` counts)
    model: str
    root_model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]  # as asked; "auto" values resolved once validated
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating_files"
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    learning_rate: float | None = None  # as asked by services that send an absolute one
    training_type: dict[str, Any] | None = None  # e.g. Together's {"type": "Lora", ...}
    task: asyncio.Task[None] | None = None
    lora: tuple[LocalLoraTrainer, JobRef] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.model,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": "org-sandbox",
            "result_files": [],
            "status": self.status,
            "validation_file": self.validation_file,
            "training_file": self.training_file,
            "hyperparameters": dict(self.hyperparameters),
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "user_provided_suffix": self.suffix,
            "seed": self.seed,
            "estimated_finish": None,
            "integrations": [],
            "metadata": self.metadata,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": dict(self.hyperparameters)},
            },
        }

    def event(
        self, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        self.events.append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{uuid.uuid4().hex[:24]}",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data or {},
                "type": "metrics" if data else "message",
            }
        )

    def metrics(self, step: int, total: int, loss: float) -> None:
        data = {
            "step": step,
            "total_steps": total,
            "train_loss": loss,
            "train_mean_token_accuracy": max(0.0, min(1.0, 1.0 - loss / 4.0)),
        }
        self.event(f"Step {step}/{total}: training loss={loss:.4f}", data=data)

    def checkpoint(self, name: str, step: int, loss: float | None) -> None:
        self.checkpoints.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt_{uuid.uuid4().hex[:24]}",
                "created_at": int(time.time()),
                "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{step}",
                "fine_tuning_job_id": self.id,
                "metrics": {"step": float(step), "train_loss": loss},
                "step_number": step,
            }
        )

    def finish(self, status: str, error: dict[str, Any] | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = int(time.time())
