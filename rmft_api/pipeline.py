"""The per-iteration state machine of Iterative RMFT (DESIGN §1).

Iteration i with policy P_i runs EVALUATE (P_i on held-out scenarios) → ROLLOUT → SELECT →
EXPORT → VALIDATE → TRAIN (→ P_{i+1}); after the last iteration, P_N is evaluated as the
"final" entry (iter-N/ holds only its evaluation). Every phase writes its outputs durably and
then advances state.json, so a killed run resumed with `rmft-api run --resume` continues at the
first unfinished phase: finished episodes are kept, a submitted job is re-attached (the trainer
makes submit idempotent), a finished adapter is not retrained.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from rmft_api.config import (
    AzureTrainerConfig,
    Config,
    LoraTrainerConfig,
    OpenAITrainerConfig,
    TogetherTrainerConfig,
)
from rmft_api.envs.scenarios import ScenarioChain, ScenarioRange, build_scenarios
from rmft_api.error_log import one_line, write_error_log
from rmft_api.errors import BudgetError, RmftError, StateError, StopRequested, TrainingError
from rmft_api.ledger import Ledger, format_usd, ledger_path
from rmft_api.providers.base import Provider
from rmft_api.rollout_progress import RolloutProgress
from rmft_api.run_state import (
    Phase,
    RunState,
    load_state,
    requests_spent_usd,
    save_state,
    state_for_resume,
    training_spent_usd,
)
from rmft_api.schema import Episode, JobRef
from rmft_api.stop_request import STOP_MESSAGE, StopGate, clear_stop, request_stop
from rmft_api.store import IterationPaths, RunLock, RunPaths, read_json, write_json_atomic
from rmft_api.trainers.base import JobFailedError, RegisteredJobs, Trainer, is_terminal
from rmft_api.trainers.crash import crash_point

log = logging.getLogger(__name__)

# Polling of a trainer whose config has no poll settings (a backend added without them).
_POLL_FIRST_S, _POLL_CAP_S = 1.0, 15.0
_STOP_CHECK_S = 0.2  # how often a wait between polls looks for a stop request

ITERATION_PHASES: tuple[Phase, ...] = (
    "evaluate",
    "rollout",
    "select",
    "export",
    "validate",
    "train",
)


class Reporter(Protocol):
    """What the pipeline tells its caller (the CLI renders it; tests may record it)."""

    def phase(self, iteration: int, phase: Phase, policy: str) -> None: ...

    def rollout(self, progress: RolloutProgress) -> None: ...

    def job(self, ref: JobRef) -> None: ...

    def note(self, message: str) -> None: ...


class SilentReporter:
    def phase(self, iteration: int, phase: Phase, policy: str) -> None:
        log.info("iteration %d: %s (%s)", iteration, phase, policy)

    def rollout(self, progress: RolloutProgress) -> None:
        pass

    def job(self, ref: JobRef) -> None:
        pass

    def note(self, message: str) -> None:
        log.info("%s", message)


def _crash_point(state: RunState) -> None:
    """Fault injection for the crash tests: RMFT_KILL_AFTER="<iteration>:<phase>" SIGKILLs this
    process after that phase's outputs are on disk but before state.json records it done;
    RMFT_FAIL_AFTER="<iteration>:<phase>" raises an exception nothing expects there instead."""
    here = f"{state.iteration}:{state.phase}"
    if os.environ.get("RMFT_KILL_AFTER") == here:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("RMFT_FAIL_AFTER") == here:
        raise RuntimeError(f"injected fault after {here} (RMFT_FAIL_AFTER)")


def build_trainer(cfg: Config, run: RunPaths) -> Trainer:
    """The configured fine-tuning backend (heavy modules imported only for the one in use)."""
    if isinstance(cfg.trainer, LoraTrainerConfig):
        from rmft_api.trainers.lora import LocalLoraTrainer

        return LocalLoraTrainer(cfg.trainer, key_envs=cfg.credential_envs())
    if isinstance(cfg.trainer, AzureTrainerConfig):
        from rmft_api.trainers.azure_ft import AzureFineTuner

        return AzureFineTuner.for_run(cfg, run_id=run.run_id, state_dir=run.root / "azure")
    if isinstance(cfg.trainer, TogetherTrainerConfig):
        from rmft_api.trainers.together_ft import TogetherFineTuner

        return TogetherFineTuner.for_run(cfg, run_id=run.run_id, state_dir=run.root / "together")
    from rmft_api.trainers.openai_ft import OpenAIFineTuner

    return OpenAIFineTuner.for_run(cfg, run_id=run.run_id, state_dir=run.root / "openai")


def training_scenarios(cfg: Config, iteration: int) -> ScenarioRange:
    m = cfg.rollout.scenarios
    start = iteration * m if cfg.iterations.fresh_scenarios else 0
    return build_scenarios(cfg, split="train", count=m, start=start)


def training_scenarios_so_far(cfg: Config, iteration: int) -> ScenarioChain:
    """Every training scenario of iterations 0..`iteration`, each once, lazily: nothing is
    built until iterated, and the seeds come without building any."""
    ranges = (training_scenarios(cfg, j) for j in range(iteration + 1))
    return ScenarioChain(list({(r.start, r.size): r for r in ranges}.values()))


@dataclass
class Pipeline:
    """Drives one run directory from its current state to the end (or the first error)."""

    cfg: Config
    run: RunPaths
    reporter: Reporter = field(default_factory=SilentReporter)
    # Waits between polls of a training job: None = the trainer config's poll_interval_s and
    # max_poll_interval_s (the backoff grows ×1.5 while nothing changes).
    poll_interval_s: float | None = None
    max_poll_interval_s: float | None = None
    today: Callable[[], dt.date] = dt.date.today  # the preflight's clock (tests fix it)
    # The run lock when the caller already holds it (`open_run_held`); else taken here.
    lock: RunLock | None = None
    _providers: dict[str, Provider] = field(default_factory=dict)
    _ledger: Ledger | None = None
    _stop: StopGate | None = None

    # ---------------------------------------------------------------- driving

    def run_to_end(self) -> RunState:
        """Hold the run lock and advance phase by phase until done; returns the final state.
        The lock is released on return, also one handed in by the caller."""
        lock = self.lock if self.lock is not None else RunLock(self.run.root)
        with lock:
            self._stop = StopGate(self.run, since=lock.acquired_at or 0.0)
            state = asyncio.run(self._drive_until_terminated())
            if state.phase == "done":
                self._write_report()
        return state

    def _write_report(self) -> None:
        """report/report.md and its plots; a failure here never fails the finished run."""
        from rmft_api.report import write_report

        try:
            write_report(self.run)
        except RmftError as e:
            self.reporter.note(f"report not written: {e}")

    def ledger(self) -> Ledger:
        """The run's ledger of paid requests (ledger.jsonl), opened once per drive; a run
        directory from before the ledger gets what its episodes cost carried into it."""
        if self._ledger is None:
            path = ledger_path(self.run.root)
            fresh = not path.is_file()
            self._ledger = Ledger(path, gate=self.check_stop)
            if fresh:
                from rmft_api.generalization import grid_spent_usd

                self._ledger.carry(requests_spent_usd(self.run) + grid_spent_usd(self.run))
        return self._ledger

    def check_stop(self) -> None:
        """Raise StopRequested when `rmft-api cancel` asked this run to stop."""
        if self._stop is not None:
            self._stop.check()

    async def _drive_until_terminated(self) -> RunState:
        """`_drive`, with SIGTERM cancelling it from inside the event loop, as asyncio's own
        Ctrl-C handler does: the run is recorded as interrupted and KeyboardInterrupt raised
        once it is. (A KeyboardInterrupt raised by a plain signal handler lands anywhere in
        the loop's machinery, and can leave it waiting forever; and where SIGINT is ignored —
        a background job — asyncio installs no Ctrl-C handler at all.)"""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        terminated = False

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        previous = signal.getsignal(signal.SIGTERM)
        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
            installed = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            installed = False
        try:
            return await self._drive()
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt from None
            raise
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, previous)

    async def _drive(self) -> RunState:
        state = state_for_resume(self.run)
        if state.status in ("failed", "stopped", "interrupted"):
            state = state.model_copy(update={"status": "running", "message": None})
            save_state(self.run, state)
        try:
            if state.phase != "done":
                await asyncio.to_thread(self._preflight, state)
            while state.phase != "done":
                self.check_stop()
                before = state
                state = await self._step(state)
                _crash_point(before)
                save_state(self.run, state)
        except StopRequested:
            await self._close_providers()
            message = STOP_MESSAGE
            try:
                await asyncio.to_thread(cancel_jobs, self.run, self.cfg, state)
            except RmftError as e:
                message = f"{STOP_MESSAGE}; cancelling its fine-tuning job failed: {e}"
            save_state(self.run, state.model_copy(update={"status": "stopped", "message": message}))
            clear_stop(self.run)
            raise
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C (asyncio cancels this task) or SIGTERM (the CLI turns it into a Ctrl-C).
            message = f"interrupted; `rmft-api run --resume {self.run.root}` continues"
            save_state(
                self.run, state.model_copy(update={"status": "interrupted", "message": message})
            )
            raise
        except RmftError as e:
            status: Literal["failed", "stopped"] = (
                "stopped" if isinstance(e, BudgetError) else "failed"
            )
            save_state(self.run, state.model_copy(update={"status": status, "message": str(e)}))
            raise
        except Exception as e:  # a bug or an unforeseen failure: failed, traceback on disk
            log_path = write_error_log(e, self.run.root)
            message = f"unexpected {one_line(e)} (traceback in {log_path})"
            save_state(self.run, state.model_copy(update={"status": "failed", "message": message}))
            raise
        finally:
            await self._close_providers()
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
        return state

    async def _step(self, state: RunState) -> RunState:
        i, phase = state.iteration, state.phase
        self.reporter.phase(i, phase, state.policy)
        paths = self.run.iteration(i)
        if phase == "evaluate":
            await self._evaluate(state, paths)
            if i >= self.cfg.iterations.count:
                return state.model_copy(update={"phase": "done", "status": "completed"})
            return state.model_copy(update={"phase": "rollout"})
        if phase == "rollout":
            await self._rollout(state, paths)
            return state.model_copy(update={"phase": "select"})
        if phase == "select":
            self._select(state, paths)
            return state.model_copy(update={"phase": "export"})
        if phase == "export":
            self._export(state, paths)
            return state.model_copy(update={"phase": "validate"})
        if phase == "validate":
            self._validate(state, paths)
            return state.model_copy(update={"phase": "train"})
        if phase == "train":
            await self._close_providers()  # free accelerator memory for the trainer
            ref = await self._train(state, paths)
            assert ref.result_policy is not None
            return state.model_copy(
                update={
                    "iteration": i + 1,
                    "phase": "evaluate",
                    "policy": ref.result_policy,
                    "policies": [*state.policies, ref.result_policy],
                }
            )
        raise StateError(f"state.json has an unknown phase {phase!r}")

    def _preflight(self, state: RunState) -> None:
        """Refuse, before anything is paid, a capped run with an unpriced model, or a run that
        needs a model past its shutdown."""
        from rmft_api.costs import check_prices

        check_prices(self.cfg, policy=state.policies[0])
        if not self.cfg.preflight.enabled:
            return
        from rmft_api.preflight import check_preflight

        report = check_preflight(
            self.cfg,
            policy=state.policy,
            iterations_left=max(0, self.cfg.iterations.count - state.iteration),
            today=self.today(),
        )
        for note in report.notes:
            self.reporter.note(f"preflight: {note}")

    # ---------------------------------------------------------------- providers

    def _provider(self, spec: str) -> Provider:
        if spec not in self._providers:
            from rmft_api.providers.registry import resolve_policy

            self._providers[spec] = resolve_policy(self.cfg, spec=spec)
        return self._providers[spec]

    async def _close_providers(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()

    def _spent(self) -> float:
        """Dollars spent so far: the ledger's paid requests plus billed training."""
        return self.ledger().total_usd() + training_spent_usd(self.run, self.cfg.prices)

    def _budget_left(self) -> float | None:
        """The cap the rollout guards hold the ledger's total to (they start from it), after
        billed training; BudgetError when nothing is left."""
        if self.cfg.budget.max_usd is None:
            return None
        training = training_spent_usd(self.run, self.cfg.prices)
        if self.cfg.budget.max_usd - training - self.ledger().total_usd() <= 0:
            raise BudgetError(
                f"budget.max_usd = {format_usd(self.cfg.budget.max_usd)} is spent "
                f"({format_usd(self.ledger().total_usd())} on {self.ledger().requests()} "
                "requests in the ledger, and training); raise it and resume"
            )
        return self.cfg.budget.max_usd - training

    # ---------------------------------------------------------------- phases

    async def _evaluate(self, state: RunState, paths: IterationPaths) -> None:
        from rmft_api.evaluate import (
            check_disjoint,
            evaluate_policy,
            heldout_scenarios,
            metrics_final,
        )
        from rmft_api.providers.registry import sampling_params

        grid = None
        if self.cfg.eval.grid:
            from rmft_api.generalization import grid_entries

            grid = grid_entries(self.cfg)  # config mistakes surface before anything is played
        main = not metrics_final(paths.metrics) and self.cfg.eval.scenarios > 0
        if not main and not grid:
            return
        train = training_scenarios_so_far(self.cfg, state.iteration)
        if main:
            check_disjoint(train, heldout_scenarios(self.cfg))
            paths.eval_dir.mkdir(parents=True, exist_ok=True)
            metrics = await evaluate_policy(
                self._provider(state.policy),
                self.cfg,
                iteration=state.iteration,
                out=paths.eval_episodes,
                sampling=sampling_params(self.cfg),
                progress=self.reporter.rollout,
                budget_usd=self._budget_left(),
                ledger=self.ledger(),
            )
            write_json_atomic(paths.metrics, metrics)
        if grid:
            from rmft_api.generalization import check_grid_disjoint, evaluate_grid, grid_dir

            check_grid_disjoint(grid, train, self.cfg)
            await evaluate_grid(
                self._provider(state.policy),
                grid,
                iteration=state.iteration,
                out_dir=grid_dir(paths.root),
                sampling=sampling_params(self.cfg),
                progress=self.reporter.rollout,
                budget_left=self._budget_left,
                ledger=self.ledger(),
                on_variant=lambda name: self.reporter.phase(
                    state.iteration, "evaluate", f"{state.policy} · grid {name}"
                ),
            )

    async def _rollout(self, state: RunState, paths: IterationPaths) -> None:
        from rmft_api.providers.registry import sampling_params
        from rmft_api.rollout import run_rollouts
        from rmft_api.rollout_cache import ResponseCache, cache_path

        paths.root.mkdir(parents=True, exist_ok=True)
        cache = ResponseCache(cache_path(paths.root)) if self.cfg.rollout.cache else None
        try:
            for attempt in range(2):  # a second pass re-runs episodes that ended in an error
                summary = await run_rollouts(
                    self._provider(state.policy),
                    training_scenarios(self.cfg, state.iteration),
                    cfg=self.cfg,
                    iteration=state.iteration,
                    rollouts_per_scenario=self.cfg.rollout.rollouts_per_scenario,
                    out=paths.episodes,
                    sampling=sampling_params(self.cfg),
                    progress=self.reporter.rollout,
                    cache=cache,
                    budget_usd=self._budget_left(),
                    ledger=self.ledger(),
                )
                if summary.errors == 0:
                    break
                self.reporter.note(
                    f"{summary.errors} episode(s) ended in errors (pass {attempt + 1}); "
                    + ("retrying them" if attempt == 0 else "continuing without them")
                )
        finally:
            if cache is not None:
                cache.close()

    def _episodes(self, iteration: int) -> list[Episode]:
        from rmft_api.rollout import read_episodes

        path = self.run.iteration(iteration).episodes
        # episodes.jsonl is in completion order, which concurrency makes arbitrary; the training
        # file (and so the trained model) must not depend on it.
        episodes = [e for e in read_episodes(path) if e.iteration == iteration]
        return sorted(episodes, key=lambda e: (e.scenario_index, e.rollout))

    def _select(self, state: RunState, paths: IterationPaths) -> None:
        from rmft_api.agent_plays import agent_regret
        from rmft_api.selection import select_episodes
        from rmft_api.store import write_text_atomic

        scenarios = training_scenarios(self.cfg, state.iteration)  # built as episodes ask
        baseline = self.cfg.selection.baseline
        kept, report = select_episodes(
            self._episodes(state.iteration),
            self.cfg,
            scenario_of=lambda e: scenarios.by_index(e.scenario_index),
            baseline_regret=lambda s: agent_regret(baseline or "ucb1", s, self.cfg),
        )
        if not kept:
            raise TrainingError(
                f"iteration {state.iteration}: selection kept no episode of {report.total} "
                f"(dropped: {report.dropped}); loosen [selection] or check the policy's replies"
            )
        lines = "".join(e.model_dump_json() + "\n" for e in kept)
        write_text_atomic(paths.selected, lines)
        write_json_atomic(paths.selection, report)

    def _training_episodes(self, iteration: int) -> list[Episode]:
        from rmft_api.store import read_jsonl

        accumulate = self.cfg.trainer.accumulate
        first = 0 if accumulate else iteration
        episodes: list[Episode] = []
        for j in range(first, iteration + 1):
            episodes.extend(read_jsonl(self.run.iteration(j).selected, Episode))
        return episodes

    def _export(self, state: RunState, paths: IterationPaths) -> None:
        from rmft_api.datasets import write_train_jsonl

        card = write_train_jsonl(
            self._training_episodes(state.iteration),
            paths.train,
            mode=self.cfg.export.mode,
            mask_ambiguous=self.cfg.export.mask_ambiguous,
            thresholds=self.cfg.selection.model_dump(mode="json"),
            model=self._train_model_name(state),
            tokenizer_dir=self._tokenizer_dir(state),
        )
        if card.n_examples == 0:
            raise TrainingError(
                f"iteration {state.iteration}: no training example survived export "
                f"(dropped: {card.dropped})"
            )
        write_json_atomic(paths.data_card, card)

    def _train_model_name(self, state: RunState) -> str:
        spec = self._base_policy(state)
        return spec.split("/", 1)[1] if spec.startswith("openai/") else spec

    def _tokenizer_dir(self, state: RunState) -> str | None:
        if self.cfg.export.tokenizer_dir is not None:
            return self.cfg.export.tokenizer_dir
        if state.policy.startswith("hf/"):
            return state.policy.removeprefix("hf/").split("+", 1)[0]
        return None

    def _base_policy(self, state: RunState) -> str:
        """What the next job trains from: the current policy, or P_0 with init_from = base
        (the LoRA trainer reads init_from itself and takes the base from the policy spec)."""
        hosted = not isinstance(self.cfg.trainer, LoraTrainerConfig)
        if self.cfg.trainer.init_from == "base" and hosted:
            return state.policies[0]
        return state.policy

    def _validate(self, state: RunState, paths: IterationPaths) -> None:
        from rmft_api.validation import validate_file

        # OpenAI and Azure share the fine-tuning API's rules (≥ 10 examples, its price table).
        openai = isinstance(self.cfg.trainer, OpenAITrainerConfig)
        n_epochs: int | Literal["auto"] = "auto"
        if isinstance(self.cfg.trainer, OpenAITrainerConfig | TogetherTrainerConfig):
            n_epochs = self.cfg.trainer.n_epochs
        report = validate_file(
            paths.train,
            model=self._train_model_name(state),
            max_tokens_per_example=self.cfg.export.max_tokens_per_example,
            min_examples=10 if openai else 1,
            tokenizer_dir=self._tokenizer_dir(state),
            n_epochs=n_epochs,
        )
        write_json_atomic(paths.validation, report)
        if not report.ok:
            first = "; ".join(f"line {p.line}: {p.rule}" for p in report.problems[:5])
            raise TrainingError(
                f"iteration {state.iteration}: {paths.train} failed validation ({first}); "
                f"see {paths.validation}"
            )
        if openai and self.cfg.budget.max_usd is not None and report.cost is not None:
            from rmft_api.costs import check_budget

            check_budget(report.cost.training_usd, self._spent(), self.cfg.budget.max_usd)

    async def _train(self, state: RunState, paths: IterationPaths) -> JobRef:
        trainer = build_trainer(self.cfg, self.run)
        if paths.job.is_file():
            ref = read_json(paths.job, JobRef)
            if ref.status == "succeeded" and ref.result_policy:
                return ref
            if ref.status == "cancelled":
                raise TrainingError(
                    f"iteration {state.iteration}: job {ref.job_id} was cancelled; "
                    f"delete {paths.job} and resume to train again"
                )
        # submit is idempotent: it re-attaches to the job these inputs already started.
        self.check_stop()
        ref = await asyncio.to_thread(
            trainer.submit,
            paths.train,
            base_policy=self._base_policy(state),
            iteration=state.iteration,
            out_dir=paths.adapter,
        )
        crash_point("train:submitted")  # the job exists (in the trainer's registry), no job.json
        write_json_atomic(paths.job, ref)
        return await self._wait(trainer, ref, paths, state.iteration)

    def poll_intervals(self) -> tuple[float, float]:
        """(first wait, cap) between polls: this pipeline's own, else `[trainer]`'s settings."""
        first = self.poll_interval_s
        cap = self.max_poll_interval_s
        if first is None:
            first = float(getattr(self.cfg.trainer, "poll_interval_s", _POLL_FIRST_S))
        if cap is None:
            cap = float(getattr(self.cfg.trainer, "max_poll_interval_s", _POLL_CAP_S))
        return first, max(first, cap)

    async def _wait(
        self, trainer: Trainer, ref: JobRef, paths: IterationPaths, iteration: int
    ) -> JobRef:
        first, cap = self.poll_intervals()
        delay = first
        last = ref.model_dump_json()
        while True:
            try:
                ref = await asyncio.to_thread(trainer.poll, ref)
            except JobFailedError as e:
                write_json_atomic(paths.job, e.ref)
                raise TrainingError(f"iteration {iteration}: fine-tuning failed: {e}") from e
            now = ref.model_dump_json()
            if now != last:
                write_json_atomic(paths.job, ref)
                self.reporter.job(ref)
                last, delay = now, first
            if ref.status == "succeeded":
                if not ref.result_policy:
                    raise TrainingError(f"job {ref.job_id} succeeded without a result model")
                return ref
            if ref.status == "cancelled":
                raise TrainingError(f"iteration {iteration}: job {ref.job_id} was cancelled")
            if is_terminal(ref.status):
                raise TrainingError(f"iteration {iteration}: job ended as {ref.status}")
            await self._sleep_unless_stopped(delay)
            delay = min(cap, delay * 1.5)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        """Sleep between polls, raising StopRequested as soon as a stop is asked for."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            self.check_stop()
            await asyncio.sleep(min(left, _STOP_CHECK_S))
        self.check_stop()


def cancel_jobs(run: RunPaths, cfg: Config, state: RunState) -> list[JobRef]:
    """Cancel the run's unfinished fine-tuning jobs: the current iteration's job.json and any job
    the trainer's registry records as created but job.json does not hold yet. Returns them."""
    paths = run.iteration(state.iteration)
    recorded = read_json(paths.job, JobRef) if paths.job.is_file() else None
    if state.phase != "train" and recorded is None:
        return []
    trainer = build_trainer(cfg, run)
    cancelled: list[JobRef] = []
    try:
        if recorded is not None and not is_terminal(recorded.status):
            recorded = trainer.cancel(recorded)
            write_json_atomic(paths.job, recorded)
            cancelled.append(recorded)
        registered = trainer.registered_jobs() if isinstance(trainer, RegisteredJobs) else []
        for ref in registered:
            if recorded is None or ref.job_id != recorded.job_id:
                cancelled.append(trainer.cancel(ref))  # the registry records its new status
    finally:
        close = getattr(trainer, "close", None)
        if callable(close):
            close()
    return cancelled


