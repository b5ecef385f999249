"""Selected episodes → OpenAI chat fine-tuning JSONL, and the data card describing the file.

The chats are rebuilt by the text layer (`envs.text.episode_chats`), so an example is exactly
what the model saw and answered — system prompt, every user turn (prompts with feedback, format
reminders) and every reply with its reasoning. Replies that were not the model's valid answer
(rejected attempts, fallback and forfeit rounds) keep their place as context with `weight: 0`.

An example that would fail validation (no trainable reply, an empty message, a special-token
string, an exact duplicate) is dropped here and counted in the data card, never silently kept.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rmft_api.envs.text import episode_chats
from rmft_api.errors import StateError
from rmft_api.schema import SCHEMA_VERSION, Episode, Message, Record
from rmft_api.store import write_bytes_atomic
from rmft_api.tokens import (
    TokenCounter,
    TokenStats,
    count_chat_tokens,
    make_token_counter,
    token_stats,
    trainable_tokens,
)
from rmft_api.validation import SPECIAL_TOKEN_RE

ExportMode = Literal["episode", "round"]
Row = dict[str, Any]


class DataCard(Record):
    """What a training file holds and where it came from (iter-NNN/data_card.json)."""

    schema_version: int = SCHEMA_VERSION
    mode: ExportMode
    train_file: str
    sha256: str
    file_bytes: int
    policies: list[str]  # provider specs that generated the episodes
    template_hashes: list[str]
    iterations: list[int]
    scenario_ids: list[str]
    seeds: list[int]  # scenario seeds
    episode_ids: list[str]
    thresholds: dict[str, Any] = Field(default_factory=dict)  # selection settings, from caller
    n_episodes: int
    n_examples: int
    n_messages: int
    n_trained_replies: int  # assistant messages with weight 1
    n_masked_replies: int  # assistant messages with weight 0 (context only)
    # Played rounds of these episodes whose answer parse.answer_line = unique_name read from a
    # sentence (their replies are trained like any other).
    n_lenient_steps: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)  # examples not written, by reason
    tokens: TokenStats


def _round_spans(episode: Episode, chat: Sequence[Message]) -> list[tuple[int, int]]:
    """[start, end) of each step's messages in a multi_turn chat (after the system prompt)."""
    spans: list[tuple[int, int]] = []
    pos = 1
    for step in episode.steps:
        end = pos + 1 + len(step.attempts) + sum(a.reminder is not None for a in step.attempts)
        if end > len(chat) or chat[pos].content != step.prompt:
            break
        spans.append((pos, end))
        pos = end
    if pos != len(chat) or len(spans) != len(episode.steps):
        raise StateError(
            f"episode {episode.episode_id}: rebuilt chat has {len(chat)} messages, its steps "
            f"account for {pos}; the record is inconsistent"
        )
    return spans


