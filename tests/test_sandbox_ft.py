"""The sandbox's files and fine-tuning endpoints over plain HTTP and the real SDK: OpenAI's
shapes, request checks, metadata filters and pages, time-based status progression, events,
checkpoints, cancellation and injected job failures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rmft_api.sandbox.faults import FaultInjector, FaultPlan, FaultRule, load_fault_plan
from rmft_api.sandbox.server import SandboxServer

AUTH = {"Authorization": "Bearer sk-anything"}
FAST = {"validating_s": 0.05, "queued_s": 0.05, "steps": 4, "step_s": 0.02}


def jsonl(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"ANSWER: {i % 3}"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Any]) -> Callable[..., SandboxServer]:
    def start(**fine_tuning: Any) -> SandboxServer:
        faults = {"jobs": fine_tuning.pop("job_faults", [])}
        server: SandboxServer = start_sandbox(fine_tuning={**FAST, **fine_tuning}, faults=faults)
        return server

    return start


def sdk(server: SandboxServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-anything", base_url=server.base_url, max_retries=0)


def upload(server: SandboxServer, data: bytes | None = None, name: str = "train.jsonl") -> str:
    created = sdk(server).files.create(file=(name, data or jsonl(12)), purpose="fine-tune")
    return created.id


def create_job(server: SandboxServer, file_id: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "training_file": file_id, **extra}
    r = httpx.post(f"{server.base_url}/fine_tuning/jobs", json=body, headers=AUTH, timeout=5)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def wait_status(server: SandboxServer, job_id: str, *, timeout_s: float = 10) -> list[str]:
    """Every status seen while polling until the job ends."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not seen or seen[-1] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, seen
        status = sdk(server).fine_tuning.jobs.retrieve(job_id).status
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.01)
    return seen


# ---------------------------------------------------------------- files


