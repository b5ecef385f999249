"""The Iterative RMFT pipeline on real parts: a classic agent answering in text, a tiny local model
trained with the LoRA subprocess trainer, the real run directory, real SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rmft_api.errors import StateError
from rmft_api.run_state import load_state, open_run, open_run_held
from rmft_api.schema import Episode, JobRef
from rmft_api.store import RunLock, RunPaths, read_json, read_jsonl

CONFIG = """
[run]
seed = 3
runs_dir = "{runs}"
[env]
preset = "easy"
horizon = 4
[prompt]
transcript = "single_turn"
[policy]
spec = "agent/thompson"
[rollout]
scenarios = 5
rollouts_per_scenario = 2
[selection]
k = 1
[iterations]
count = {iterations}
[eval]
scenarios = 3
baselines = ["ucb1", "uniform"]
[trainer]
kind = "lora"
base_model = "{model}"
init_from = "previous"
epochs = 1
batch_size = 4
r = 4
lora_alpha = 8
checkpoint_every_steps = 2
cpu_threads = 1
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rmft_api.models.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def write_config(tmp: Path, model: Path, *, iterations: int = 1) -> Path:
    path = tmp / "rmft.toml"
    path.write_text(CONFIG.format(runs=tmp / "runs", model=model, iterations=iterations))
    return path


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def only_run(tmp: Path) -> RunPaths:
    runs = [p for p in (tmp / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return RunPaths(runs[0])


def outcome(run: RunPaths, iterations: int) -> dict[str, object]:
    """What must not depend on interruptions: selections, training data, jobs, results."""
    out: dict[str, object] = {}
    for i in range(iterations):
        it = run.iteration(i)
        out[f"selected-{i}"] = [
            e["episode_id"] for e in map(json.loads, it.selected.read_text().splitlines())
        ]
        out[f"train-{i}"] = it.train.read_bytes()
        ref = read_json(it.job, JobRef)
        out[f"job-{i}"] = ref.job_id.split("-")[1]  # iteration part; the hash embeds paths
        out[f"adapter-{i}"] = (it.adapter / "adapter_model.safetensors").read_bytes()
        out[f"jobs-{i}"] = sorted(p.name for p in it.root.iterdir() if p.name.endswith("-job"))
    final = run.iteration(iterations)
    out["final-metrics"] = json.loads(final.metrics.read_text())["regret"]
    return out


def test_run_end_to_end_and_status(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path, tiny_model)
    proc = cli("run", str(config))
    assert proc.returncode == 0, proc.stderr
    run = only_run(tmp_path)
    state = load_state(run)
    assert (state.status, state.phase, state.iteration) == ("completed", "done", 1)
    assert state.policies[0] == "agent/thompson"
    assert state.policies[1].startswith(f"hf/{tiny_model}+") and state.policies[1].endswith(
        "adapter"
    )
    it0 = run.iteration(0)
    for path in (
        it0.episodes,
        it0.selected,
        it0.selection,
        it0.train,
        it0.data_card,
        it0.validation,
        it0.job,
        it0.metrics,
        it0.eval_episodes,
    ):
        assert path.is_file(), path
    selection = json.loads(it0.selection.read_text())
    assert selection["total"] == 10 and selection["kept"] == 5  # k = 1 of 5 scenarios
    # The final policy's evaluation really was played by the fine-tuned model.
    final_eval = read_jsonl(run.iteration(1).eval_episodes, Episode)
    assert final_eval and all(e.policy_spec == state.policies[1] for e in final_eval)
    info = json.loads(run.run_json.read_text())
    assert info["config_hash"] and "OPENAI_API_KEY" not in run.run_json.read_text()

    status = cli("status", str(run.root), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout.strip().splitlines()[-1])
    assert report["run"] == run.run_id and len(report["iterations"]) == 1
    row = report["iterations"][0]
    assert row["policy"] == "agent/thompson" and row["kept"] == 5 and row["total"] == 10
    assert row["job_status"] == "succeeded" and row["job_id"].startswith("lora-it000")
    assert row["eval_ci_low"] <= row["eval_mean_regret"] <= row["eval_ci_high"]
    assert report["final"]["policy"] == state.policies[1]


def test_second_process_on_the_same_run_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    config = write_config(tmp_path, tiny_model)
    _, run = open_run(config)
    with RunLock(run.root):
        proc = cli("run", "--resume", str(run.root))
    assert proc.returncode == 1
    assert "locked by pid" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_with_a_changed_config_is_refused_unless_forced(
    tmp_path: Path, tiny_model: Path
) -> None:
    config = write_config(tmp_path, tiny_model)
    _, run = open_run(config)
    with pytest.raises(StateError, match=r"env\.horizon: 4 → 6.*--force"):
        open_run(None, overrides=["env.horizon=6"], resume=run.root)
    cfg, _ = open_run(None, overrides=["env.horizon=6"], resume=run.root, force=True)
    assert cfg.env.horizon == 6
    assert json.loads(run.run_json.read_text())["config"]["env"]["horizon"] == 6


def test_a_forced_resume_of_a_locked_run_is_refused_before_it_writes(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Lock first: `--resume --force` with a new config used to rewrite run.json and only then
    find the run held by another process."""
    _, run = open_run(write_config(tmp_path, tiny_model))
    before = run.run_json.read_bytes()
    with RunLock(run.root):
        proc = cli("run", "--resume", str(run.root), "--set", "env.horizon=6", "--force")
    assert proc.returncode == 1
    assert "locked by pid" in proc.stderr and "Traceback" not in proc.stderr
    assert run.run_json.read_bytes() == before


def test_the_lock_is_held_from_opening_a_run_to_driving_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    """No gap between `open_run` and `Pipeline.run_to_end`: a second `--resume --force` used to
    rewrite run.json between them while the first process went on with its own config."""
    _, run, lock = open_run_held(write_config(tmp_path, tiny_model))
    assert lock.held
    with pytest.raises(StateError, match="locked by pid"):
        open_run(None, overrides=["env.horizon=6"], resume=run.root, force=True)
    lock.release()
    _, _, again = open_run_held(None, overrides=["env.horizon=6"], resume=run.root, force=True)
    before = run.run_json.read_bytes()
    with pytest.raises(StateError, match="locked by pid"):
        open_run(None, overrides=["env.horizon=5"], resume=run.root, force=True)
    assert run.run_json.read_bytes() == before
    again.release()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, object]:
    """An uninterrupted run (one LoRA iteration + the final evaluation): what every interrupted
    run must reproduce. (Two-iteration crash tests run on the OpenAI path: test_openai_path.py.)"""
    tmp = tmp_path_factory.mktemp("reference")
    proc = cli("run", str(write_config(tmp, tiny_model)))
    assert proc.returncode == 0, proc.stderr
    return outcome(only_run(tmp), 1)


@pytest.mark.parametrize(
    "kill_after",
    [
        pytest.param("0:evaluate", marks=pytest.mark.slow),
        pytest.param("0:rollout", marks=pytest.mark.slow),
        pytest.param("0:select", marks=pytest.mark.slow),
        pytest.param("0:export", marks=pytest.mark.slow),
        pytest.param("0:validate", marks=pytest.mark.slow),
        "0:train",
        pytest.param("1:evaluate", marks=pytest.mark.slow),
    ],
)
def test_killed_after_any_phase_resumes_to_the_same_result(
    tmp_path: Path, tiny_model: Path, reference: dict[str, object], kill_after: str
) -> None:
    config = write_config(tmp_path, tiny_model)
    killed = cli("run", str(config), env={"RMFT_KILL_AFTER": kill_after})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_run(tmp_path)
    iteration, phase = kill_after.split(":")
    state = load_state(run)
    assert (state.iteration, state.phase) == (
        int(iteration),
        phase,
    )  # outputs written, not recorded
    resumed = cli("run", "--resume", str(run.root))
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, 1) == reference


def test_a_corrupt_state_json_is_recovered_by_following_the_advice(
    tmp_path: Path, tiny_model: Path, reference: dict[str, object]
) -> None:
    config = write_config(tmp_path, tiny_model)
    killed = cli("run", str(config), env={"RMFT_KILL_AFTER": "0:train"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = only_run(tmp_path)
    run.state_json.write_text('{"run_id": "x", "iterat')  # torn by a failing disk
    refused = cli("run", "--resume", str(run.root))
    assert refused.returncode != 0 and "corrupt" in refused.stderr
    advice = " ".join(refused.stderr.split())
    assert f"mv {run.state_json} {run.state_json}.corrupt" in advice, advice
    run.state_json.rename(f"{run.state_json}.corrupt")  # what the advice says
    resumed = cli("run", "--resume", str(run.root))
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, 1) == reference  # the same job re-attached: nothing trained twice
    assert load_state(run).phase == "done"


def test_orchestrator_killed_during_training_reattaches_to_the_job(
    tmp_path: Path, tiny_model: Path, reference: dict[str, object]
) -> None:
    config = write_config(tmp_path, tiny_model)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmft_api.cli", "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        job = None
        while time.monotonic() < deadline:
            runs = list((tmp_path / "runs").glob("*/iter-000/job.json"))
            if runs:
                job = runs[0]
                break
            time.sleep(0.05)
        assert job is not None, "training never started"
    finally:
        proc.kill()
        proc.wait()
    run = only_run(tmp_path)
    assert load_state(run).phase == "train"
    resumed = cli("run", "--resume", str(run.root))
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run, 1) == reference
