"""The OpenAI fine-tuning trainer with the real SDK over real HTTP against the sandbox: uploads
and jobs created exactly once (timeouts, dropped connections, resume), status progression,
events, checkpoints, failures, refusals, and — with a local backing model — real training whose
`ft:` model is then served."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from rmft_api.config import OpenAITrainerConfig
from rmft_api.errors import QuotaExhaustedError, TrainingError
from rmft_api.sandbox.server import SandboxServer
from rmft_api.schema import JobRef
from rmft_api.store import read_json
from rmft_api.trainers.base import JobFailedError, Trainer
from rmft_api.trainers.create_once import CreateUnsettledError, _nothing_created
from rmft_api.trainers.openai_ft import OpenAIFineTuner
from rmft_api.trainers.openai_ft_registry import REGISTRY_FILE, FineTuneRegistry

KEY = "sk-test-SECRET1234567890abcdef"
JOBS = "/v1/fine_tuning/jobs"
FAST = {"validating_s": 0.05, "queued_s": 0.05, "steps": 4, "step_s": 0.02}


def rows(n: int, answer: str = "B") -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You choose one option per round."},
                {"role": "user", "content": f"Round {i}. Which option?"},
                {"role": "assistant", "content": f"ANSWER: {answer}"},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, data: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", rows(12))


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Any]) -> Callable[..., SandboxServer]:
    def start(*, rules: list[dict[str, Any]] | None = None, **settings: Any) -> SandboxServer:
        fine_tuning = {**FAST, **settings.pop("fine_tuning", {})}
        faults = {"rules": rules or [], "jobs": settings.pop("job_faults", [])}
        server: SandboxServer = start_sandbox(fine_tuning=fine_tuning, faults=faults, **settings)
        return server

    return start


def tuner(
    server: SandboxServer, state_dir: Path, *, run_id: str = "run-1", **overrides: Any
) -> OpenAIFineTuner:
    base: dict[str, Any] = {
        "n_epochs": 2,
        "suffix": "rmft-test",
        "seed": 5,
        "poll_interval_s": 0.02,
        "max_poll_interval_s": 0.1,
        "timeout_s": 10.0,
    }
    config = OpenAITrainerConfig(**{**base, **overrides})
    return OpenAIFineTuner(config, run_id=run_id, state_dir=state_dir, base_url=server.base_url)


def submit(trainer: OpenAIFineTuner, train_file: Path, *, iteration: int = 0) -> JobRef:
    return trainer.submit(
        train_file,
        base_policy="openai/gpt-4o-mini",
        iteration=iteration,
        out_dir=train_file.parent / "unused",
    )


def client(server: SandboxServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-inspector", base_url=server.base_url, max_retries=0)


def server_jobs(server: SandboxServer) -> list[Any]:
    return list(client(server).fine_tuning.jobs.list(limit=100))


def server_files(server: SandboxServer) -> list[Any]:
    return list(client(server).files.list(purpose="fine-tune"))


# ---------------------------------------------------------------- submit, exactly once


def test_submit_uploads_once_and_creates_the_job_with_method_suffix_seed_metadata(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    server = sandbox()
    trainer = tuner(server, tmp_path / "run")
    assert isinstance(trainer, Trainer)
    ref = submit(trainer, train_file)
    assert ref.backend == "openai" and ref.iteration == 0 and ref.file_id
    sha = ref.train_file_sha256 or ""
    assert len(sha) == 64

    [uploaded] = server_files(server)
    assert uploaded.id == ref.file_id and sha[:16] in uploaded.filename
    assert client(server).files.content(uploaded.id).read() == train_file.read_bytes()
    [job] = server_jobs(server)
    assert job.id == ref.job_id and job.model == "gpt-4o-mini"
    assert job.user_provided_suffix == "rmft-test"
    assert job.method is not None and job.method.type == "supervised"
    assert job.method.supervised is not None
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert job.metadata == {"run_id": "run-1", "iteration": "0", "data_sha": sha, "attempt": "1"}
    assert ref.metadata == job.metadata

    # Same inputs again (same or another instance): the same job, nothing uploaded or created.
    assert submit(trainer, train_file).job_id == ref.job_id
    assert submit(tuner(server, tmp_path / "run"), train_file).job_id == ref.job_id
    # The next iteration trains on the identical file: the upload is reused, a job is created.
    second = submit(trainer, train_file, iteration=1)
    assert second.job_id != ref.job_id and second.file_id == ref.file_id
    assert len(server_files(server)) == 1 and len(server_jobs(server)) == 2

    # Seeds are reproducible per (config seed, iteration) and differ between iterations.
    seeds = {j.id: j.seed for j in server_jobs(server)}
    other_run = sandbox()
    again = submit(tuner(other_run, tmp_path / "other"), train_file)
    assert server_jobs(other_run)[0].seed == seeds[ref.job_id] != seeds[second.job_id]
    assert again.job_id != ref.job_id

    registry = read_json(tmp_path / "run" / REGISTRY_FILE, FineTuneRegistry)
    assert [j.job_id for j in registry.jobs] == [ref.job_id, second.job_id]
    assert KEY not in (tmp_path / "run" / REGISTRY_FILE).read_text()


@pytest.mark.parametrize("path", [JOBS, "/v1/files"])
def test_a_create_done_on_the_server_while_the_client_timed_out_is_not_repeated(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path, path: str
) -> None:
    rule = {"fault": "late_reply", "path": path, "method": "POST", "times": 1, "delay_s": 5}
    server = sandbox(rules=[rule])
    trainer = tuner(server, tmp_path / "run", timeout_s=0.5)
    started = time.monotonic()
    ref = submit(trainer, train_file)
    assert time.monotonic() - started < 4  # found by lookup, not by waiting for the reply
    assert server.state.faults.injected["late_reply"] == 1
    # The caller retries submit (e.g. after a crash): still the one job and the one file.
    assert submit(tuner(server, tmp_path / "run"), train_file).job_id == ref.job_id
    assert [j.id for j in server_jobs(server)] == [ref.job_id]
    assert [f.id for f in server_files(server)] == [ref.file_id]


def test_a_dropped_create_is_never_sent_again_in_process_and_resume_makes_it_once(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    """A connection dropped mid-create is an unknown outcome: the trainer looks the job up for
    the settle window, stops without sending it again, and the resume creates it once."""
    rule = {"fault": "disconnect", "path": JOBS, "method": "POST", "times": 1}
    server = sandbox(rules=[rule])
    with pytest.raises(CreateUnsettledError, match="--resume"):
        submit(tuner(server, tmp_path / "run", create_settle_s=0.5), train_file)
    assert server.state.faults.injected["disconnect"] == 1
    assert server_jobs(server) == []
    ref = submit(tuner(server, tmp_path / "run", create_settle_s=0.5), train_file)
    assert [j.id for j in server_jobs(server)] == [ref.job_id]


def test_a_rate_limited_create_created_nothing_and_is_sent_again(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    rule = {"fault": "rate_limit", "path": JOBS, "method": "POST", "times": 1, "retry_after_s": 0.1}
    server = sandbox(rules=[rule])
    ref = submit(tuner(server, tmp_path / "run", create_settle_s=30), train_file)
    assert server.state.faults.injected["rate_limit"] == 1
    assert [j.id for j in server_jobs(server)] == [ref.job_id]


def wait_for_jobs(server: SandboxServer, count: int, *, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while len(server_jobs(server)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} job(s) ever appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("path", [JOBS, "/v1/files"])
def test_a_create_that_finishes_late_is_found_by_polling_not_sent_again(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path, path: str
) -> None:
    """The service answers 500 but finishes the create 2 s later: one object, found by the
    trainer's lookups, never a second create."""
    rule = {"fault": "late_create", "path": path, "method": "POST", "times": 1, "delay_s": 2}
    server = sandbox(rules=[rule])
    ref = submit(tuner(server, tmp_path / "run", create_settle_s=20), train_file)
    assert server.state.faults.injected["late_create"] == 1
    time.sleep(2.5)  # a second create sent in the meantime would be listed by now
    assert [j.id for j in server_jobs(server)] == [ref.job_id]
    assert [f.id for f in server_files(server)] == [ref.file_id]
    registry = read_json(tmp_path / "run" / REGISTRY_FILE, FineTuneRegistry)
    assert [j.job_id for j in registry.jobs] == [ref.job_id]


