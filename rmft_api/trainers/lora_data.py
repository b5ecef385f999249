"""Chat fine-tuning rows → token ids and labels that train only the chosen assistant turns.

Labels are built from the model's own chat template: for each assistant message, the text rendered
for the conversation before it (with the generation prompt) and the text rendered with it differ
by exactly that reply, as the model will produce it. Those characters are trained (their tokens
keep their ids as labels); everything else gets −100. A message with `"weight": 0` stays context
only, which is how OpenAI's per-message weights are emulated. Text after the tokenizer's
end-of-sequence token inside a reply's span (template glue such as a newline) is not trained:
generation stops at that token, so the model never produces what follows it.

Every piece is tokenized on its own and the ids concatenated, so a label span is exact whatever
the tokenizer would merge across a boundary. This module needs only a tokenizer object, not torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from rmft_api.errors import TrainingError
from rmft_api.schema import Message, Record

IGNORE_INDEX = -100  # the label torch's cross-entropy skips


class ChatTokenizer(Protocol):
    """The part of a transformers tokenizer this module uses."""

    eos_token: str | None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


class ChatRow(Record):
    """One line of a chat fine-tuning JSONL file."""

    messages: list[Message]


@dataclass(frozen=True)
class TokenizedExample:
    """One training example: ids, labels (−100 = not trained) and whether it was cut short."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def read_chat_jsonl(path: Path) -> list[list[Message]]:
    """Every row's messages; a bad line is a TrainingError naming the file, line and problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise TrainingError(f"training file not found: {path}") from e
    except UnicodeDecodeError as e:
        raise TrainingError(f"{path}: not UTF-8 text ({e})") from e
    rows: list[list[Message]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = ChatRow.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise TrainingError(f"{path}: line {number} is not JSON ({e})") from e
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "<row>"
            raise TrainingError(f"{path}: line {number}: {loc}: {err['msg']}") from e
        rows.append(row.messages)
    if not rows:
        raise TrainingError(f"{path}: no training examples")
    return rows


def _render(tokenizer: ChatTokenizer, messages: Sequence[Message], *, prompt: bool) -> str:
    chat = [{"role": m.role, "content": m.content} for m in messages]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
    if not isinstance(text, str):
        raise TrainingError("the tokenizer's chat template did not render to text")
    return text


def trained_char_spans(
    tokenizer: ChatTokenizer, messages: Sequence[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans to train on, in order."""
    full = _render(tokenizer, messages, prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.role != "assistant" or message.weight == 0:
            continue
        before = _render(tokenizer, messages[:i], prompt=True)
        upto = _render(tokenizer, messages[: i + 1], prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TrainingError(
                "the chat template is not prefix-stable (rendering a conversation changes the "
                f"text of earlier turns; assistant message {i}), so assistant-only labels "
                "cannot be built from it"
            )
        start, end = len(before), len(upto)
        eos = tokenizer.eos_token
        if eos:
            cut = upto.rfind(eos, start, end)
            if cut >= 0:
                end = cut + len(eos)
        if end > start:
            spans.append((start, end))
    return full, spans


def tokenize_example(
    tokenizer: ChatTokenizer, messages: Sequence[Message], *, max_seq_len: int
) -> TokenizedExample:
    """Ids and labels of one conversation, cut to `max_seq_len` tokens from the end."""
    full, spans = trained_char_spans(tokenizer, messages)
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    pieces: list[tuple[int, int, bool]] = []
    for start, end in spans:
        if start > cursor:
            pieces.append((cursor, start, False))
        pieces.append((start, end, True))
        cursor = end
    if cursor < len(full):
        pieces.append((cursor, len(full), False))
    for start, end, trained in pieces:
        ids = list(tokenizer(full[start:end], add_special_tokens=False)["input_ids"])
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    truncated = len(input_ids) > max_seq_len
    return TokenizedExample(input_ids[:max_seq_len], labels[:max_seq_len], truncated)


def tokenize_rows(
    tokenizer: ChatTokenizer, rows: Sequence[Sequence[Message]], *, max_seq_len: int
) -> tuple[list[TokenizedExample], int]:
    """(examples with at least one trained token, how many rows were cut to max_seq_len).

    Raises TrainingError when no row has a trained token left.
    """
    examples = [tokenize_example(tokenizer, row, max_seq_len=max_seq_len) for row in rows]
    kept = [ex for ex in examples if ex.num_trained > 0]
    if not kept:
        raise TrainingError(
            "no trainable tokens: every example has only weight-0 assistant turns or was cut "
            f"before its first trained turn (max_seq_len = {max_seq_len})"
        )
    return kept, sum(ex.truncated for ex in examples)
