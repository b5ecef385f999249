"""Scripted providers: deterministic replies read off the chat, for tests and benchmarks.

`scripted/<name>`:
- `first`: always the first arm named in the system prompt (all mass on it for distributions).
- `cycle`: arm `round mod K`, round-robin (the uniform vector for distributions).
- `garbage`: a reply with no answer marker: every reply fails to parse.
- `random`: a uniform arm (a Dirichlet(1) vector for distributions), seeded from the provider
  seed and the request id, or the chat itself when no id comes with it (over HTTP).

They run in-process at no cost, answer any batch at once (`batch_size` is large, so a rollout
runs them lock-step) and need the chat to be rendered with the same templates as the reader's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rmft_api.envs.templates import load_templates
from rmft_api.envs.transcript import TranscriptReader, TranscriptView
from rmft_api.errors import ConfigError
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.limiter import estimate_text_tokens
from rmft_api.schema import Completion, Message, Usage

SCRIPTS = ("first", "cycle", "garbage", "random")
# Lock-step batches of in-process policies are only bounded by memory, not by an accelerator.
LOCAL_BATCH_SIZE = 4096


def answer_text(view: TranscriptView, choice: int | Sequence[float], *, reasoning: str) -> str:
    """`reasoning` then the answer line in the format the prompt asked for."""
    names = view.arm_names
    if view.answer == "action":
        if not isinstance(choice, int):
            choice = int(np.argmax(np.asarray(choice)))
        return f"{reasoning}\nANSWER: {names[choice]}"
    if isinstance(choice, int):
        probs = np.zeros(len(names))
        probs[choice] = 1.0
    else:
        probs = np.asarray(choice, dtype=np.float64)
    body = ", ".join(f'"{n}": {p:.4f}' for n, p in zip(names, probs, strict=True))
    return f"{reasoning}\nANSWER: {{{body}}}"


def chat_digest(chat: Sequence[Message], *extra: object) -> int:
    """A 64-bit seed from the chat's text (and anything else given), stable across runs."""
    h = hashlib.sha256()
    for item in extra:
        h.update(repr(item).encode())
        h.update(b"\0")
    for m in chat:
        h.update(m.role.encode())
        h.update(b"\0")
        h.update(m.content.encode())
        h.update(b"\0")
    return int.from_bytes(h.digest()[:8], "little")


def usage_estimate(chat: Sequence[Message], reply: str) -> Usage:
    """Token counts of an in-process reply, estimated as an API would bill them (chars / 4)."""
    return Usage(
        prompt_tokens=sum(estimate_text_tokens(m.content) for m in chat),
        completion_tokens=estimate_text_tokens(reply),
    )


class InProcessReplies:
    """Shared by the in-process providers (scripted, agent): `generate` answers each chat with
    the subclass's `reply`, counting requests; a chat it cannot read becomes that completion's
    error, not the batch's."""

    spec: str
    requests: int

    def reply(self, chat: Sequence[Message], *, request_id: str | None = None) -> str:
        raise NotImplementedError

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        ids: Sequence[str | None] = request_ids if request_ids is not None else [None] * len(chats)
        out: list[Completion] = []
        for chat, rid in zip(chats, ids, strict=True):
            self.requests += 1
            try:
                text = self.reply(chat, request_id=rid)
            except ConfigError as e:
                out.append(Completion(error=f"{self.spec}: cannot read the chat: {e}"))
                continue
            out.append(
                Completion(text=text, finish_reason="stop", usage=usage_estimate(chat, text))
            )
        return out

    async def aclose(self) -> None:
        """Nothing to release."""


class ScriptedProvider(InProcessReplies):
    """Answers every chat by a fixed rule (see the module docstring)."""

    def __init__(
        self, spec: str, *, name: str, seed: int = 0, templates_dir: str | Path | None = None
    ) -> None:
        if name not in SCRIPTS:
            raise ConfigError(
                f"provider spec {spec!r}: unknown script {name!r}; allowed: {', '.join(SCRIPTS)}"
            )
        self.spec = spec
        self.name = name
        self.seed = seed
        self.batch_size = LOCAL_BATCH_SIZE
        self.requests = 0
        self._reader = TranscriptReader(load_templates(templates_dir))

    def reply(self, chat: Sequence[Message], *, request_id: str | None = None) -> str:
        """The scripted reply to one chat."""
        if self.name == "garbage":
            return "I would rather not say which one."
        view = self._reader.read(chat, history=False)  # scripts ignore the past
        k = len(view.arm_names)
        if self.name == "first":
            return answer_text(view, 0, reasoning="Scripted: always the first option.")
        if self.name == "cycle":
            if view.answer == "distribution":
                return answer_text(view, [1.0 / k] * k, reasoning="Scripted: uniform.")
            t = view.round_index
            return answer_text(view, t % k, reasoning=f"Scripted: round {t + 1}, option {t % k}.")
        key = request_id if request_id is not None else chat_digest(chat)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, chat_digest([], key)]))
        choice: int | list[float]
        if view.answer == "distribution":
            choice = [float(p) for p in rng.dirichlet(np.ones(k))]
        else:
            choice = int(rng.integers(k))
        return answer_text(view, choice, reasoning="Scripted: a random choice.")
