"""Together AI's API under `/together` (a Together client's base_url is `<sandbox>/together`):
its three-step file upload, `/v1/fine-tunes` (model limits, price estimate, create, list,
retrieve, cancel, events, checkpoints) and the OpenAI-compatible `/v1/chat/completions` that
serves base and fine-tuned models, in the shapes the `together` SDK (3.x) reads.

Jobs run on the sandbox's one fine-tuning engine (ft_jobs.py): simulated, or trained for real
with LoRA on a local backing model, and served under their output name once `completed`.
Together's statuses are mapped from the engine's; a job continues another with
`from_checkpoint` (its id or output name, optionally `:step`). Uploads: `POST /v1/files` with
the file's name and checksum answers 302 to a PUT target (or 409 with the id of a file of the
same checksum), then `POST /v1/files/{id}/preprocess` makes the file usable. Faults apply to
these paths like to any other (e.g. `permission_denied` on `POST /together/v1/fine-tunes`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rmft_api.sandbox import chat
from rmft_api.sandbox.files import StoredFile, invalid, missing_key_reply
from rmft_api.sandbox.ft_objects import SandboxJob
from rmft_api.sandbox.replies import error_reply

if TYPE_CHECKING:
    from rmft_api.sandbox.state import SandboxState

PREFIX = "/together"
MAX_SUFFIX = 40  # Together's limit on the job suffix
STATUS = {  # the engine's (OpenAI's) statuses → Together's
    "validating_files": "pending",
    "queued": "queued",
    "running": "running",
    "succeeded": "completed",
    "failed": "error",
    "cancelled": "cancelled",
}
PRICE_PER_MILLION_TOKENS = 0.48  # the sandbox's estimate (Together's small-model LoRA rate)


@dataclass
class _Pending:
    file_id: str
    filename: str
    checksum: str
    data: bytes | None = None


@dataclass
class TogetherState:
    """Together's view of the sandbox: its job ids, uploads in progress, files by checksum."""

    jobs: dict[str, str] = field(default_factory=dict)  # Together id → engine job id
    pending: dict[str, _Pending] = field(default_factory=dict)
    by_checksum: dict[str, str] = field(default_factory=dict)
    creates: int = 0  # POST /v1/fine-tunes that created a job


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat()


def _file_json(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created_at,
        "filename": stored.filename,
        "FileType": "jsonl",
        "purpose": stored.purpose,
        "processing_status": "COMPLETED",
    }


def _lora_limits(model: str) -> dict[str, Any]:
    return {
        "model_name": model,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            "default_rank": 8,
            "max_batch_size": 32,
            "max_batch_size_dpo": 16,
            "max_rank": 64,
            "min_batch_size": 1,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
        "full_training": {"max_batch_size": 16, "max_batch_size_dpo": 8, "min_batch_size": 1},
        "max_learning_rate": 1.0,
        "min_learning_rate": 1e-8,
        "max_num_checkpoints": 10,
        "max_num_epochs": 20,
        "max_num_evals": 10,
        "max_seq_length_sft": 8192,
        "max_seq_length_dpo": 8192,
        "min_max_seq_length": 256,
        "merge_output_lora": False,
        "supports_full_training": True,
        "supports_reasoning": False,
        "supports_tools": False,
        "supports_vision": False,
    }