@dataclass
class CancelOutcome:
    """What `rmft-api cancel` did."""

    jobs: list[JobRef]  # the jobs it (or the running process) cancelled
    live_pid: int | None = None  # the process that was working on the run, if any
    stopped: bool = True  # False: that process has not stopped within the wait (it will)


def cancel_run(run: RunPaths, cfg: Config, *, wait_s: float = 60.0) -> CancelOutcome:
    """Stop the run: a process working on it is asked to stop (stop.json) and waited for up to
    `wait_s`; then, holding the run lock, its unfinished jobs are cancelled (the current
    job.json's and any only in the trainer's registry) and the run is marked stopped."""
    import time

    lock = RunLock(run.root)
    live_pid: int | None = None
    try:
        lock.acquire()
    except StateError:
        holder = lock.holder()
        live_pid = holder.pid if holder is not None else None
        request_stop(run)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                lock.acquire()
                break
            except StateError:
                if time.monotonic() >= deadline:
                    return CancelOutcome(jobs=[], live_pid=live_pid, stopped=False)
                time.sleep(0.05)
    with lock:
        state = load_state(run)
        jobs = cancel_jobs(run, cfg, state)
        if live_pid is not None:
            # The process cancelled its jobs as it stopped; report them too.
            jobs = jobs or _cancelled_now(run, state)
        save_state(run, state.model_copy(update={"status": "stopped", "message": STOP_MESSAGE}))
        clear_stop(run)
    return CancelOutcome(jobs=jobs, live_pid=live_pid)


def _cancelled_now(run: RunPaths, state: RunState) -> list[JobRef]:
    path = run.iteration(state.iteration).job
    ref = read_json(path, JobRef) if path.is_file() else None
    return [ref] if ref is not None and ref.status == "cancelled" else []


__all__ = [
    "ITERATION_PHASES",
    "CancelOutcome",
    "Pipeline",
    "Reporter",
    "SilentReporter",
    "build_trainer",
    "cancel_jobs",
    "cancel_run",
    "training_scenarios",
]
