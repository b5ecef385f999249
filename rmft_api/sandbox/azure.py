"""Azure OpenAI in the sandbox: its data plane (`/openai/...?api-version=`, `api-key` header or
an Entra bearer token) and a minimal control plane for model deployments
(`/subscriptions/.../providers/Microsoft.CognitiveServices/accounts/<a>/deployments/<name>`).

The data plane is a rewrite in front of the OpenAI routes: `/openai/<path>` is served as
`/v1/<path>` (files, fine-tuning jobs, models) after checking `api-version` and the credential;
`/openai/deployments/<d>/chat/completions` answers as the model deployment <d> serves, and only
once that deployment has succeeded; a job create must carry a valid `trainingType`. Deployments
move `Creating → Succeeded` after `deploy_s`, or fail (`SandboxSettings.azure.faults`:
`fault = "failed"`), or are refused for quota (`"quota"`: 400 InsufficientQuota), by creation
order.
Faults on any path still apply (the fault layer sees the Azure path), e.g.
`training_not_available` on `POST /openai/fine_tuning/jobs`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from rmft_api.sandbox.state import SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[Any]]

DATA_PREFIX = "/openai/"
TRAINING_TYPES = ("standard", "globalstandard", "developer")
_DEPLOYMENT_CHAT = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
CONTROL = (
    "/subscriptions/{subscription}/resourceGroups/{group}/providers/"
    "Microsoft.CognitiveServices/accounts/{account}/deployments"
)


class DeploymentFaultRule(BaseModel):
    """A deployment that goes wrong, by creation attempt (1-based; empty = all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Literal["failed", "quota"] = Field(
        description="failed: provisioningState ends Failed; quota: the PUT is refused (400 "
        "InsufficientQuota)."
    )
    at: list[int] = Field(default_factory=list)


class AzureSandboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deploy_s: float = Field(default=0.2, ge=0, description="Time a deployment is Creating.")
    deployments: dict[str, str] = Field(
        default_factory=dict,
        description="Deployments that exist from the start (name → model), e.g. the base "
        "model's: gpt-4o-mini = gpt-4o-mini-2024-07-18.",
    )
    faults: list[DeploymentFaultRule] = Field(default_factory=list)


@dataclass
class SandboxDeployment:
    name: str
    model: str
    sku: dict[str, Any]
    number: int  # 1-based creation order
    state: str = "Creating"
    task: asyncio.Task[None] | None = None

    def as_json(self, path: str) -> dict[str, Any]:
        return {
            "id": path,
            "name": self.name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": self.sku,
            "properties": {
                "model": {"format": "OpenAI", "name": self.model, "version": "1"},
                "provisioningState": self.state,
            },
        }


@dataclass
class AzureState:
    deployments: dict[str, SandboxDeployment] = field(default_factory=dict)
    attempts: int = 0  # PUTs that tried to create (a new name, or over a failed one)
    created: int = 0  # deployments created (attempts not refused)
    puts: int = 0
    deletes: int = 0
    training_types: list[str] = field(default_factory=list)  # of every job create


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def setup(state: SandboxState) -> AzureState:
    azure = AzureState()
    for name, model in state.settings.azure.deployments.items():
        azure.deployments[name] = SandboxDeployment(
            name, model, {"name": "standard", "capacity": 1}, number=0, state="Succeeded"
        )
    state.azure = azure
    return azure


def routes(state: SandboxState) -> list[Route]:
    """The control plane's deployment routes."""
    azure = state.azure if state.azure is not None else setup(state)
    settings = state.settings.azure

    def checked(request: Request) -> Response | None:
        if not request.query_params.get("api-version"):
            return _error(400, "MissingApiVersionParameter", "The api-version query is required.")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return _error(401, "AuthenticationFailed", "Authentication failed: no bearer token.")
        return None

    def fault_of(number: int) -> DeploymentFaultRule | None:
        return next((r for r in settings.faults if not r.at or number in r.at), None)

    async def provision(deployment: SandboxDeployment, fails: bool) -> None:
        await asyncio.sleep(settings.deploy_s)
        deployment.state = "Failed" if fails else "Succeeded"

    async def put(request: Request) -> Response:
        if (bad := checked(request)) is not None:
            return bad
        name = str(request.path_params["name"])
        try:
            body = await request.json()
            model = body["properties"]["model"]["name"]
            sku = dict(body["sku"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "InvalidRequestContent", "sku and properties.model are required")
        if not (model in state.jobs.models or state.known_model(model)):
            return _error(400, "DeploymentModelNotSupported", f"The model {model} is unknown.")
        azure.puts += 1
        existing = azure.deployments.get(name)
        if existing is not None and existing.state != "Failed" and existing.model == model:
            return JSONResponse(existing.as_json(request.url.path))  # idempotent update
        azure.attempts += 1
        number = azure.attempts  # what fault rules' `at` counts: creations tried
        fault = fault_of(number)
        if fault is not None and fault.fault == "quota":
            return _error(
                400,
                "InsufficientQuota",
                f"This operation require {sku.get('capacity', 1)} new capacity in quota "
                "Tokens Per Minute (thousands), which is bigger than the current available "
                "capacity 0.",
            )
        azure.created += 1
        deployment = SandboxDeployment(name, model, sku, number=number)
        azure.deployments[name] = deployment
        deployment.task = asyncio.get_running_loop().create_task(
            provision(deployment, fails=fault is not None and fault.fault == "failed")
        )
        return JSONResponse(deployment.as_json(request.url.path), status_code=201)

    async def get(request: Request) -> Response:
        if (bad := checked(request)) is not None:
            return bad
        deployment = azure.deployments.get(str(request.path_params["name"]))
        if deployment is None:
            return _error(404, "DeploymentNotFound", "The deployment does not exist.")
        return JSONResponse(deployment.as_json(request.url.path))

    async def delete(request: Request) -> Response:
        if (bad := checked(request)) is not None:
            return bad
        deployment = azure.deployments.pop(str(request.path_params["name"]), None)
        if deployment is None:
            return Response(status_code=204)
        azure.deletes += 1
        if deployment.task is not None:
            deployment.task.cancel()
        return Response(status_code=200)

    async def list_all(request: Request) -> Response:
        if (bad := checked(request)) is not None:
            return bad
        base = request.url.path
        value = [d.as_json(f"{base}/{d.name}") for d in azure.deployments.values()]
        return JSONResponse({"value": value})

    return [
        Route(f"{CONTROL}/{{name}}", put, methods=["PUT"]),
        Route(f"{CONTROL}/{{name}}", get, methods=["GET"]),
        Route(f"{CONTROL}/{{name}}", delete, methods=["DELETE"]),
        Route(CONTROL, list_all, methods=["GET"]),
    ]


class AzureDataPlane:
    """ASGI: serves `/openai/...` as the OpenAI routes would, the Azure way."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(DATA_PREFIX):
            return await self.app(scope, receive, send)
        query = scope.get("query_string", b"").decode("latin-1")
        if "api-version=" not in query:
            reply = _error(404, "404", "Resource not found (the api-version query is required)")
            return await reply(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        key = headers.get("api-key", b"").decode("latin-1").strip()
        bearer = headers.get("authorization", b"").decode("latin-1")
        if not key and not bearer.startswith("Bearer "):
            reply = _error(
                401, "401", "Access denied due to missing subscription key or bearer token."
            )
            return await reply(scope, receive, send)
        body: bytes | None = None  # a rewritten body replaces the request's
        chat = _DEPLOYMENT_CHAT.match(path)
        if chat is not None:
            deployment = self._deployment(chat.group(1))
            if deployment is None:
                reply = _error(
                    404,
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist (or has not "
                    "succeeded yet).",
                )
                return await reply(scope, receive, send)
            data = json.loads(await _read(receive) or b"{}")
            data["model"] = deployment.model
            body, new_path = json.dumps(data).encode(), "/v1/chat/completions"
        else:
            new_path = "/v1/" + path.removeprefix(DATA_PREFIX)
            if path == "/openai/fine_tuning/jobs" and scope.get("method") == "POST":
                body = await _read(receive)
                problem = self._check_training_type(body)
                if problem is not None:
                    return await problem(scope, receive, send)
        drop = {b"content-length"} if body is not None else set()
        if key:  # the OpenAI routes read the key as a bearer token
            drop.add(b"authorization")
        new_headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
        if key:
            new_headers.append((b"authorization", f"Bearer {key}".encode("latin-1")))
        if body is not None:
            new_headers.append((b"content-length", str(len(body)).encode()))
            receive = replay_body(body, receive)
        inner = {**scope, "path": new_path, "raw_path": new_path.encode(), "headers": new_headers}
        return await self.app(inner, receive, send)

    def _deployment(self, name: str) -> SandboxDeployment | None:
        azure = self.state.azure
        deployment = azure.deployments.get(name) if azure is not None else None
        return deployment if deployment is not None and deployment.state == "Succeeded" else None

    def _check_training_type(self, raw: bytes) -> Response | None:
        try:
            data = json.loads(raw)
        except ValueError:
            return None  # the OpenAI route answers malformed bodies
        value = data.get("trainingType") if isinstance(data, dict) else None
        if not isinstance(value, str) or value.lower() not in TRAINING_TYPES:
            return JSONResponse(
                {
                    "error": {
                        "code": "invalidPayload",
                        "message": f"trainingType must be one of {', '.join(TRAINING_TYPES)}; "
                        f"got {value!r}",
                    }
                },
                status_code=400,
            )
        if self.state.azure is not None:
            self.state.azure.training_types.append(value.lower())
        return None


async def _read(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields `body` once, then defers to `receive`."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
