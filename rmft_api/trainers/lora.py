"""Local LoRA fine-tuning (transformers + peft) as a subprocess that writes its own status.

`LocalLoraTrainer.submit` writes `job.json` (a `LoraJobSpec`) into the job directory and starts
`python -m rmft_api.trainers.lora --job <job.json>` — the same entry point runs under
`accelerate launch` or `torchrun` (config `launcher`). The process writes `status.json`
atomically; `poll` reads it. A process that died without writing a final status (killed, OOM) is
restarted on the next poll and resumes from its last checkpoint, up to `max_restarts` times.
A subprocess frees the accelerator when it ends, isolates crashes, and keeps torch out of the
orchestrating process: this module imports no torch.

One training process per job, race-free: the trainer flocks `trainer.lock` before it starts one and
the process inherits the lock, so the lock is held exactly while a process lives, whether or not
`process.json` was written (the orchestrator may be killed in between). A live process whose
status has not moved for `stall_timeout_s` is killed and restarted like a dead one.

The job id (and so the reuse of its checkpoints) depends only on what determines the adapter: the
data, the base model's and initial adapter's files, the seed and the training settings; settings
that only change how the job runs (`LoraTrainerConfig.RUN_ONLY`) may change between a kill and
the resume.

Job directory (`<out_dir>-job/` next to the adapter, e.g. `iter-003/adapter-job/`): `job.json`,
`status.json`, `process.json`, `trainer.lock`, `train.log`, `checkpoints/step-N/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from rmft_api.config import LoraTrainerConfig
from rmft_api.errors import StateError, TrainingError
from rmft_api.models.loading import DtypeName
from rmft_api.schema import JobProgress, JobRef
from rmft_api.store import read_json, write_json_atomic
from rmft_api.trainers.base import JobFailedError, is_terminal
from rmft_api.trainers.crash import crash_point
from rmft_api.trainers.lora_job import (
    ENTRY_MODULE,
    LoraJobSpec,
    LoraProcess,
    LoraStatus,
    file_sha256,
    list_checkpoints,
    main,
)

__all__ = ["LocalLoraTrainer", "job_dir_for", "main", "merge_adapter", "parse_hf_spec"]

log = logging.getLogger(__name__)


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """`hf/<dir>[+<adapter-dir>]` or a plain directory → (model dir, adapter dir or None)."""
    prefix = spec.split("/", 1)[0]
    if prefix in ("openai", "agent", "scripted"):
        raise TrainingError(
            f"the local LoRA trainer trains local models; policy {spec!r} is not one "
            '(use hf/<dir>, or [trainer] kind = "openai" for OpenAI models)'
        )
    body = spec.removeprefix("hf/")
    base, sep, adapter = body.partition("+")
    if not base or (sep and not adapter):
        raise TrainingError(f"cannot train from policy {spec!r}: expected hf/<dir>[+<adapter>]")
    return base, adapter or None


def job_dir_for(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}-job"


LOCK_FILE = "trainer.lock"


def _take_lock(job_dir: Path) -> int | None:
    """A descriptor holding the job's trainer lock, or None: a training process holds it."""
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def trainer_running(job_dir: Path) -> bool:
    """Whether a training process of this job lives (it holds `trainer.lock`)."""
    if not job_dir.is_dir():
        return False
    fd = _take_lock(job_dir)
    if fd is None:
        return True
    os.close(fd)  # releases it
    return False


# Files above this size are fingerprinted by size, head and tail (weights differ throughout).
_WHOLE_HASH_BYTES = 64 << 20
_PART_BYTES = 1 << 20


def dir_digest(path: Path) -> str:
    """A content fingerprint of a model or adapter directory (or file), independent of where it
    lies: every file's relative name and bytes (large files: size, first and last MiB). A name
    that is not on disk (a hub id) stands for itself."""
    digest = hashlib.sha256()
    if not path.exists():
        return f"name:{path}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path) if f != path else f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= _WHOLE_HASH_BYTES:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_PART_BYTES))
                fh.seek(size - _PART_BYTES)
                digest.update(fh.read(_PART_BYTES))
    return digest.hexdigest()


# Hosted providers' keys the training subprocess never needs (it trains from local files): any
# `*_API_KEY`, Azure's Entra token and admin keys. HF_TOKEN stays: a hub model may be gated.
_CREDENTIAL_SUFFIXES = ("_API_KEY", "_AD_TOKEN", "_ADMIN_KEY")


