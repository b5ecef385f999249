"""The provider protocol: one async, batch-shaped call for every backend.

`generate(chats, sampling)` returns one `Completion` per chat, in order. A request that still fails
after retries comes back as a Completion with `error` set (it ends that one episode); fatal errors
(auth, unknown model, quota exhausted) raise `FatalProviderError` and stop the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from rmft_api.schema import Completion, Message


class SamplingParams(BaseModel):
    """Decoding parameters, identical in meaning for every backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=1.0, ge=0, le=2, description="0 = greedy decoding.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(default=256, ge=1, description="Cap on generated tokens per reply.")
    seed: int | None = Field(default=None, description="Per-request seed where supported.")
    stop: list[str] = Field(default_factory=list, description="Stop sequences.")


@runtime_checkable
class Provider(Protocol):
    """A model (or scripted policy) that answers chats."""

    spec: str  # the spec string it was built from, e.g. "openai/gpt-4o-mini"

    async def generate(
        self,
        chats: Sequence[Sequence[Message]],
        sampling: SamplingParams,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        """One completion per chat. `request_ids` (e.g. "<episode>/<step>/<attempt>") key caches,
        per-request seeds and logs; backends may ignore them."""
        ...

    async def aclose(self) -> None: ...
