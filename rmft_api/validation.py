"""Validation of chat fine-tuning JSONL files before they are uploaded or trained on.

The OpenAI cookbook's format checks plus the limits OpenAI enforces server-side (REFERENCE §4),
so a bad file fails here, for free, with every problem named by line and rule, instead of after
an upload. Token counts carry the label of their method (tokens.py); costs come from costs.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from rmft_api.costs import CostEstimate, estimate_costs
from rmft_api.errors import ConfigError
from rmft_api.providers.pricing import PriceTable
from rmft_api.schema import SCHEMA_VERSION, Record
from rmft_api.tokens import (
    TokenStats,
    count_chat_tokens,
    make_token_counter,
    token_stats,
    trainable_tokens,
)

# rule → what it checks. Every Problem names one of these.
RULES: dict[str, str] = {
    "file_size": "the file is larger than the upload limit",
    "utf8": "a line is not valid UTF-8 (or the file starts with a byte-order mark)",
    "empty_line": "a blank line between examples",
    "json": "a line is not valid JSON",
    "data_type": "a line (or a message) is not a JSON object",
    "unrecognized_example_key": "an example has keys other than messages / tools / functions",
    "missing_messages_list": "an example has no non-empty `messages` list",
    "message_missing_key": "a message lacks `role` or `content`",
    "message_unrecognized_key": "a message has a key OpenAI does not accept",
    "unrecognized_role": "a role other than system / user / assistant / tool",
    "missing_content": "a message's content is not a non-empty string",
    "weight_role": "`weight` on a message that is not from the assistant",
    "weight_value": "`weight` other than 0 or 1",
    "missing_assistant_message": "an example without any assistant message",
    "no_trainable_assistant": "every assistant message of an example has weight 0",
    "special_token": "text contains a tokenizer special-token string such as <|im_start|>",
    "too_many_tokens": "an example is longer than the per-example token limit",
    "duplicate": "an example identical to an earlier one",
    "too_few_examples": "fewer examples than the minimum a job accepts",
}

ALLOWED_ROLES = ("system", "user", "assistant", "tool")
EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"}
)
MIN_EXAMPLES = 10
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_TOKENS = 65_536

# Control tokens of the common chat formats (ChatML, Llama 3, GPT-2, Phi, Gemma, harmony, FIM);
# the generic <|word|> form catches the rest. Such strings in training text confuse tokenizers
# and OpenAI rejects them.
SPECIAL_TOKEN_RE = re.compile(
    r"<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_turn>|<\|reserved_special_token_\d+\|>"
)


class Problem(BaseModel):
    """One defect: the 1-based line (None for the whole file), the rule and a readable message."""

    line: int | None
    rule: str
    message: str


class ValidationReport(Record):
    schema_version: int = SCHEMA_VERSION
    path: str
    sha256: str
    file_bytes: int
    model: str
    n_examples: int
    problems: list[Problem]
    problems_omitted: int = 0  # beyond `max_problems`; rule_counts still counts them
    rule_counts: dict[str, int] = Field(default_factory=dict)
    tokens: TokenStats
    cost: CostEstimate | None
    ok: bool


class _Collector:
    def __init__(self, limit: int) -> None:
        self.problems: list[Problem] = []
        self.counts: Counter[str] = Counter()
        self.limit = limit

    def add(self, line: int | None, rule: str, message: str) -> None:
        self.counts[rule] += 1
        if len(self.problems) < self.limit:
            self.problems.append(Problem(line=line, rule=rule, message=message))


def _lines(path: Path, digest: Any) -> Iterator[tuple[int, bytes]]:
    """Numbered lines without their line ending; feeds every byte to `digest` on the way."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            digest.update(raw)
            yield number, raw.rstrip(b"\n").rstrip(b"\r")


def _check_message(index: int, message: Any, line: int, out: _Collector) -> None:
    where = f"message {index}"
    if not isinstance(message, dict):
        out.add(line, "data_type", f"{where} is {type(message).__name__}, not an object")
        return
    extra = sorted(set(message) - MESSAGE_KEYS)
    if extra:
        out.add(line, "message_unrecognized_key", f"{where} has unrecognized key(s) {extra}")
    role = message.get("role")
    if "role" not in message:
        out.add(line, "message_missing_key", f"{where} has no `role`")
    elif role not in ALLOWED_ROLES:
        out.add(line, "unrecognized_role", f"{where} has role {role!r}; allowed: {ALLOWED_ROLES}")
    calls = message.get("tool_calls") or message.get("function_call")
    if "content" not in message:
        if not (role == "assistant" and calls):
            out.add(line, "message_missing_key", f"{where} has no `content`")
    else:
        content = message["content"]
        if not isinstance(content, str):
            if not (content is None and role == "assistant" and calls):
                kind = type(content).__name__
                out.add(line, "missing_content", f"{where}: content is {kind}, not a string")
        elif not content.strip():
            out.add(line, "missing_content", f"{where}: content is empty")
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            out.add(line, "weight_role", f"{where}: `weight` on a {role!r} message")
        if isinstance(weight, bool) or weight not in (0, 1):
            out.add(line, "weight_value", f"{where}: weight {weight!r}; must be 0 or 1")
    for key, value in message.items():
        if isinstance(value, str) and (m := SPECIAL_TOKEN_RE.search(value)):
            out.add(line, "special_token", f"{where} {key} contains {m.group(0)!r}")


