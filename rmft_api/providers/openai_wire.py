"""The chat-completions wire format, read and written directly (no SDK model types).

The SDK's typed `create` transforms every message of a chat with typing introspection on each
call (~13 ms for a 100-message chat), which dominated a rollout's client CPU; the provider sends
these ready bytes through the same SDK client instead (`client.post(..., content=...)`) and reads
the reply's JSON itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from rmft_api.providers.base import SamplingParams
from rmft_api.providers.limiter import estimate_text_tokens
from rmft_api.schema import Completion, Message, Usage


def request_body(
    model: str,
    chat: Sequence[Message],
    sampling: SamplingParams,
    *,
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens",
) -> bytes:
    """The request as UTF-8 JSON, serialised as the SDK serialises it."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in chat],
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        max_tokens_param: sampling.max_tokens,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def completion_from_json(data: object) -> Completion:
    """A chat-completion response body (parsed JSON) as a Completion.

    Raises ValueError/TypeError/KeyError/IndexError for a body that is not a chat completion.
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    choices = data["choices"]
    if not isinstance(choices, list):
        raise TypeError("choices is not a list")
    choice = choices[0]
    message = choice["message"]
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise TypeError(f"message content is a {type(text).__name__}, not a string")
    usage = data.get("usage")
    if isinstance(usage, dict):
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        u = Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            reasoning_tokens=int(reasoning or 0),
        )
    else:  # some servers omit usage; estimate the completion side so cost is not silently 0
        u = Usage(completion_tokens=estimate_text_tokens(text))
    finish = choice.get("finish_reason")
    return Completion(text=text, finish_reason=str(finish) if finish else None, usage=u)
