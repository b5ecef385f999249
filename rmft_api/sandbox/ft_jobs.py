"""The sandbox's fine-tuning jobs: OpenAI's status progression, events and checkpoints, and
(with a local backing model) real training by the local LoRA trainer.

Each job is driven by a task on the server's event loop, started when it is created:

    validating_files (validating_s; the file is checked with rmft_api.validation)
    → queued (queued_s) → running → succeeded | failed | cancelled

Running trains for real when the sandbox's backing is a local model (`hf/<dir>[+<adapter>]`)
and `train_local` is on: `LocalLoraTrainer` in a subprocess, on the backing model — or, for a
job whose `model` is an `ft:` name this sandbox returned, continuing that job's adapter. Its
losses become metrics events, its checkpoints checkpoint objects, and on success the job's
`ft:` name is served on /v1/chat/completions by an HF provider with the new adapter (loaded on
the first request, off the event loop). With any other backing, training is simulated: `steps`
steps of `step_s` each along a seeded, decreasing loss curve, and the `ft:` name is answered by
the backing itself.

Fine-tuned names follow OpenAI: `ft:<root base>:<organization>:<suffix>:<id>`, the root base being
the model the first job of a chain started from. Billing (`trained_tokens`) is the file's tokens
× epochs, counted as `rmft-api validate` counts them (the backing's tokenizer when it is local).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rmft_api.config import LoraTrainerConfig
from rmft_api.errors import RmftError
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.sandbox.faults import JobFaultRule
from rmft_api.sandbox.ft_objects import TERMINAL, SandboxJob
from rmft_api.schema import Completion, Message
from rmft_api.validation import ValidationReport, validate_file

if TYPE_CHECKING:
    from rmft_api.sandbox.files import StoredFile
    from rmft_api.sandbox.state import SandboxState

log = logging.getLogger(__name__)

LORA_POLL_S = 0.2  # how often a real training job's status file is read
# What OpenAI shows for an "auto" learning-rate multiplier is model-specific; the sandbox trains
# at the configured LoRA learning rate × the multiplier, so "auto" means 1.
AUTO_LR_MULTIPLIER = 1.0


class LazyLocalProvider:
    """Serves a trained adapter: an HF provider built (off the event loop) on its first request,
    so a finished job does not stall the server while the model loads."""

    def __init__(self, spec: str, options: dict[str, Any]) -> None:
        self.spec = spec
        self._options = options
        self._provider: Provider | None = None
        self._lock = asyncio.Lock()

    async def _loaded(self) -> Provider:
        async with self._lock:
            if self._provider is None:
                from rmft_api.providers.registry import resolve

                self._provider = await asyncio.to_thread(resolve, self.spec, **self._options)
        return self._provider

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        provider = await self._loaded()
        return await provider.generate(chats, sampling, request_ids=request_ids)

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()


class FineTuningJobs:
    """All fine-tuning jobs of one sandbox, and the models they produced."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self.settings = state.settings.fine_tuning
        self.jobs: dict[str, SandboxJob] = {}  # creation order
        self.models: dict[str, str] = {}  # ft: name → the root base it was trained from
        self.trained: dict[str, str] = {}  # ft: name → hf spec of its policy (real training)
        self._rng = np.random.default_rng(self.settings.seed)

    def root_of(self, model: str) -> str | None:
        """The root base of a job on `model`; None when `model` cannot be fine-tuned here."""
        if model.startswith("ft:"):
            return self.models.get(model)
        return model if self._state.known_model(model) else None

    def local_policy(self, model: str) -> str | None:
        """The hf spec a job on `model` trains from; None when training is simulated."""
        spec = self._state.backing.spec
        if not (self.settings.train_local and spec.startswith("hf/")):
            return None
        return self.trained.get(model, spec)

    def create(
        self,
        *,
        model: str,
        root_model: str,
        training_file: StoredFile,
        validation_file: str | None,
        hyperparameters: dict[str, Any],
        suffix: str | None,
        seed: int | None,
        metadata: dict[str, str] | None,
    ) -> SandboxJob:
        """Register the job and start its task (call from the server's event loop)."""
        job = SandboxJob(
            id=f"ftjob-{uuid.uuid4().hex[:24]}",
            number=len(self.jobs) + 1,
            model=model,
            root_model=root_model,
            training_file=training_file.id,
            validation_file=validation_file,
            hyperparameters=hyperparameters,
            suffix=suffix,
            seed=seed if seed is not None else int(self._rng.integers(2**31)),
            metadata=metadata,
            created_at=int(time.time()),
        )
        job.event(f"Created fine-tuning job: {job.id}")
        job.event(f"Validating training file: {training_file.id}")
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(
            self._run(job, training_file), name=f"sandbox-{job.id}"
        )
        return job

    async def cancel(self, job: SandboxJob) -> None:
        task = job.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ---------------------------------------------------------------- the job's life

    async def _run(self, job: SandboxJob, stored: StoredFile) -> None:
        try:
            await self._drive(job, stored)
        except asyncio.CancelledError:  # cancelled by the client, or the server is stopping
            self._stop_training(job)
            if job.status not in TERMINAL:
                job.event("Fine-tuning job cancelled")
                job.finish("cancelled")
            raise
        except Exception as e:  # server boundary: a crash fails the job visibly, not silently
            log.exception("sandbox fine-tuning job %s crashed", job.id)
            self._stop_training(job)
            self._fail(job, "internal_error", f"The sandbox failed: {type(e).__name__}: {e}")

    async def _drive(self, job: SandboxJob, stored: StoredFile) -> None:
        settings = self.settings
        await asyncio.sleep(settings.validating_s)
        report = await asyncio.to_thread(self._validate, job, stored)
        fault = self._fault(job)
        if fault is not None and fault.fault == "invalid_file":
            message = fault.message or "The job failed due to an invalid training file."
            code = fault.code or "invalid_training_file"
            return self._fail(job, code, message, param="training_file")
        if not report.ok:
            code, message = "invalid_training_file", _invalid_message(report)
            return self._fail(job, code, message, param="training_file")
        epochs = self._resolve_hyperparameters(job, report)
        job.event("Files validated, moving job to queued state")
        job.status = "queued"
        await asyncio.sleep(settings.queued_s)
        job.status = "running"
        job.event("Fine-tuning job started")
        name = self._ft_name(job)
        if fault is not None and fault.fault == "job_failed":
            await self._simulate(job, name, epochs, stop_after=max(1, settings.steps // 2))
            message = fault.message or "The job failed due to an internal error."
            return self._fail(job, fault.code or "internal_error", message)
        policy = self.local_policy(job.model)
        served: Provider
        if policy is None:
            await self._simulate(job, name, epochs)
            served = self._state.backing
        else:
            result = await self._train(job, stored, name, policy=policy, epochs=epochs)
            if result is None:
                return
            served = LazyLocalProvider(result, self._serving_options())
            self.trained[name] = result
        job.fine_tuned_model = name
        job.trained_tokens = report.tokens.total * epochs
        self.models[name] = job.root_model
        self._state.backings[name] = served
        job.event(f"New fine-tuned model created: {name}")
        job.event("The job has successfully completed")
        job.finish("succeeded")

    def _validate(self, job: SandboxJob, stored: StoredFile) -> ValidationReport:
        tokenizer_dir = None
        spec = self._state.backing.spec
        if spec.startswith("hf/"):
            base = Path(spec.removeprefix("hf/").partition("+")[0])
            tokenizer_dir = base if (base / "tokenizer.json").is_file() else None
        return validate_file(stored.path, model=job.root_model, tokenizer_dir=tokenizer_dir)

    def _resolve_hyperparameters(self, job: SandboxJob, report: ValidationReport) -> int:
        """Replace "auto" by the values used (as OpenAI does once a job runs); the epochs."""
        from rmft_api.costs import auto_epochs

        asked = job.hyperparameters
        epochs = asked.get("n_epochs", "auto")
        epochs = auto_epochs(report.n_examples) if epochs == "auto" else int(epochs)
        if self.settings.max_epochs is not None:
            epochs = min(epochs, self.settings.max_epochs)
        batch = asked.get("batch_size", "auto")
        if batch == "auto":
            # OpenAI's choice is about 0.2% of the examples; a local run keeps its own setting.
            local = self.local_policy(job.model) is not None
            batch = (
                self.settings.lora.batch_size
                if local
                else min(256, max(1, report.n_examples // 500))
            )
        lr = asked.get("learning_rate_multiplier", "auto")
        job.hyperparameters = {
            "n_epochs": epochs,
            "batch_size": int(batch),
            "learning_rate_multiplier": AUTO_LR_MULTIPLIER if lr == "auto" else float(lr),
        }
        return epochs

    async def _simulate(
        self, job: SandboxJob, name: str, epochs: int, *, stop_after: int | None = None
    ) -> None:
        """Steps along a seeded, decreasing loss curve; checkpoints at the last 3 epoch ends."""
        total = self.settings.steps
        rng = np.random.default_rng(job.seed)
        epoch_ends = {round(e * total / epochs) for e in range(max(1, epochs - 2), epochs + 1)}
        for step in range(1, (stop_after or total) + 1):
            await asyncio.sleep(self.settings.step_s)
            loss = max(0.0, 0.3 + 2.2 * math.exp(-3.0 * step / total) + rng.normal(0.0, 0.02))
            job.metrics(step, total, float(loss))
            if stop_after is None and step in epoch_ends:
                job.checkpoint(name, step, float(loss))
                job.event(f"Checkpoint created at step {step}")

    async def _train(
        self, job: SandboxJob, stored: StoredFile, name: str, *, policy: str, epochs: int
    ) -> str | None:
        """Train with the local LoRA trainer; the result policy's hf spec (None: job ended)."""
        from rmft_api.trainers.base import JobFailedError
        from rmft_api.trainers.lora import LocalLoraTrainer

        hp = job.hyperparameters
        base = self.settings.lora
        config = LoraTrainerConfig.model_validate(
            {
                **base.model_dump(),
                "epochs": epochs,
                "batch_size": hp["batch_size"],
                "learning_rate": base.learning_rate * hp["learning_rate_multiplier"],
                "seed": job.seed,
            }
        )
        trainer = LocalLoraTrainer(config, cancel_grace_s=2.0)
        out_dir = self._state.files.root / "jobs" / job.id / "adapter"
        ref = await asyncio.to_thread(
            trainer.submit, stored.path, base_policy=policy, iteration=0, out_dir=out_dir
        )
        job.lora = (trainer, ref)
        last_step = 0
        saved: set[str] = set()
        while True:
            await asyncio.sleep(LORA_POLL_S)
            try:
                ref = await asyncio.to_thread(trainer.poll, ref)
            except JobFailedError as e:
                job.lora = None
                self._fail(job, "training_failed", str(e))
                return None
            job.lora = (trainer, ref)
            progress = ref.progress
            if progress.step > last_step and progress.loss is not None:
                last_step = progress.step
                job.metrics(progress.step, progress.total_steps or progress.step, progress.loss)
            for directory in ref.checkpoints:
                if directory not in saved:
                    saved.add(directory)
                    step = int(Path(directory).name.removeprefix("step-"))
                    job.checkpoint(name, step, progress.loss)
                    job.event(f"Checkpoint created at step {step}")
            if ref.status == "succeeded":
                job.lora = None
                final = progress.total_steps or progress.step
                if not any(c["step_number"] == final for c in job.checkpoints):
                    job.checkpoint(name, final, progress.loss)
                return ref.result_policy
            if ref.status == "cancelled":
                job.lora = None
                job.event("Fine-tuning job cancelled")
                job.finish("cancelled")
                return None

    # ---------------------------------------------------------------- helpers

    def _stop_training(self, job: SandboxJob) -> None:
        if job.lora is None:
            return
        trainer, ref = job.lora
        job.lora = None
        try:
            trainer.cancel(ref)  # blocking, but brief: SIGTERM, then SIGKILL after 2 s
        except RmftError as e:
            log.warning("could not stop the training of %s: %s", job.id, e)

    def _fail(self, job: SandboxJob, code: str, message: str, *, param: str | None = None) -> None:
        job.event(message, level="error")
        job.finish("failed", {"code": code, "message": message, "param": param})

    def _fault(self, job: SandboxJob) -> JobFaultRule | None:
        for rule in self._state.settings.faults.jobs:
            if not rule.at or job.number in rule.at:
                return rule
        return None

    def _ft_name(self, job: SandboxJob) -> str:
        short = job.id.removeprefix("ftjob-")[:8]
        return f"ft:{job.root_model}:{self.settings.organization}:{job.suffix or ''}:{short}"

    def _serving_options(self) -> dict[str, Any]:
        """The backing's generation options that a served adapter should share."""
        options: dict[str, Any] = {}
        for key in ("batch_size", "answer_marker"):
            value = getattr(self._state.backing, key, None)
            if value is not None:
                options[key] = value
        return options


def _invalid_message(report: ValidationReport, *, shown: int = 3) -> str:
    problems = [
        f"line {p.line} ({p.rule}): {p.message}" if p.line else f"{p.rule}: {p.message}"
        for p in report.problems[:shown]
    ]
    more = len(report.problems) + report.problems_omitted - shown
    tail = f" (+{more} more)" if more > 0 else ""
    return "The job failed due to an invalid training file. " + "; ".join(problems) + tail