def test_files_upload_list_retrieve_content_delete(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox()
    client = sdk(server)
    data = jsonl(12)
    first = client.files.create(file=("a.jsonl", data), purpose="fine-tune")
    assert (first.object, first.purpose, first.bytes, first.filename) == (
        "file",
        "fine-tune",
        len(data),
        "a.jsonl",
    )
    batch = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    third = client.files.create(file=("c.jsonl", data), purpose="fine-tune")
    assert [f.id for f in client.files.list(purpose="fine-tune")] == [third.id, first.id]
    assert [f.id for f in client.files.list(order="asc")] == [first.id, batch.id, third.id]
    page = client.files.list(limit=1)
    assert [f.id for f in page.data] == [third.id] and page.has_more
    assert [f.id for f in client.files.list(limit=5, after=third.id)] == [batch.id, first.id]
    assert client.files.retrieve(first.id).bytes == len(data)
    assert client.files.content(first.id).read() == data
    assert client.files.delete(batch.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch.id)


def test_file_requests_are_checked(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox()
    url = f"{server.base_url}/files"
    no_key = httpx.post(url, files={"file": ("t.jsonl", b"{}")}, data={"purpose": "fine-tune"})
    assert no_key.status_code == 401
    bad_purpose = httpx.post(
        url, files={"file": ("t.jsonl", b"{}")}, data={"purpose": "nope"}, headers=AUTH
    )
    assert bad_purpose.status_code == 400 and bad_purpose.json()["error"]["param"] == "purpose"
    no_file = httpx.post(url, data={"purpose": "fine-tune"}, headers=AUTH)
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    not_jsonl = httpx.post(
        url, files={"file": ("t.txt", b"{}")}, data={"purpose": "fine-tune"}, headers=AUTH
    )
    assert not_jsonl.status_code == 400 and ".jsonl" in not_jsonl.json()["error"]["message"]


# ---------------------------------------------------------------- jobs


def test_a_job_progresses_in_time_with_loss_events_and_checkpoints(
    sandbox: Callable[..., SandboxServer],
) -> None:
    server = sandbox(validating_s=0.4, queued_s=0.4, steps=6, step_s=0.05)
    file_id = upload(server)
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    created = create_job(server, file_id, method=method, suffix="mine", seed=11)
    assert created["object"] == "fine_tuning.job" and created["id"].startswith("ftjob-")
    assert created["status"] == "validating_files" and created["fine_tuned_model"] is None
    assert created["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert wait_status(server, created["id"]) == [
        "validating_files",
        "queued",
        "running",
        "succeeded",
    ]
    client = sdk(server)
    job = client.fine_tuning.jobs.retrieve(created["id"])
    assert job.fine_tuned_model == f"ft:gpt-4o-mini:sandbox:mine:{job.id[6:14]}"
    assert job.seed == 11 and job.finished_at is not None and job.error is None
    assert job.hyperparameters.batch_size == 1 and job.hyperparameters.n_epochs == 3
    assert job.trained_tokens is not None and job.trained_tokens > 0

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    assert events[0].message == "The job has successfully completed"  # newest first
    metrics = [e for e in reversed(events) if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [1, 2, 3, 4, 5, 6]
    losses = [e.data["train_loss"] for e in metrics]
    assert losses[-1] < losses[0]
    assert metrics[-1].message.startswith("Step 6/6: training loss=")
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    assert page.data[1].id == events[1].id

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [6, 4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[0].fine_tuning_job_id == job.id
    # The fine-tuned model is listed and answered (by the backing here: no local model).
    assert job.fine_tuned_model in [m.id for m in client.models.list()]


def test_jobs_are_listed_newest_first_filtered_by_metadata_in_pages(
    sandbox: Callable[..., SandboxServer],
) -> None:
    server = sandbox()
    file_id = upload(server)
    ids = [
        create_job(server, file_id, metadata={"run_id": run, "iteration": str(i)})["id"]
        for i, run in enumerate(["a", "b", "a"])
    ]
    create_job(server, file_id)  # no metadata
    jobs = sdk(server).fine_tuning.jobs
    assert [j.id for j in jobs.list(metadata={"run_id": "a"})] == [ids[2], ids[0]]
    assert [j.id for j in jobs.list(metadata={"run_id": "a", "iteration": "0"})] == [ids[0]]
    assert list(jobs.list(metadata={"run_id": "c"})) == []
    first = jobs.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    rest = jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in rest.data] == [ids[1], ids[0]] and not rest.has_more
    null_only = httpx.get(f"{server.base_url}/fine_tuning/jobs?metadata=null", headers=AUTH)
    assert [j["metadata"] for j in null_only.json()["data"]] == [None]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"training_file": "file-missing"}, "training_file", None),
        ({"model": "ft:gpt-4o-mini:sandbox::unknown"}, "model", "model_not_available"),
        ({"suffix": "x" * 65}, "suffix", None),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", None),
        ({"metadata": {"k": 1}}, "metadata", None),
        ({"method": {"type": "dpo"}}, "method", None),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "hyperparameters.n_epochs",
            None,
        ),
        ({"seed": -1}, "seed", None),
    ],
)
def test_bad_creates_are_refused_like_openai(
    sandbox: Callable[..., SandboxServer], body: dict[str, Any], param: str, code: str | None
) -> None:
    server = sandbox()
    payload = {"model": "gpt-4o-mini", "training_file": upload(server), **body}
    r = httpx.post(f"{server.base_url}/fine_tuning/jobs", json=payload, headers=AUTH, timeout=5)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["code"] == code
    assert server.state.jobs.jobs == {}


def test_unknown_models_cannot_be_fine_tuned(start_sandbox: Callable[..., Any]) -> None:
    server: SandboxServer = start_sandbox(models=["gpt-4o-mini"], fine_tuning=FAST)
    with pytest.raises(openai.BadRequestError, match="not available for fine-tuning"):
        sdk(server).fine_tuning.jobs.create(model="gpt-4", training_file=upload(server))


