"""`/v1/chat/completions` and `/v1/models`, answered by the backing Provider.

Usage is the backing's own count when it reports one (a local model's tokenizer), else an
estimate: prompt = Σ ceil(chars / 4) + 3 per message + 3 (OpenAI's chat framing), completion =
ceil(chars / 4). A reply longer than max_tokens (by that estimate) is cut to max_tokens × 4
characters with finish_reason "length", so truncation can be tested with any backing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rmft_api.errors import RmftError, TransientProviderError
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.limiter import (
    CHARS_PER_TOKEN,
    estimate_request_tokens,
    estimate_text_tokens,
)
from rmft_api.sandbox.replies import error_reply, rate_limit_reply, too_large_reply
from rmft_api.sandbox.state import SandboxState
from rmft_api.schema import Message

TOKENS_PER_MESSAGE = 3
_MESSAGES = TypeAdapter(list[Message])
TOKENS_REPLY_PRIMING = 3


def routes(state: SandboxState, *, prefix: str = "/v1") -> list[Route]:
    """The chat and model-list routes under `prefix` (other services' OpenAI-compatible
    endpoints, e.g. Together's, mount them under their own)."""

    async def chat_completions(request: Request) -> Response:
        return await _chat(request, state)

    async def models(request: Request) -> Response:
        dates = state.settings.shutdown_dates
        names = state.listed_models() + [m for m in dates if m not in state.listed_models()]
        data = []
        for name in names:
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "rmft-sandbox",
            }
            # OpenAI retires a snapshot together with every fine-tune built on it.
            date = dates.get(name) or dates.get(state.jobs.models.get(name, ""))
            if date is not None:
                entry["shutdown_date"] = date
            data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    return [
        Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
        Route(f"{prefix}/models", models, methods=["GET"]),
    ]


def _invalid(message: str, param: str | None = None) -> JSONResponse:
    return error_reply(400, message, type_="invalid_request_error", param=param)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ValueError("content must be a string or a list of parts")


def _parse_request(body: Any, default_max_tokens: int) -> tuple[str, list[Message], SamplingParams]:
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("you must provide a model parameter")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages must be a non-empty array")
    if not all(isinstance(m, dict) for m in raw):
        raise ValueError("every message must be an object")
    # One validation call for the whole list: per-message constructors cost ~10 µs each, and a
    # long multi-turn chat has a hundred messages.
    messages = _MESSAGES.validate_python(
        [{"role": m.get("role"), "content": _content_text(m.get("content"))} for m in raw]
    )
    stop = body.get("stop") or []
    sampling = SamplingParams(
        temperature=body.get("temperature", 1.0),
        top_p=body.get("top_p", 1.0),
        max_tokens=body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
        seed=body.get("seed"),
        stop=[stop] if isinstance(stop, str) else list(stop),
    )
    return model, messages, sampling


async def _chat(request: Request, state: SandboxState) -> Response:
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
        return error_reply(
            401,
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            type_="invalid_request_error",
        )
    try:
        model, messages, sampling = _parse_request(
            await request.json(), state.settings.default_max_tokens
        )
    except ValidationError as e:
        err = e.errors()[0]
        return _invalid(f"{err['msg']} at {'.'.join(map(str, err['loc']))}")
    except ValueError as e:  # also invalid JSON
        return _invalid(f"invalid request: {e}")
    if not state.known_model(model):
        msg = f"The model `{model}` does not exist or you do not have access to it."
        return error_reply(404, msg, type_="invalid_request_error", code="model_not_found")

    state.record_arrival()
    # Only a tokens-per-window limit counts tokens; skip the estimate's pass over every message.
    tokens = (
        estimate_request_tokens((m.content for m in messages), max_tokens=sampling.max_tokens)
        if state.settings.tpm is not None
        else 0
    )
    verdict = state.limiter.admit(tokens)
    if verdict.too_large:
        state.too_large += 1
        return too_large_reply(model, limit=state.settings.tpm or 0, requested=tokens)
    if not verdict.allowed:
        state.rate_limited += 1
        limit = state.settings.rpm if verdict.limited_by == "requests" else state.settings.tpm
        return rate_limit_reply(
            model,
            kind=verdict.limited_by,
            limit=limit or 0,
            retry_after_s=verdict.retry_after_s,
            headers=verdict.headers,
        )

    if state.settings.latency_ms > 0:
        await asyncio.sleep(state.settings.latency_ms / 1000)
    try:
        [completion] = await state.backing_for(model).generate([messages], sampling)
    except TransientProviderError as e:
        return error_reply(503, f"backing provider unavailable: {e}", type_="server_error")
    except RmftError as e:  # e.g. a scripted backing that cannot read this chat: never succeeds
        return error_reply(400, f"backing provider refused: {e}", type_="invalid_request_error")
    if completion.error is not None:
        return error_reply(
            500, f"backing provider failed: {completion.error}", type_="server_error"
        )

    text, finish = completion.text, completion.finish_reason or "stop"
    completion_tokens = completion.usage.completion_tokens or estimate_text_tokens(text)
    if completion_tokens > sampling.max_tokens:
        text = text[: sampling.max_tokens * CHARS_PER_TOKEN]
        completion_tokens, finish = sampling.max_tokens, "length"
    prompt_tokens = completion.usage.prompt_tokens or (
        sum(estimate_text_tokens(m.content) + TOKENS_PER_MESSAGE for m in messages)
        + TOKENS_REPLY_PRIMING
    )
    state.completions += 1
    state.prompt_tokens += prompt_tokens
    state.completion_tokens += completion_tokens
    billed = state.billed_by_model.setdefault(model, [0, 0, 0])
    billed[0] += 1
    billed[1] += prompt_tokens
    billed[2] += completion_tokens
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": completion.usage.reasoning_tokens},
        },
    }
    return JSONResponse(body, headers=verdict.headers)