def test_a_create_later_than_the_settle_window_stops_and_the_resume_finds_it(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    rule = {"fault": "late_create", "path": JOBS, "method": "POST", "times": 1, "delay_s": 2}
    server = sandbox(rules=[rule])
    started = time.monotonic()
    with pytest.raises(CreateUnsettledError) as stop:
        submit(tuner(server, tmp_path / "run", create_settle_s=0.5), train_file)
    assert time.monotonic() - started < 2  # the window, not the job's delay
    message = str(stop.value)
    assert "rmft-api run --resume" in message and "not sent again" in message
    assert KEY not in message
    assert server_jobs(server) == []  # not yet
    wait_for_jobs(server, 1)
    ref = submit(tuner(server, tmp_path / "run", create_settle_s=0.5), train_file)
    assert [j.id for j in server_jobs(server)] == [ref.job_id]
    assert server.state.requests[JOBS] >= 2 and server.state.faults.injected["late_create"] == 1


@pytest.mark.parametrize("sdk", ["openai", "together"])
def test_a_connection_never_made_is_known_to_have_created_nothing(sdk: str) -> None:
    """The openai SDK raises through httpx2, together through httpx: both SDKs' real "could not
    connect" errors prove no create was sent (the check used to know only httpx's)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    error: Exception | None = None
    try:
        if sdk == "openai":
            client = openai.OpenAI(api_key=KEY, base_url=url, max_retries=0, timeout=5)
            client.fine_tuning.jobs.list()
        else:
            together = pytest.importorskip("together")
            together.Together(api_key=KEY, base_url=url, max_retries=0).fine_tuning.list()
    except Exception as e:
        error = e
    assert error is not None and _nothing_created(error), repr(error)


def test_an_upload_refused_with_a_5xx_is_looked_up_then_sent_again(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    """A training file is free to store twice, so an ambiguous upload does not stop the run: it
    is looked up for a short window and re-sent (the soak's 5xx on uploads stopped every run)."""
    rule = {"fault": "server_error", "path": "/v1/files", "method": "POST", "times": 1}
    server = sandbox(rules=[rule])
    ref = submit(tuner(server, tmp_path / "run", create_settle_s=0.5), train_file)
    assert server.state.faults.injected["server_error"] == 1
    assert server.state.requests["/v1/files"] >= 2
    assert [f.id for f in server_files(server)] == [ref.file_id]
    assert [j.id for j in server_jobs(server)] == [ref.job_id]


def test_resume_after_a_crash_between_intent_and_answer_reattaches(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    """Process A announced the create and the server made the job, but A never got the answer
    (held back here); a new trainer B on the same state dir must find that job, not create."""
    rule = {"fault": "late_reply", "path": JOBS, "method": "POST", "times": 1, "delay_s": 1.5}
    server = sandbox(rules=[rule])
    state_dir = tmp_path / "run"
    results: list[JobRef] = []
    first = threading.Thread(
        target=lambda: results.append(submit(tuner(server, state_dir), train_file))
    )
    first.start()
    deadline = time.monotonic() + 5
    while not server.state.jobs.jobs:
        assert time.monotonic() < deadline, "the job was never created"
        time.sleep(0.01)
    registry = read_json(state_dir / REGISTRY_FILE, FineTuneRegistry)
    assert [j.job_id for j in registry.jobs] == [None]  # the intent, without an answer

    resumed = submit(tuner(server, state_dir), train_file)
    first.join(timeout=10)
    assert results and results[0].job_id == resumed.job_id
    assert [j.id for j in server_jobs(server)] == [resumed.job_id]
    registry = read_json(state_dir / REGISTRY_FILE, FineTuneRegistry)
    assert [j.job_id for j in registry.jobs] == [resumed.job_id]


# ---------------------------------------------------------------- polling


def test_wait_follows_the_status_progression_loss_and_checkpoints(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    server = sandbox(fine_tuning={"validating_s": 0.4, "queued_s": 0.4, "steps": 6, "step_s": 0.1})
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    config = OpenAITrainerConfig(n_epochs=3, poll_interval_s=0.03, max_poll_interval_s=0.2)
    trainer = OpenAIFineTuner(
        config, run_id="run-1", state_dir=tmp_path / "run", base_url=server.base_url, sleep=sleep
    )
    seen: list[JobRef] = []
    final = trainer.wait(submit(trainer, train_file), on_update=seen.append, timeout_s=20)

    statuses = [r.status for r in seen]
    order = ["validating_files", "queued", "running", "succeeded"]
    assert [s for s in order if s in statuses] == order
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    losses = [r.progress.loss for r in seen if r.progress.loss is not None]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert final.progress.step == final.progress.total_steps == 6
    [job] = server_jobs(server)
    assert final.result_policy == f"openai/{job.fine_tuned_model}"
    assert job.fine_tuned_model.startswith("ft:gpt-4o-mini:sandbox::")
    assert final.trained_tokens == job.trained_tokens and (final.trained_tokens or 0) > 0
    # Checkpoints at the ends of the 3 epochs, oldest first, named after the model.
    assert final.checkpoints == [f"{job.fine_tuned_model}:ckpt-step-{s}" for s in (2, 4, 6)]
    assert min(slept) >= 0.03 - 1e-9 and max(slept) <= 0.2 + 1e-9


def test_a_failed_job_raises_with_its_error_and_a_resubmit_is_a_new_attempt(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    server = sandbox(job_faults=[{"fault": "job_failed", "at": [1], "message": "GPU fell over"}])
    trainer = tuner(server, tmp_path / "run")
    with pytest.raises(JobFailedError, match="internal_error: GPU fell over") as failed:
        trainer.wait(submit(trainer, train_file), timeout_s=10)
    assert failed.value.ref.status == "failed" and failed.value.ref.error
    assert failed.value.ref.progress.step >= 1  # it ran for a while

    retried = trainer.wait(submit(trainer, train_file), timeout_s=10)
    assert retried.status == "succeeded" and retried.metadata["attempt"] == "2"
    assert len(server_jobs(server)) == 2


def test_an_invalid_file_fails_while_validating(
    sandbox: Callable[..., SandboxServer], tmp_path: Path
) -> None:
    server = sandbox()
    bad = write_jsonl(tmp_path / "few.jsonl", rows(3))
    trainer = tuner(server, tmp_path / "run")
    with pytest.raises(JobFailedError, match=r"invalid_training_file.*too_few_examples"):
        trainer.wait(submit(trainer, bad), timeout_s=10)


def test_cancel_stops_a_running_job(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    server = sandbox(fine_tuning={"steps": 50, "step_s": 0.2})
    trainer = tuner(server, tmp_path / "run")
    ref = submit(trainer, train_file)
    cancelled = trainer.cancel(ref)
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled by the user"
    assert server_jobs(server)[0].status == "cancelled"
    assert trainer.cancel(cancelled).status == "cancelled"  # already finished: no error
    assert trainer.poll(cancelled).status == "cancelled"


# ---------------------------------------------------------------- refusals and secrets


@pytest.mark.parametrize(
    ("rules", "models", "policy"),
    [
        ([{"fault": "permission_denied", "path": JOBS, "method": "POST"}], [], "openai/gpt-4o"),
        ([], ["gpt-4o-mini"], "openai/gpt-4-0613"),  # 400 model_not_available
    ],
)
def test_a_refused_create_names_the_alternatives(
    sandbox: Callable[..., SandboxServer],
    train_file: Path,
    tmp_path: Path,
    rules: list[dict[str, Any]],
    models: list[str],
    policy: str,
) -> None:
    server = sandbox(rules=rules, models=models)
    trainer = tuner(server, tmp_path / "run")
    with pytest.raises(TrainingError) as refused:
        trainer.submit(train_file, base_policy=policy, iteration=0, out_dir=tmp_path)
    message = str(refused.value)
    assert "base_url" in message and 'kind = "lora"' in message
    assert server_jobs(server) == []


def test_quota_exhausted_stops_and_bad_keys_are_never_shown(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    server = sandbox(rules=[{"fault": "insufficient_quota", "path": JOBS, "method": "POST"}])
    with pytest.raises(QuotaExhaustedError, match="insufficient_quota"):
        submit(tuner(server, tmp_path / "run"), train_file)

    echoing = sandbox(rules=[{"fault": "unauthorized", "path": "/v1/files", "method": "POST"}])
    with pytest.raises(TrainingError, match="OPENAI_API_KEY") as denied:
        submit(tuner(echoing, tmp_path / "other"), train_file)
    assert KEY not in str(denied.value) and "***" in str(denied.value)
    for path in (tmp_path / "run", tmp_path / "other"):
        assert all(KEY not in p.read_text() for p in path.iterdir())


def test_a_file_over_the_upload_limit_is_refused_with_its_size(
    sandbox: Callable[..., SandboxServer], train_file: Path, tmp_path: Path
) -> None:
    server = sandbox(fine_tuning={"max_upload_bytes": 200})
    with pytest.raises(openai.APIStatusError, match="limit is 200 bytes") as raw:
        client(server).files.create(file=("big.jsonl", b"x" * 201), purpose="fine-tune")
    assert raw.value.status_code == 413
    with pytest.raises(openai.APIStatusError, match="limit is 200 bytes"):  # by its length
        client(server).files.create(file=("huge.jsonl", b"x" * 100_000), purpose="fine-tune")
    with pytest.raises(TrainingError, match="File too large"):
        submit(tuner(server, tmp_path / "run"), train_file)
    assert server_files(server) == [] and server_jobs(server) == []
    small = client(server).files.create(file=("ok.jsonl", b"{}\n"), purpose="fine-tune")
    assert small.bytes == 3


def test_policies_it_cannot_train_are_refused(tmp_path: Path) -> None:
    config = OpenAITrainerConfig()
    trainer = OpenAIFineTuner(config, run_id="r", state_dir=tmp_path, base_url="http://127.0.0.1:9")
    with pytest.raises(TrainingError, match='kind = "lora"'):
        trainer.model_for("hf/models/tiny")
    ft = "openai/ft:gpt-4o-mini-2024-07-18:org:s:abc123"
    assert trainer.model_for(ft) == ft.removeprefix("openai/")
    base = OpenAIFineTuner(
        config.model_copy(update={"init_from": "base"}),
        run_id="r",
        state_dir=tmp_path,
        base_url="http://127.0.0.1:9",
    )
    assert base.model_for(ft) == "gpt-4o-mini-2024-07-18"


# ---------------------------------------------------------------- real training behind the sandbox


# peft 0.21 reads a property that transformers 5 deprecated (loading the served adapter).
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_with_a_local_backing_jobs_train_and_the_ft_model_is_served(
    start_sandbox: Callable[..., Any], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from rmft_api.models.tiny import build_tiny_lm
    from rmft_api.providers.registry import resolve

    model_dir = build_tiny_lm(tmp_path / "tiny", seed=0)
    lora = {
        "r": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-2,
        "batch_size": 4,
        "max_seq_len": 256,
        "checkpoint_every_steps": 3,
        "cpu_threads": 1,
        "device": "cpu",
    }
    fine_tuning = {**FAST, "work_dir": str(tmp_path / "work"), "lora": lora}
    server: SandboxServer = start_sandbox(
        resolve(f"hf/{model_dir}", device="cpu"), fine_tuning=fine_tuning
    )
    data = write_jsonl(tmp_path / "train.jsonl", rows(12, answer="C"))
    trainer = tuner(server, tmp_path / "run", n_epochs=3)
    chat = [
        {"role": "system", "content": "You choose one option per round."},
        {"role": "user", "content": "Round 3. Which option?"},
    ]

    def reply(model: str) -> str:
        done = client(server).chat.completions.create(
            model=model, messages=chat, max_tokens=8, temperature=0
        )
        return done.choices[0].message.content or ""

    before = reply("tiny")
    first = trainer.submit(data, base_policy="openai/tiny", iteration=0, out_dir=tmp_path)
    first = trainer.wait(first, timeout_s=60)
    assert first.status == "succeeded" and first.result_policy is not None
    tuned = first.result_policy.removeprefix("openai/")
    assert tuned.startswith("ft:tiny:sandbox:rmft-test:")
    assert tuned in [m.id for m in client(server).models.list()]
    assert first.checkpoints and first.progress.loss is not None
    after = reply(tuned)
    assert "ANSWER: C" in after and after != before

    # The next iteration continues from the fine-tuned model (as the pipeline's second job).
    second = trainer.submit(data, base_policy=first.result_policy, iteration=1, out_dir=tmp_path)
    second = trainer.wait(second, timeout_s=60)
    jobs = server_jobs(server)
    assert [j.model for j in reversed(jobs)] == ["tiny", tuned]
    assert second.result_policy is not None and second.result_policy != first.result_policy
    assert "ANSWER: C" in reply(second.result_policy.removeprefix("openai/"))