def _to_row(messages: Sequence[Message], trained_index: set[int] | None = None) -> Row:
    """OpenAI's row format. With `trained_index`, only those assistant messages keep weight 1."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "assistant":
            weight = m.weight if m.weight is not None else 1
            if trained_index is not None and i not in trained_index:
                weight = 0
            item["weight"] = weight
        out.append(item)
    return {"messages": out}


def _mask_ambiguous(episode: Episode, chats: list[list[Message]]) -> list[list[Message]]:
    """Set weight 0 on the played reply of every step the parser flagged ambiguous."""
    if episode.transcript == "single_turn":
        return [
            [m.model_copy(update={"weight": 0}) if m.role == "assistant" else m for m in chat]
            if step.ambiguous
            else chat
            for chat, step in zip(chats, episode.steps, strict=True)
        ]
    chat = list(chats[0])
    for (_, end), step in zip(_round_spans(episode, chat), episode.steps, strict=True):
        if step.ambiguous:
            chat[end - 1] = chat[end - 1].model_copy(update={"weight": 0})
    return [chat]


def _candidate_rows(episode: Episode, *, mode: ExportMode, mask_ambiguous: bool) -> list[Row]:
    chats = episode_chats(episode)
    if mask_ambiguous:
        chats = _mask_ambiguous(episode, chats)
    if mode == "episode" or episode.transcript == "single_turn":
        # single_turn: every round already is its own chat; round mode keeps the valid ones,
        # and a fallback round has no trainable reply so both modes drop it the same way.
        return [_to_row(chat) for chat in chats]
    chat = chats[0]
    rows: list[Row] = []
    for (_, end), step in zip(_round_spans(episode, chat), episode.steps, strict=True):
        if step.valid:
            rows.append(_to_row(chat[:end], trained_index={end - 1}))
    return rows


def _defect(row: Row) -> str | None:
    """Why validation would reject this row, or None."""
    messages = row["messages"]
    if not any(m["role"] == "assistant" and m["weight"] == 1 for m in messages):
        return "no_trainable_reply"
    if any(not m["content"].strip() for m in messages):
        return "empty_message"
    if any(SPECIAL_TOKEN_RE.search(m["content"]) for m in messages):
        return "special_token"
    return None


def episode_to_rows(
    episode: Episode, *, mode: ExportMode = "episode", mask_ambiguous: bool = False
) -> list[Row]:
    """Chat fine-tuning rows `{"messages": [{role, content, weight?}, ...]}` for one episode.

    episode: one row per episode (per round for single_turn transcripts, whose rounds are
    separate chats). round: one row per valid round — the chat the model saw then, earlier
    replies weighted 0, and its played reply weighted 1. Rows validation would reject are left
    out (see `write_train_jsonl` for the counts).
    """
    rows = _candidate_rows(episode, mode=mode, mask_ambiguous=mask_ambiguous)
    return [row for row in rows if _defect(row) is None]


def _canonical(row: Row) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def write_train_jsonl(
    episodes: Sequence[Episode],
    path: str | Path,
    *,
    mode: ExportMode = "episode",
    mask_ambiguous: bool = False,
    thresholds: Mapping[str, Any] | None = None,
    model: str = "gpt-4o-mini",
    tokenizer_dir: str | Path | None = None,
    token_counter: TokenCounter | None = None,
) -> DataCard:
    """Write the training file atomically (never half-written) and describe it.

    Args:
        thresholds: the selection settings that chose `episodes` (k, guards, quantile, ...),
            recorded verbatim in the card.
        model, tokenizer_dir: pick the token counter as validation does; `token_counter`
            overrides both.
    """
    counter = token_counter or make_token_counter(model, tokenizer_dir=tokenizer_dir)
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    lines: list[str] = []
    lengths: list[int] = []
    trainable = n_messages = n_trained = n_masked = 0
    for episode in episodes:
        for row in _candidate_rows(episode, mode=mode, mask_ambiguous=mask_ambiguous):
            defect = _defect(row)
            line = _canonical(row)
            if defect is None and line in seen:
                defect = "duplicate"
            if defect is not None:
                dropped[defect] += 1
                continue
            seen.add(line)
            lines.append(line)
            messages = row["messages"]
            lengths.append(count_chat_tokens(messages, counter))
            trainable += trainable_tokens(messages, counter)
            n_messages += len(messages)
            weights = [m["weight"] for m in messages if m["role"] == "assistant"]
            n_trained += weights.count(1)
            n_masked += weights.count(0)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    target = Path(path)
    write_bytes_atomic(target, data)
    return DataCard(
        mode=mode,
        train_file=str(target),
        sha256=hashlib.sha256(data).hexdigest(),
        file_bytes=len(data),
        policies=sorted({e.policy_spec for e in episodes}),
        template_hashes=sorted({e.template_hash for e in episodes}),
        iterations=sorted({e.iteration for e in episodes}),
        scenario_ids=sorted({e.scenario_id for e in episodes}),
        seeds=sorted({e.seed for e in episodes}),
        episode_ids=[e.episode_id for e in episodes],
        thresholds=dict(thresholds or {}),
        n_episodes=len(episodes),
        n_examples=len(lines),
        n_messages=n_messages,
        n_trained_replies=n_trained,
        n_masked_replies=n_masked,
        n_lenient_steps=sum(s.lenient and s.valid for e in episodes for s in e.steps),
        dropped=dict(dropped),
        tokens=token_stats(lengths, trainable=trainable, method=counter.label),
    )