def test_an_invalid_file_fails_the_job_with_line_and_rule(
    sandbox: Callable[..., SandboxServer],
) -> None:
    server = sandbox()
    data = jsonl(11) + b"{not json\n"
    job = create_job(server, upload(server, data))
    assert wait_status(server, job["id"])[-1] == "failed"
    error = sdk(server).fine_tuning.jobs.retrieve(job["id"]).error
    assert error is not None and error.code == "invalid_training_file"
    assert error.param == "training_file" and "line 12 (json)" in error.message


def test_injected_job_failures(sandbox: Callable[..., SandboxServer]) -> None:
    server = sandbox(
        job_faults=[
            {"fault": "invalid_file", "at": [1]},
            {"fault": "job_failed", "at": [2], "code": "oom", "message": "out of memory"},
        ]
    )
    file_id = upload(server)
    first, second, third = (create_job(server, file_id)["id"] for _ in range(3))
    assert [wait_status(server, j)[-1] for j in (first, second, third)] == [
        "failed",
        "failed",
        "succeeded",
    ]
    jobs = sdk(server).fine_tuning.jobs
    started = "Fine-tuning job started"
    assert started not in [e.message for e in jobs.list_events(first)]  # failed validating
    assert started in [e.message for e in jobs.list_events(second)]  # failed running
    assert jobs.retrieve(first).error.code == "invalid_training_file"
    failed = jobs.retrieve(second)
    assert failed.error is not None and (failed.error.code, failed.error.message) == (
        "oom",
        "out of memory",
    )
    assert failed.fine_tuned_model is None
    assert any(e.type == "metrics" for e in jobs.list_events(second))  # it ran before failing


def test_cancel_a_running_job_and_not_a_finished_one(
    sandbox: Callable[..., SandboxServer],
) -> None:
    server = sandbox(steps=100, step_s=0.1)
    job_id = create_job(server, upload(server))["id"]
    jobs = sdk(server).fine_tuning.jobs
    cancelled = jobs.cancel(job_id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert jobs.retrieve(job_id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already finished"):
        jobs.cancel(job_id)
    with pytest.raises(openai.NotFoundError):
        jobs.retrieve("ftjob-nope")


# ---------------------------------------------------------------- fault plan extensions


def test_fault_rules_can_target_one_method_and_plans_carry_job_faults(tmp_path: Path) -> None:
    path = "/v1/fine_tuning/jobs"
    injector = FaultInjector(
        FaultPlan(rules=[FaultRule(fault="late_reply", path=path, method="POST", times=1)])
    )
    assert injector.decide(path, "GET")[1] is None
    assert injector.decide(path, "post")[1] is not None
    assert injector.decide(path, "POST")[1] is None  # times = 1
    plan_file = tmp_path / "faults.toml"
    plan_file.write_text(
        '[[rules]]\nfault = "late_reply"\npath = "/v1/files"\nmethod = "POST"\ndelay_s = 2\n'
        '[[jobs]]\nfault = "job_failed"\nat = [2]\n',
        encoding="utf-8",
    )
    plan = load_fault_plan(plan_file)
    assert plan.rules[0].method == "POST" and plan.rules[0].delay_s == 2
    assert plan.jobs[0].fault == "job_failed" and plan.jobs[0].at == [2]


def test_a_late_reply_does_the_work_then_holds_the_answer(
    start_sandbox: Callable[..., Any],
) -> None:
    rule = {"fault": "late_reply", "path": "/v1/files", "method": "POST", "delay_s": 0.5}
    server: SandboxServer = start_sandbox(faults={"rules": [rule]}, fine_tuning=FAST)
    url = f"{server.base_url}/files"
    form = {"data": {"purpose": "fine-tune"}, "headers": AUTH}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, files={"file": ("a.jsonl", b"{}")}, timeout=0.2, **form)
    assert len(server.state.files.files) == 1  # created although the client never heard
    started = time.monotonic()
    r = httpx.post(url, files={"file": ("b.jsonl", b"{}")}, timeout=5, **form)
    assert r.status_code == 200 and time.monotonic() - started >= 0.45
    assert len(server.state.files.files) == 2
