"""The response cache: replies already paid for, replayed free when an episode is played again.

A rollout killed halfway loses its unfinished episodes; on resume they restart from round 0 with
the same seeds, so they ask the very same questions again. The cache answers those from disk
(`Completion.cached = True`, cost 0) until the first question it has not seen. Each entry is
keyed by everything that determines the reply: the provider spec and endpoint, the messages, the
sampling parameters and the request id (episode / request number), so two rollouts of one
scenario that happen to ask the same question still get their own replies.

Stored as append-only JSONL next to episodes.jsonl, flushed per entry (a kill loses at most the
reply being written); a torn last line is ignored on load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from rmft_api.providers.base import SamplingParams
from rmft_api.schema import Completion, Message
from rmft_api.store import JsonlWriter, read_jsonl

# One name wherever a cache is kept (a pipeline iteration, `rmft-api rollout --out DIR`), so a
# directory's cache is found whichever command wrote it (docs/run-directory.md).
CACHE_FILE = "cache.jsonl"


def cache_path(directory: str | Path) -> Path:
    """The response cache of the episodes.jsonl in `directory`."""
    return Path(directory) / CACHE_FILE


class CacheEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    completion: Completion


def cache_key(
    *,
    spec: str,
    base_url: str | None,
    messages: Sequence[Message],
    sampling: SamplingParams,
    request_id: str,
) -> str:
    """sha256 over the canonical JSON of everything that determines a reply."""
    blob = json.dumps(
        {
            "spec": spec,
            "base_url": base_url,
            "messages": [[m.role, m.content] for m in messages],
            "sampling": sampling.model_dump(mode="json"),
            "request_id": request_id,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A dict of replies backed by an append-only JSONL file. Only successful replies are kept."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries = {
            e.key: e.completion for e in read_jsonl(self.path, CacheEntry, missing_ok=True)
        }
        self._writer: JsonlWriter | None = None
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Completion | None:
        """The stored reply marked cached and free, or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self.hits += 1
        return found.model_copy(
            update={
                "cached": True,
                "latency_s": 0.0,
                "usage": found.usage.model_copy(update={"cost_usd": 0.0}),
            }
        )

    def put(self, key: str, completion: Completion) -> None:
        if completion.error is not None or completion.cached or key in self._entries:
            return
        self._entries[key] = completion
        if self._writer is None:
            self._writer = JsonlWriter(self.path)
        self._writer.write(CacheEntry(key=key, completion=completion))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
