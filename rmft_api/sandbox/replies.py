"""OpenAI-shaped error replies: `{"error": {"message", "type", "param", "code"}}` and headers.

Message texts follow OpenAI's wording where the client classifies by it ("Request too large ...
tokens per min", "Please try again in 1.2s").
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from rmft_api.sandbox.faults import FaultRule
from rmft_api.sandbox.ratelimit import format_duration


def error_reply(
    status: int,
    message: str,
    *,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def retry_headers(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds (the HTTP form) plus OpenAI's precise retry-after-ms."""
    return {"retry-after": str(max(0, round(seconds))), "retry-after-ms": str(round(seconds * 1e3))}


def rate_limit_reply(
    model: str, *, kind: str, limit: int | str, retry_after_s: float, headers: dict[str, str]
) -> JSONResponse:
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    message = (
        f"Rate limit reached for {model} in organization org-sandbox on {unit}: Limit {limit}. "
        f"Please try again in {format_duration(retry_after_s)}."
    )
    return error_reply(
        429,
        message,
        type_=kind,
        code="rate_limit_exceeded",
        headers={**headers, **retry_headers(retry_after_s)},
    )


def too_large_reply(model: str, *, limit: int | str, requested: int | str) -> JSONResponse:
    message = (
        f"Request too large for {model} in organization org-sandbox on tokens per min (TPM): "
        f"Limit {limit}, Requested {requested}. The input or output tokens must be reduced in "
        "order to run successfully."
    )
    return error_reply(429, message, type_="tokens", code="rate_limit_exceeded")


QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)

# What a 200 looks like when a proxy cuts the body: valid start, no end.
MALFORMED_BODY = b'{"id": "chatcmpl-sandbox", "object": "chat.completion", "choices": [{"ind'


def fault_reply(rule: FaultRule, *, model: str, api_key: str) -> Response:
    """The canned reply of an injected fault (not for slow / disconnect, handled by the app)."""
    extra = dict(rule.headers)
    fault = rule.fault
    if fault == "rate_limit":
        wait = rule.retry_after_s
        if wait is None:  # then only the headers the rule carries say when to come back
            msg = f"Rate limit reached for {model} in organization org-sandbox on requests per min."
            return error_reply(
                429, msg, type_="requests", code="rate_limit_exceeded", headers=extra
            )
        return rate_limit_reply(
            model, kind="requests", limit="n/a", retry_after_s=wait, headers=extra
        )
    if fault == "insufficient_quota":
        return error_reply(
            429, QUOTA_MESSAGE, type_="insufficient_quota", code="insufficient_quota", headers=extra
        )
    if fault == "request_too_large":
        return too_large_reply(model, limit=1000, requested=1_000_000)
    if fault == "context_length":
        msg = "This model's maximum context length is 128000 tokens. Please reduce the length."
        return error_reply(
            400,
            msg,
            type_="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
        )
    if fault in ("server_error", "late_create"):
        msg = "The server had an error while processing your request. Sorry about that!"
        return error_reply(500, rule.message or msg, type_="server_error", headers=extra)
    if fault == "unavailable":
        if rule.retry_after_s is not None:
            extra = {**extra, **retry_headers(rule.retry_after_s)}
        msg = "The engine is currently overloaded, please try again later."
        return error_reply(503, rule.message or msg, type_="server_error", headers=extra)
    if fault == "malformed":
        return Response(MALFORMED_BODY, status_code=200, media_type="application/json")
    if fault == "unauthorized":
        # OpenAI masks most of the key; the sandbox echoes it whole so clients' scrubbing is tested.
        msg = f"Incorrect API key provided: {api_key}. You can find your API key in your account."
        return error_reply(401, msg, type_="invalid_request_error", code="invalid_api_key")
    if fault == "permission_denied":
        msg = f"You are not allowed to use {model} with this organization."
        return error_reply(403, msg, type_="invalid_request_error", code="permission_denied")
    if fault == "training_not_available":
        msg = (
            "Fine-tuning is no longer available to this organization: new fine-tuning jobs "
            "cannot be created."
        )
        return error_reply(403, msg, type_="invalid_request_error", code="training_not_available")
    if fault == "model_not_found":
        msg = f"The model `{model}` does not exist or you do not have access to it."
        return error_reply(404, msg, type_="invalid_request_error", code="model_not_found")
    raise ValueError(f"fault {fault!r} has no canned reply")
