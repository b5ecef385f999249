"""The pipeline polls a training job at the intervals [trainer] sets (they used to be ignored:
1 s growing to 15 s, whatever the config said)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rmft_api.config import config_from_dict
from rmft_api.pipeline import Pipeline
from rmft_api.run_state import init_run
from rmft_api.schema import JobRef
from rmft_api.store import create_run_dir


class CountingTrainer:
    """A trainer whose job stays `running` for `polls` polls, then succeeds; records when it
    was polled (a fake of the Trainer protocol, not of our code)."""

    def __init__(self, polls: int) -> None:
        self.left = polls
        self.times: list[float] = []

    def submit(
        self, train_file: Path, *, base_policy: str, iteration: int, out_dir: Path
    ) -> JobRef:
        raise AssertionError("not used")

    def poll(self, ref: JobRef) -> JobRef:
        self.times.append(time.monotonic())
        self.left -= 1
        if self.left > 0:
            return ref.model_copy(update={"status": "running"})
        return ref.model_copy(update={"status": "succeeded", "result_policy": "agent/ucb1"})

    def cancel(self, ref: JobRef) -> JobRef:
        return ref.model_copy(update={"status": "cancelled"})


def _pipeline(tmp: Path, trainer: dict[str, object]) -> Pipeline:
    cfg = config_from_dict(
        {"run": {"runs_dir": str(tmp)}, "policy": {"spec": "agent/ucb1"}, "trainer": trainer}
    )
    run = create_run_dir(tmp, "poll")
    init_run(run, cfg, source=None)
    return Pipeline(cfg, run)


@pytest.mark.parametrize("kind", ["openai", "lora"])
def test_poll_intervals_come_from_the_trainer_config(tmp_path: Path, kind: str) -> None:
    settings = {"kind": kind, "poll_interval_s": 0.04, "max_poll_interval_s": 0.06}
    pipeline = _pipeline(tmp_path, settings)
    assert pipeline.poll_intervals() == (0.04, 0.06)
    trainer = CountingTrainer(polls=6)
    backend = "openai" if kind == "openai" else "lora"
    ref = JobRef(backend=backend, job_id="j", iteration=0, base_policy="p", train_file="t")
    paths = pipeline.run.iteration(0)
    paths.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = asyncio.run(pipeline._wait(trainer, ref, paths, 0))
    elapsed = time.monotonic() - started
    assert done.status == "succeeded" and len(trainer.times) == 6
    gaps = [b - a for a, b in zip(trainer.times, trainer.times[1:], strict=False)]
    # 0.04 after each change of status, then ×1.5 up to the cap while nothing changes.
    assert min(gaps) >= 0.035
    assert elapsed < 1.5  # the hard-coded 1 s → 15 s schedule needed over 8 s for this
    assert max(gaps) < 0.5


def test_an_explicit_interval_still_wins(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, {"kind": "openai", "poll_interval_s": 30.0})
    pipeline.poll_interval_s = 0.5
    assert pipeline.poll_intervals() == (0.5, 120.0)
