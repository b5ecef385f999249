"""`/v1/fine_tuning/jobs`: create, retrieve, list (metadata filter, cursor pages), cancel,
events and checkpoints, with OpenAI's request checks and response shapes.

The jobs themselves (status progression, real or simulated training, serving the result) live
in ft_jobs.py. Lists are newest first, as OpenAI's are; `after` is the id of the last object of
the previous page. A job's training file is checked while it is `validating_files`: an invalid
file fails the job with error code `invalid_training_file`, as OpenAI does; a create naming a
file that does not exist, a model that cannot be fine-tuned or bad parameters is refused (400).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rmft_api.sandbox.files import invalid, list_body, missing_key_reply, page, query_limit
from rmft_api.sandbox.ft_jobs import FineTuningJobs
from rmft_api.sandbox.ft_objects import TERMINAL, SandboxJob
from rmft_api.sandbox.replies import error_reply

if TYPE_CHECKING:
    from rmft_api.sandbox.state import SandboxState

MAX_SUFFIX = 64
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
HYPERPARAMETER_RANGES: dict[str, tuple[type, float, float]] = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 1e-9, 10.0),
}


class RequestError(ValueError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method")
    raw: Any = body.get("hyperparameters") or {}  # the deprecated top-level form
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise RequestError(
                "the sandbox fine-tunes with method type 'supervised' only", param="method"
            )
        supervised = method.get("supervised") or {}
        raw = (supervised.get("hyperparameters") or {}) if isinstance(supervised, dict) else None
    if not isinstance(raw, dict):
        raise RequestError("hyperparameters must be an object", param="hyperparameters")
    out: dict[str, Any] = {}
    for name, (kind, low, high) in HYPERPARAMETER_RANGES.items():
        value = raw.get(name, "auto")
        if value != "auto":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if (
                not ok
                or (kind is int and not float(value).is_integer())
                or not low <= value <= high
            ):
                raise RequestError(
                    f"{name} must be 'auto' or a number in [{low:g}, {high:g}]; got {value!r}",
                    param=f"hyperparameters.{name}",
                )
            value = kind(value)
        out[name] = value
    unknown = sorted(set(raw) - set(HYPERPARAMETER_RANGES))
    if unknown:
        raise RequestError(
            f"unknown hyperparameters: {', '.join(unknown)}", param="hyperparameters"
        )
    return out


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS:
        raise RequestError(
            f"metadata must be an object of at most {MAX_METADATA_PAIRS} pairs", param="metadata"
        )
    for key, item in value.items():
        if (
            len(key) > MAX_METADATA_KEY
            or not isinstance(item, str)
            or len(item) > MAX_METADATA_VALUE
        ):
            raise RequestError(
                f"metadata keys are strings of ≤{MAX_METADATA_KEY} characters, values strings of "
                f"≤{MAX_METADATA_VALUE}; {key!r} is not",
                param="metadata",
            )
    return dict(value)


def _create(state: SandboxState, jobs: FineTuningJobs, body: Any) -> SandboxJob:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    model, file_id = body.get("model"), body.get("training_file")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is a required property", param="model")
    if not isinstance(file_id, str) or not file_id:
        raise RequestError("'training_file' is a required property", param="training_file")
    stored = state.files.get(file_id)
    if stored is None or stored.purpose != "fine-tune":
        raise RequestError(f"invalid training_file: {file_id}", param="training_file")
    root = jobs.root_of(model)
    if root is None:
        raise RequestError(
            f"Model {model} is not available for fine-tuning or does not exist.",
            param="model",
            code="model_not_available",
        )
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX):
        raise RequestError(
            f"suffix must be a string of at most {MAX_SUFFIX} characters", param="suffix"
        )
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise RequestError("seed must be a non-negative integer", param="seed")
    validation_file = body.get("validation_file")
    if validation_file is not None and state.files.get(str(validation_file)) is None:
        raise RequestError(f"invalid validation_file: {validation_file}", param="validation_file")
    return jobs.create(
        model=model,
        root_model=root,
        training_file=stored,
        validation_file=validation_file,
        hyperparameters=_hyperparameters(body),
        suffix=suffix,
        seed=seed,
        metadata=_metadata(body.get("metadata")),
    )


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[k]=v` pairs of the query (the SDK's encoding of `metadata={...}`)."""
    wanted = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.multi_items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return wanted or None


def routes(state: SandboxState) -> list[Route]:
    jobs = state.jobs

    def found(request: Request) -> SandboxJob | Response:
        if (denied := missing_key_reply(request)) is not None:
            return denied
        job_id = str(request.path_params["job_id"])
        job = jobs.jobs.get(job_id)
        if job is None:
            return error_reply(
                404, f"Could not find fine-tuning job: {job_id}", type_="invalid_request_error"
            )
        return job

    async def create(request: Request) -> Response:
        if (denied := missing_key_reply(request)) is not None:
            return denied
        try:
            job = _create(state, jobs, await request.json())
        except RequestError as e:
            return invalid(str(e), param=e.param, code=e.code)
        except ValueError as e:  # invalid JSON
            return invalid(f"invalid request body: {e}")
        return JSONResponse(job.as_json())

    async def list_jobs(request: Request) -> Response:
        if (denied := missing_key_reply(request)) is not None:
            return denied
        limit = query_limit(request, 20, maximum=100)
        if isinstance(limit, Response):
            return limit
        wanted = _metadata_filter(request)
        null_only = request.query_params.get("metadata") == "null"
        selected = [
            job.as_json()
            for job in reversed(jobs.jobs.values())
            if (not null_only or not job.metadata)
            and (wanted is None or all((job.metadata or {}).get(k) == v for k, v in wanted.items()))
        ]
        return _paged(request, selected, limit)

    async def retrieve(request: Request) -> Response:
        job = found(request)
        return job if isinstance(job, Response) else JSONResponse(job.as_json())

    async def cancel(request: Request) -> Response:
        job = found(request)
        if isinstance(job, Response):
            return job
        if job.status in TERMINAL:
            return invalid(f"Job {job.id} has already finished with status {job.status}.")
        await jobs.cancel(job)
        return JSONResponse(job.as_json())

    def newest_first(request: Request, attribute: str, *, default_limit: int) -> Response:
        """A job's events or checkpoints, newest first, paged as OpenAI pages them."""
        job = found(request)
        if isinstance(job, Response):
            return job
        limit = query_limit(request, default_limit, maximum=100)
        if isinstance(limit, Response):
            return limit
        return _paged(request, list(reversed(getattr(job, attribute))), limit)

    async def events(request: Request) -> Response:
        return newest_first(request, "events", default_limit=20)

    async def checkpoints(request: Request) -> Response:
        return newest_first(request, "checkpoints", default_limit=10)

    return [
        Route("/v1/fine_tuning/jobs", create, methods=["POST"]),
        Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}", retrieve, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/fine_tuning/jobs/{job_id}/events", events, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", checkpoints, methods=["GET"]),
    ]


def _paged(request: Request, items: list[dict[str, Any]], limit: int) -> Response:
    paged = page(items, after=request.query_params.get("after"), limit=limit)
    if paged is None:
        return invalid("'after' is not an id of this list", param="after")
    data, has_more = paged
    return JSONResponse(list_body(data, has_more=has_more))