def routes(state: SandboxState) -> list[Route]:
    engine = state.jobs
    ours = TogetherState()
    state.together = ours

    def job_of(together_id: str) -> SandboxJob | None:
        engine_id = ours.jobs.get(together_id)
        return engine.jobs.get(engine_id) if engine_id else None

    def view(together_id: str, job: SandboxJob) -> dict[str, Any]:
        hp = job.hyperparameters
        epochs = hp.get("n_epochs")
        done = job.status == "succeeded"
        tokens = job.trained_tokens
        return {
            "id": together_id,
            "status": STATUS.get(job.status, job.status),
            "user_id": "sandbox-user",
            "created_at": _iso(job.created_at),
            "updated_at": _iso(job.finished_at or job.created_at),
            "model": job.root_model,
            "from_checkpoint": job.model if job.model != job.root_model else None,
            "model_output_name": job.fine_tuned_model if done else None,
            "training_file": job.training_file,
            "suffix": job.suffix,
            "n_epochs": epochs if isinstance(epochs, int) else None,
            "batch_size": hp.get("batch_size"),
            "learning_rate": job.learning_rate,
            "random_seed": job.seed,
            "token_count": tokens // epochs if tokens and isinstance(epochs, int) else None,
            "training_type": job.training_type,
            "training_method": {"method": "sft", "train_on_inputs": "auto"},
        }

    def event_json(job: SandboxJob, event: dict[str, Any]) -> dict[str, Any]:
        data = event.get("data") or {}
        level = event.get("level", "info")
        kind = "job_error" if level == "error" else "training_start" if data else "job_start"
        return {
            "object": "fine-tune-event",
            "created_at": _iso(int(event["created_at"])),
            "message": event["message"],
            "type": kind,
            "level": level,
            "step": data.get("step"),
            "total_steps": data.get("total_steps"),
        }

    def denied(request: Request) -> Response | None:
        return missing_key_reply(request)

    def not_found(what: str, object_id: str) -> Response:
        return error_reply(404, f"{what} {object_id} not found", type_="invalid_request_error")

    async def upload_url(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        form = await request.form()
        try:
            name, checksum = form.get("file_name"), form.get("checksum")
            purpose = form.get("purpose")
        finally:
            await form.close()
        if not isinstance(name, str) or not isinstance(checksum, str) or purpose != "fine-tune":
            return invalid("file_name, checksum and purpose = fine-tune are required")
        if checksum in ours.by_checksum:
            file_id = ours.by_checksum[checksum]
            body = {"message": "File already exists", "file_id": file_id}
            return JSONResponse(body, status_code=409)
        file_id = f"file-{uuid.uuid4()}"
        ours.pending[file_id] = _Pending(file_id, name, checksum)
        target = f"{str(request.base_url).rstrip('/')}{PREFIX}/v1/files/{file_id}/content-upload"
        return Response(
            status_code=302, headers={"Location": target, "X-Together-File-Id": file_id}
        )

    async def put_content(request: Request) -> Response:
        file_id = str(request.path_params["file_id"])
        pending = ours.pending.get(file_id)
        if pending is None:
            return not_found("upload", file_id)
        pending.data = await request.body()
        return Response(status_code=200)

    async def preprocess(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        file_id = str(request.path_params["file_id"])
        if (stored := state.files.get(file_id)) is not None:
            return JSONResponse(_file_json(stored))
        pending = ours.pending.get(file_id)
        if pending is None or pending.data is None:
            return not_found("upload", file_id)
        stored = state.files.add(pending.filename, "fine-tune", pending.data, file_id=file_id)
        ours.by_checksum[pending.checksum] = file_id
        del ours.pending[file_id]
        return JSONResponse(_file_json(stored))

    async def list_files(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        listed = [_file_json(f) for f in state.files.files.values() if f.purpose == "fine-tune"]
        return JSONResponse({"data": listed})

    async def retrieve_file(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        stored = state.files.get(str(request.path_params["file_id"]))
        if stored is None:
            return not_found("file", str(request.path_params["file_id"]))
        return JSONResponse(_file_json(stored))

    def trainable(model: str) -> bool:
        return model in engine.models or state.known_model(model)

    async def limits(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        model = request.query_params.get("model_name", "")
        if not trainable(model):
            return not_found("model", model)
        return JSONResponse(_lora_limits(model))

    async def estimate(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        body = await request.json()
        stored = state.files.get(str(body.get("training_file")))
        if stored is None:
            return JSONResponse(
                {"estimation_available": False, "unavailable_reason": "train_file_not_validated"}
            )
        tokens = stored.bytes / 4 * int(body.get("n_epochs") or 1)
        return JSONResponse(
            {
                "estimation_available": True,
                "allowed_to_proceed": True,
                "estimated_train_token_count": tokens,
                "estimated_total_price": tokens / 1e6 * PRICE_PER_MILLION_TOKENS,
            }
        )

    def start_model(body: dict[str, Any]) -> tuple[str, str] | Response:
        """(model the job trains from, its root base) of a create body."""
        checkpoint = body.get("from_checkpoint")
        if isinstance(checkpoint, str) and checkpoint:
            for candidate in (checkpoint, checkpoint.rsplit(":", 1)[0]):
                job = job_of(candidate)
                name = job.fine_tuned_model if job is not None else candidate
                if name in engine.models:
                    return name, engine.models[name]
            return invalid(f"from_checkpoint {checkpoint!r} is not a finished job or model")
        model = body.get("model")
        if not isinstance(model, str) or not trainable(model):
            return invalid(f"model {model!r} is not available for fine-tuning", code="model")
        return model, engine.models.get(model, model)

    async def create(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        body = await request.json()
        if not isinstance(body, dict):
            return invalid("the body must be a JSON object")
        stored = state.files.get(str(body.get("training_file")))
        if stored is None:
            return invalid(f"training_file {body.get('training_file')!r} does not exist")
        started = start_model(body)
        if isinstance(started, Response):
            return started
        model, root = started
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX):
            return invalid(f"suffix must be at most {MAX_SUFFIX} characters")
        epochs = body.get("n_epochs", 1)
        batch = body.get("batch_size", "max")
        job = engine.create(
            model=model,
            root_model=root,
            training_file=stored,
            validation_file=None,
            hyperparameters={
                "n_epochs": int(epochs),
                "batch_size": "auto" if batch == "max" else int(batch),
                "learning_rate_multiplier": "auto",
            },
            suffix=suffix,
            seed=body.get("random_seed"),
            metadata=None,
        )
        job.learning_rate = body.get("learning_rate")
        job.training_type = body.get("training_type")
        together_id = f"ft-{uuid.uuid4()}"
        ours.jobs[together_id] = job.id
        ours.creates += 1
        return JSONResponse(view(together_id, job))

    async def list_jobs(request: Request) -> Response:
        if (no := denied(request)) is not None:
            return no
        found = [(tid, engine.jobs[eid]) for tid, eid in reversed(ours.jobs.items())]
        return JSONResponse({"data": [view(tid, job) for tid, job in found]})

    def found(request: Request) -> tuple[str, SandboxJob] | Response:
        if (no := denied(request)) is not None:
            return no
        together_id = str(request.path_params["job_id"])
        job = job_of(together_id)
        return (together_id, job) if job is not None else not_found("fine-tune", together_id)

    async def retrieve(request: Request) -> Response:
        hit = found(request)
        return hit if isinstance(hit, Response) else JSONResponse(view(*hit))

    async def cancel(request: Request) -> Response:
        hit = found(request)
        if isinstance(hit, Response):
            return hit
        together_id, job = hit
        if job.status not in ("succeeded", "failed", "cancelled"):
            await engine.cancel(job)
        return JSONResponse(view(together_id, job))

    async def events(request: Request) -> Response:
        hit = found(request)
        if isinstance(hit, Response):
            return hit
        _, job = hit
        return JSONResponse({"data": [event_json(job, e) for e in job.events]})

    async def checkpoints(request: Request) -> Response:
        hit = found(request)
        if isinstance(hit, Response):
            return hit
        together_id, job = hit
        data = [
            {
                "checkpoint_type": f"Intermediate checkpoint at step {c['step_number']}",
                "created_at": _iso(int(c["created_at"])),
                "path": f"{together_id}:{c['step_number']}",
                "step": c["step_number"],
                "checkpoint": "adapter",
            }
            for c in job.checkpoints
        ]
        return JSONResponse({"data": data})

    async def models(request: Request) -> Response:
        # Together lists models as a bare array (not OpenAI's {"object": "list", "data": ...}).
        names = state.listed_models()
        listed = [
            {"id": m, "object": "model", "created": 0, "type": "chat", "display_name": m}
            for m in names
        ]
        return JSONResponse(listed)

    v1 = f"{PREFIX}/v1"
    chat_route = [r for r in chat.routes(state, prefix=v1) if r.path.endswith("/completions")]
    return [
        *chat_route,
        Route(f"{v1}/models", models, methods=["GET"]),
        Route(f"{v1}/files", upload_url, methods=["POST"]),
        Route(f"{v1}/files", list_files, methods=["GET"]),
        Route(f"{v1}/files/{{file_id}}", retrieve_file, methods=["GET"]),
        Route(f"{v1}/files/{{file_id}}/content-upload", put_content, methods=["PUT"]),
        Route(f"{v1}/files/{{file_id}}/preprocess", preprocess, methods=["POST"]),
        Route(f"{v1}/fine-tunes/models/limits", limits, methods=["GET"]),
        Route(f"{v1}/fine-tunes/estimate-price", estimate, methods=["POST"]),
        Route(f"{v1}/fine-tunes", create, methods=["POST"]),
        Route(f"{v1}/fine-tunes", list_jobs, methods=["GET"]),
        Route(f"{v1}/fine-tunes/{{job_id}}", retrieve, methods=["GET"]),
        Route(f"{v1}/fine-tunes/{{job_id}}/cancel", cancel, methods=["POST"]),
        Route(f"{v1}/fine-tunes/{{job_id}}/events", events, methods=["GET"]),
        Route(f"{v1}/fine-tunes/{{job_id}}/checkpoints", checkpoints, methods=["GET"]),
    ]
