"""The sandbox ASGI app: route modules under a fault-injecting, request-counting layer.

Route modules (chat.py, files.py, finetune.py) each contribute `routes(state)`; faults apply to
any path, so new endpoints get them for free. The fault layer is plain ASGI because three faults
cannot be expressed as a Response: `slow` holds the request (until the client gives up),
`late_reply` carries the request out and then holds its reply (a create that succeeded on the
server while the client timed out), `late_create` answers 500 at once and carries the request
out `delay_s` later in the background (the object turns up in the listings late), and
`disconnect` closes the socket with no response at all.
For the latter the app returns a non-None value before starting a response: every uvicorn HTTP
protocol then closes the transport without writing anything (and logs it, which `_DropFilter`
silences).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rmft_api.sandbox import azure, chat, files, finetune, together
from rmft_api.sandbox.azure import replay_body
from rmft_api.sandbox.replies import fault_reply
from rmft_api.sandbox.state import SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[Any]]

DROP = "rmft-sandbox:drop-connection"


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.args, tuple) and DROP in record.args)


logging.getLogger("uvicorn.error").addFilter(_DropFilter())


def build_app(state: SandboxState) -> ASGIApp:
    """The whole sandbox as one ASGI callable."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    routes: list[Any] = [
        Route("/health", health, methods=["GET"]),
        Route("/sandbox/stats", stats, methods=["GET"]),
        *chat.routes(state),
        *files.routes(state),
        *finetune.routes(state),
        *together.routes(state),
        *azure.routes(state),
    ]
    inner = Starlette(routes=routes)
    inner.state.sandbox = state
    # Faults see the path as the client sent it (an Azure path too), then Azure's data plane
    # is rewritten onto the OpenAI routes.
    return FaultLayer(azure.AzureDataPlane(inner, state), state)


class FaultLayer:
    """Numbers each request, injects its fault if the plan says so, counts response codes."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state
        self._late: set[asyncio.Task[None]] = set()  # late creates still to be carried out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        self.state.requests[path] += 1
        _, rule = self.state.faults.decide(path, scope.get("method"))

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.state.responses[int(message["status"])] += 1
            await send(message)

        if rule is None:
            return await self.app(scope, receive, counting_send)
        if rule.fault == "disconnect":
            self.state.dropped += 1
            return DROP
        body, replay = await _buffer_body(receive)
        if rule.fault == "slow":
            if await _disconnected_within(receive, rule.delay_s):
                return None  # the client gave up (its timeout): nothing to answer
            return await self.app(scope, replay, counting_send)
        if rule.fault == "late_reply":
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await self.app(scope, replay, hold)
            if await _client_left_within(replay, rule.delay_s):
                return None  # done on the server, but the client never hears of it
            for message in held:
                await counting_send(message)
            return None
        if rule.fault == "late_create":
            task = asyncio.create_task(self._carry_out_later(dict(scope), body, rule.delay_s))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        reply = fault_reply(rule, model=_model_of(body), api_key=_bearer(scope))
        await reply(scope, replay, counting_send)
        return None

    async def _carry_out_later(self, scope: Scope, body: bytes, delay_s: float) -> None:
        """The request of a `late_create`, run after its client was told it failed."""
        await asyncio.sleep(delay_s)

        async def gone() -> Message:
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            pass

        await self.app(scope, replay_body(body, gone), discard)


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body; return it and a `receive` that replays it once."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, replay_body(body, receive)


async def _disconnected_within(receive: Receive, seconds: float) -> bool:
    try:
        message = await asyncio.wait_for(receive(), timeout=seconds)
    except TimeoutError:
        return False
    return bool(message["type"] == "http.disconnect")


async def _client_left_within(receive: Receive, seconds: float) -> bool:
    """Like `_disconnected_within`, but skips body messages the app left unread."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if await _disconnected_within(receive, left):
            return True
    return False


def _model_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "the model"
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else "the model"


def _bearer(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return bytes(value).decode("latin-1").removeprefix("Bearer ").strip()
    return ""