def without_credentials(
    env: Mapping[str, str], *, key_envs: Collection[str] = ()
) -> dict[str, str]:
    """`env` without the variables that hold hosted-provider credentials: those named like one
    and those the config reads keys from (`key_envs`, e.g. policy.api_key_env = "GATEWAY")."""
    return {
        k: v
        for k, v in env.items()
        if not k.upper().endswith(_CREDENTIAL_SUFFIXES) and k not in key_envs
    }


class LocalLoraTrainer:
    """The `Trainer` protocol over a local LoRA training subprocess."""

    def __init__(
        self,
        config: LoraTrainerConfig,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        key_envs: Collection[str] = (),
        cancel_grace_s: float = 10.0,
    ) -> None:
        """`env` replaces the child's environment (default: this process's), less credentials
        (`key_envs`: the variables the run's config reads keys from, `Config.credential_envs`)."""
        self.config = config
        self._python = python
        self._env = without_credentials(os.environ if env is None else env, key_envs=key_envs)
        self._cancel_grace_s = cancel_grace_s
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # reaped on poll

    # ---------------------------------------------------------------- protocol

    def submit(
        self, train_file: Path, *, base_policy: str, iteration: int, out_dir: Path
    ) -> JobRef:
        """Start training, or re-attach to the job already started for these same inputs."""
        spec = self._make_spec(
            train_file, base_policy=base_policy, iteration=iteration, out_dir=out_dir
        )
        job_dir = Path(spec.job_dir)
        ref = JobRef(
            backend="lora",
            job_id=spec.job_id,
            status="queued",
            iteration=iteration,
            base_policy=base_policy,
            train_file=str(train_file),
            train_file_sha256=spec.train_file_sha256,
            job_dir=str(job_dir),
            out_dir=str(out_dir),
            created_at=time.time(),
        )
        existing = self._read_spec(job_dir)
        if existing is not None and existing.job_id == spec.job_id:
            if existing != spec:  # run-only settings or paths changed: the next start uses them
                write_json_atomic(job_dir / "job.json", spec)
            status = self._read_status(job_dir)
            lost = (
                status is not None
                and status.status == "succeeded"
                and not (out_dir / "adapter_config.json").is_file()
            )
            if status is None or status.status in ("failed", "cancelled") or lost:
                self._launch(spec, restarts=0)  # a new attempt resumes from any checkpoint
            return self.poll(ref)
        if existing is not None:
            # Another job (other data or settings) used this directory: it must not keep
            # writing checkpoints into ours.
            self._stop(job_dir, existing.job_id)
            log.warning("replacing job %s in %s with %s", existing.job_id, job_dir, spec.job_id)
            _clear_job_dir(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(job_dir / "job.json", spec)
        self._launch(spec, restarts=0)
        return ref

    def poll(self, ref: JobRef) -> JobRef:
        """Read status.json; restart a process that died mid-training (it resumes)."""
        job_dir = self._job_dir(ref)
        alive = self._alive(ref.job_id, job_dir)  # before reading: a final status may race in
        status = self._read_status(job_dir)
        if status is None:
            raise StateError(f"{job_dir}: no status.json; was job {ref.job_id} submitted here?")
        if not is_terminal(status.status):
            stall = self.config.stall_timeout_s
            if not alive:
                status = self._restart_or_fail(
                    job_dir, status, why="died without reporting an error (killed? out of memory?)"
                )
            elif stall is not None and time.time() - status.updated_at > stall:
                log.warning(
                    "LoRA job %s: no progress for %.0f s at step %d; killing it",
                    ref.job_id,
                    time.time() - status.updated_at,
                    status.step,
                )
                self._stop(job_dir, ref.job_id)
                status = self._restart_or_fail(
                    job_dir,
                    status,
                    why=f"made no progress for {stall:g} s (trainer.stall_timeout_s) and "
                    "was killed",
                )
        updated = ref.model_copy(
            update={
                "status": status.status,
                "error": status.error,
                "trained_tokens": status.trained_tokens,
                "progress": JobProgress(
                    step=status.step,
                    total_steps=status.total_steps,
                    loss=status.loss,
                    tokens_per_s=status.tokens_per_s,
                ),
                "checkpoints": [str(p) for p in list_checkpoints(job_dir)],
            }
        )
        if status.status == "succeeded":
            spec = read_json(job_dir / "job.json", LoraJobSpec)
            updated = updated.model_copy(
                update={"result_policy": f"hf/{spec.policy_base}+{ref.out_dir or spec.out_dir}"}
            )
        if status.status == "failed":
            raise JobFailedError(f"local LoRA job {ref.job_id} failed: {status.error}", ref=updated)
        return updated

    def cancel(self, ref: JobRef) -> JobRef:
        job_dir = self._job_dir(ref)
        self._stop(job_dir, ref.job_id)
        status = self._read_status(job_dir)
        if status is not None and is_terminal(status.status):
            return ref.model_copy(update={"status": status.status, "error": status.error})
        cancelled = LoraStatus(
            job_id=ref.job_id,
            status="cancelled",
            step=status.step if status else 0,
            total_steps=status.total_steps if status else None,
            error="cancelled by the user",
            updated_at=time.time(),
        )
        write_json_atomic(job_dir / "status.json", cancelled)
        return ref.model_copy(update={"status": "cancelled", "error": cancelled.error})

    # ---------------------------------------------------------------- spec and launch

    def _make_spec(
        self, train_file: Path, *, base_policy: str, iteration: int, out_dir: Path
    ) -> LoraJobSpec:
        if not train_file.is_file():
            raise TrainingError(f"training file not found: {train_file}")
        if self.config.base_model is not None and not base_policy.startswith("hf/"):
            # The episodes came from another kind of policy (a classic agent, an API model):
            # distil them into a fresh adapter on the configured local base.
            policy_base, policy_adapter = parse_hf_spec(self.config.base_model)[0], None
        else:
            policy_base, policy_adapter = parse_hf_spec(base_policy)
        base_model = policy_base
        if self.config.base_model is not None:
            base_model = parse_hf_spec(self.config.base_model)[0]
        init_adapter = policy_adapter if self.config.init_from == "previous" else None
        if init_adapter is not None and Path(base_model).resolve() != Path(policy_base).resolve():
            raise TrainingError(
                f"init_from = 'previous' continues the adapter of {base_policy!r}, which was "
                f"trained on {policy_base!r}, not on trainer.base_model {base_model!r}"
            )
        seed = int(np.random.SeedSequence([self.config.seed, iteration]).generate_state(1)[0])
        sha = file_sha256(train_file)
        identity = "|".join(
            [
                sha,
                dir_digest(Path(base_model)),
                dir_digest(Path(init_adapter)) if init_adapter else "fresh",
                str(seed),
                self.config.training_fingerprint(),
            ]
        )
        job_id = f"lora-it{iteration:03d}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        return LoraJobSpec(
            job_id=job_id,
            iteration=iteration,
            train_file=str(train_file.resolve()),
            train_file_sha256=sha,
            base_model=str(Path(base_model).resolve()),
            policy_base=base_model,
            init_adapter=str(Path(init_adapter).resolve()) if init_adapter else None,
            out_dir=str(out_dir.resolve()),
            job_dir=str(job_dir_for(out_dir).resolve()),
            seed=seed,
            config=self.config,
        )

    def command(self, job_file: Path) -> list[str]:
        """The command line that runs one job (under the configured launcher, if any)."""
        prefix: Sequence[str] = self.config.launcher or [self._python]
        return [*prefix, "-m", ENTRY_MODULE, "--job", str(job_file)]

    def _launch(self, spec: LoraJobSpec, *, restarts: int) -> None:
        """Start a training process, unless one of this job already runs (holds the lock)."""
        job_dir = Path(spec.job_dir)
        lock = _take_lock(job_dir)
        if lock is None:
            log.info(
                "LoRA job %s: a training process is running; not starting another", spec.job_id
            )
            return
        cmd = self.command(job_dir / "job.json")
        env = {**self._env, "PYTHONUNBUFFERED": "1"}
        try:
            queued = LoraStatus(job_id=spec.job_id, status="queued", updated_at=time.time())
            write_json_atomic(job_dir / "status.json", queued)
            with (job_dir / "train.log").open("ab") as logf:
                # A session of its own: cancel signals the whole group (launcher + ranks), and a
                # Ctrl-C meant for the orchestrator does not kill training (resume re-attaches).
                # The lock passes to the process: held for as long as it lives.
                proc = subprocess.Popen(
                    cmd,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    pass_fds=(lock,),
                )
        finally:
            os.close(lock)
        self._children[spec.job_id] = proc
        crash_point("lora-started")  # killed before process.json: the lock still tells
        record = LoraProcess(pid=proc.pid, command=cmd, started_at=time.time(), restarts=restarts)
        write_json_atomic(job_dir / "process.json", record)
        log.info("started LoRA job %s (pid %d): %s", spec.job_id, proc.pid, " ".join(cmd))

    def _restart_or_fail(self, job_dir: Path, status: LoraStatus, *, why: str) -> LoraStatus:
        """Start the job again (it resumes from its last checkpoint), or, after max_restarts,
        mark it failed saying `why` the last process ended."""
        process = self._read_process(job_dir)
        restarts = process.restarts if process else 0
        if restarts >= self.config.max_restarts:
            failed = status.model_copy(
                update={
                    "status": "failed",
                    "error": f"the training process ended {restarts + 1} times (the last one "
                    f"{why}; trainer.max_restarts = {self.config.max_restarts}); "
                    f"see {job_dir / 'train.log'}",
                    "updated_at": time.time(),
                }
            )
            write_json_atomic(job_dir / "status.json", failed)
            return failed
        log.warning(
            "LoRA job %s: the process %s at step %d; restarting", status.job_id, why, status.step
        )
        self._launch(read_json(job_dir / "job.json", LoraJobSpec), restarts=restarts + 1)
        fresh = self._read_status(job_dir)
        return fresh if fresh is not None else status

    # ---------------------------------------------------------------- process state

    def _job_dir(self, ref: JobRef) -> Path:
        if ref.backend != "lora" or ref.job_dir is None:
            raise StateError(f"job {ref.job_id} is not a local LoRA job (backend {ref.backend})")
        return Path(ref.job_dir)

    def _alive(self, job_id: str, job_dir: Path) -> bool:
        child = self._children.get(job_id)
        if child is not None:
            if child.poll() is None:  # also reaps it once it has exited
                return True
            del self._children[job_id]
        return trainer_running(job_dir)

    def _groups(self, job_dir: Path) -> set[int]:
        """Process groups of the job's live processes: the started launcher's (process.json)
        and rank 0's (its pid in status.json, there even when process.json is not)."""
        job_file = job_dir / "job.json"
        process, status = self._read_process(job_dir), self._read_status(job_dir)
        groups = set()
        if process is not None and _pid_runs(process.pid, job_file):
            groups.add(process.pid)  # a session leader: its pid is its group
        if status is not None and status.pid is not None and _pid_runs(status.pid, job_file):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(status.pid))
        return groups

    def _stop(self, job_dir: Path, job_id: str) -> None:
        """SIGTERM the job's process group, then SIGKILL after the grace period."""
        for sig, wait_s in ((signal.SIGTERM, self._cancel_grace_s), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + wait_s
            signalled: set[int] = set()
            while self._alive(job_id, job_dir):
                # A process started just before a kill of the orchestrator names itself in
                # status.json a moment later: look again while waiting.
                for group in self._groups(job_dir) - signalled:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, sig)
                    signalled.add(group)
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            else:
                return

    def _read_spec(self, job_dir: Path) -> LoraJobSpec | None:
        path = job_dir / "job.json"
        return read_json(path, LoraJobSpec) if path.is_file() else None

    def _read_status(self, job_dir: Path) -> LoraStatus | None:
        path = job_dir / "status.json"
        return read_json(path, LoraStatus) if path.is_file() else None

    def _read_process(self, job_dir: Path) -> LoraProcess | None:
        path = job_dir / "process.json"
        return read_json(path, LoraProcess) if path.is_file() else None


def _pid_runs(pid: int, job_file: Path) -> bool:
    """Whether `pid` is a live (not zombie) process running this job; guards against pid reuse."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():  # no procfs (macOS): the signal test is all we have
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and str(job_file) in cmdline


def _clear_job_dir(job_dir: Path) -> None:
    import shutil

    shutil.rmtree(job_dir, ignore_errors=True)


def merge_adapter(
    base_model: Path, adapter_dir: Path, out_dir: Path, *, dtype: DtypeName = "float32"
) -> Path:
    """Fold an adapter into its base weights (merge_and_unload) and save a standalone model dir
    with the base's tokenizer, loadable without peft."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rmft_api.models.loading import quiet_progress, resolve_dtype

    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    with quiet_progress():
        base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch_dtype)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(str(base_model)).save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    sys.exit(main())