def _check_example(data: Any, line: int, out: _Collector) -> list[dict[str, Any]] | None:
    """The messages of a well-shaped example (for token counting), else None."""
    if not isinstance(data, dict):
        out.add(line, "data_type", f"line is a JSON {type(data).__name__}, not an object")
        return None
    extra = sorted(set(data) - EXAMPLE_KEYS)
    if extra:
        out.add(line, "unrecognized_example_key", f"unrecognized key(s) {extra}")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        out.add(line, "missing_messages_list", "no non-empty `messages` list")
        return None
    for index, message in enumerate(messages):
        _check_message(index, message, line, out)
    dicts = [m for m in messages if isinstance(m, dict)]
    assistants = [m for m in dicts if m.get("role") == "assistant"]
    if not assistants:
        out.add(line, "missing_assistant_message", "no assistant message to train on")
    elif all(m.get("weight", 1) == 0 for m in assistants):
        out.add(line, "no_trainable_assistant", "every assistant message has weight 0")
    return dicts


def validate_file(
    path: str | Path,
    *,
    model: str = "gpt-4o-mini",
    max_tokens_per_example: int = DEFAULT_MAX_TOKENS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    min_examples: int = MIN_EXAMPLES,
    tokenizer_dir: str | Path | None = None,
    n_epochs: int | Literal["auto"] = "auto",
    rollout_tokens: tuple[int, int] | None = None,
    prices: PriceTable | None = None,
    max_problems: int = 1000,
) -> ValidationReport:
    """Check a chat fine-tuning JSONL file; every problem is reported with its line and rule.

    Args:
        rollout_tokens: expected (prompt, completion) tokens of the next iteration's rollout;
            when given, the report prices it at the fine-tuned model's rates.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"validate: no such file: {p}")
    counter = make_token_counter(model, tokenizer_dir=tokenizer_dir)
    out = _Collector(max_problems)
    size = p.stat().st_size
    if size > max_file_bytes:
        out.add(None, "file_size", f"{size:,} bytes; the limit is {max_file_bytes:,}")

    digest = hashlib.sha256()
    seen: dict[str, int] = {}
    lengths: list[int] = []
    trainable = 0
    n_examples = 0
    for line, raw in _lines(p, digest):
        if not raw.strip():
            out.add(line, "empty_line", "blank line")
            continue
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            out.add(line, "utf8", "the file starts with a UTF-8 byte-order mark")
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.add(line, "utf8", f"invalid UTF-8 at byte {e.start}: {raw[e.start : e.end]!r}")
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            out.add(line, "json", f"invalid JSON: {e.msg} at column {e.colno}")
            continue
        messages = _check_example(data, line, out)
        if messages is None:
            continue
        n_examples += 1
        key = json.dumps(data, sort_keys=True, ensure_ascii=False)
        if key in seen:
            out.add(line, "duplicate", f"identical to the example on line {seen[key]}")
        else:
            seen[key] = line
        n_tokens = count_chat_tokens(messages, counter)
        lengths.append(n_tokens)
        trainable += trainable_tokens(messages, counter)
        if n_tokens > max_tokens_per_example:
            out.add(
                line,
                "too_many_tokens",
                f"{n_tokens:,} tokens ({counter.label}); the limit is {max_tokens_per_example:,}",
            )
    if n_examples < min_examples:
        out.add(None, "too_few_examples", f"{n_examples} example(s); at least {min_examples}")

    tokens = token_stats(lengths, trainable=trainable, method=counter.label)
    tokens = tokens.model_copy(
        update={
            "limit": max_tokens_per_example,
            "over_limit": sum(n > max_tokens_per_example for n in lengths),
        }
    )
    cost = estimate_costs(
        model,
        n_examples=n_examples,
        file_tokens=tokens.total,
        n_epochs=n_epochs,
        rollout_tokens=rollout_tokens,
        prices=prices,
    )
    return ValidationReport(
        path=str(p),
        sha256=digest.hexdigest(),
        file_bytes=size,
        model=model,
        n_examples=n_examples,
        problems=out.problems,
        problems_omitted=sum(out.counts.values()) - len(out.problems),
        rule_counts=dict(out.counts),
        tokens=tokens,
        cost=cost,
        ok=not out.counts,
    )
