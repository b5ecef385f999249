"""Token counts for fine-tuning files, always labelled with how they were counted.

Three methods, best first: a local Hugging Face tokenizer when the caller names its directory
(the exact count for a local model), `tiktoken` when it is installed *and* its encoding file is
already cached (it downloads encodings on first use, which this project cannot rely on), else an
estimate of 4 characters per token. The label travels with every figure so nobody mistakes an
estimate for a count.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from rmft_api.errors import ConfigError

# Per-message overhead of OpenAI's chat format (the cookbook's num_tokens_from_messages): each
# message costs 3 tokens of framing, a `name` 1 more, and every reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3

CHARS_PER_TOKEN = 4

_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


class TokenCounter(Protocol):
    """Counts tokens of plain text; `label` says how (e.g. "tiktoken:o200k_base")."""

    @property
    def label(self) -> str: ...

    def count(self, text: str) -> int: ...


class EstimateCounter:
    """ceil(characters / 4): OpenAI's rule of thumb for English text."""

    label = f"estimate:chars/{CHARS_PER_TOKEN}"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)


class TiktokenCounter:
    def __init__(self, encoding: Any, name: str) -> None:
        self._encoding = encoding
        self.label = f"tiktoken:{name}"

    def count(self, text: str) -> int:
        # Special-token strings in data are counted as text; validation rejects them separately.
        return len(self._encoding.encode(text, disallowed_special=()))


class HFTokenizerCounter:
    """A `tokenizers` tokenizer read from `<dir>/tokenizer.json` (no transformers/torch import)."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        path = directory / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ConfigError(f"tokenizer: cannot read {path}: {e}") from e
        self.label = f"hf-tokenizer:{directory}"

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def tiktoken_encoding_name(model: str) -> str:
    """The tiktoken encoding of an OpenAI model name, `ft:` models mapped to their base."""
    base = model.removeprefix("openai/")
    if base.startswith("ft:"):
        base = base.split(":")[1]
    if base.startswith(("gpt-3.5", "gpt-4-", "text-embedding")) or base == "gpt-4":
        return "cl100k_base"
    # gpt-4o, gpt-4.1, gpt-5, o-series and anything newer use o200k_base.
    return "o200k_base"


def tiktoken_cache_file(encoding_name: str) -> Path | None:
    """Where tiktoken would find `encoding_name` without downloading, if it is there.

    Mirrors tiktoken's own cache lookup (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, else
    <tmp>/data-gym-cache; the file named by the sha1 of the encoding URL).
    """
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None  # caching disabled: every use would download
    url = _TIKTOKEN_URL.format(name=encoding_name)
    path = Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()
    return path if path.is_file() else None


def _offline_tiktoken(model: str) -> TiktokenCounter | None:
    try:
        import tiktoken
    except ImportError:
        return None
    name = tiktoken_encoding_name(model)
    if tiktoken_cache_file(name) is None:
        return None  # get_encoding would try the network
    try:
        return TiktokenCounter(tiktoken.get_encoding(name), name)
    except Exception:  # a corrupt cache makes tiktoken re-download and fail: estimate instead
        return None


def make_token_counter(model: str, *, tokenizer_dir: str | Path | None = None) -> TokenCounter:
    """The best counter available offline for `model`; an explicit tokenizer dir wins."""
    if tokenizer_dir is not None:
        directory = Path(tokenizer_dir)
        if not directory.is_dir():
            raise ConfigError(f"tokenizer: {directory} is not a directory")
        return HFTokenizerCounter(directory)
    return _offline_tiktoken(model) or EstimateCounter()


def count_chat_tokens(messages: Sequence[Mapping[str, Any]], counter: TokenCounter) -> int:
    """Tokens of one chat example as OpenAI counts them: framing + every string field."""
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += counter.count(value)
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


class TokenStats(BaseModel):
    """Token figures of a set of examples, labelled with the counting method."""

    method: str  # "tiktoken:o200k_base" | "hf-tokenizer:<dir>" | "estimate:chars/4"
    total: int = 0
    trainable: int = 0  # content tokens of assistant messages with weight ≠ 0
    mean: float = 0.0
    min: int = 0
    max: int = 0
    limit: int | None = None  # the per-example limit checked, when one was
    over_limit: int = 0  # examples longer than `limit`


def token_stats(lengths: Sequence[int], *, trainable: int, method: str) -> TokenStats:
    """Summary of per-example token counts."""
    total = sum(lengths)
    return TokenStats(
        method=method,
        total=total,
        trainable=trainable,
        mean=total / len(lengths) if lengths else 0.0,
        min=min(lengths, default=0),
        max=max(lengths, default=0),
    )


def trainable_tokens(messages: Sequence[Mapping[str, Any]], counter: TokenCounter) -> int:
    """Content tokens of the assistant messages trained on (weight absent or 1)."""
    return sum(
        counter.count(m["content"])
        for m in messages
        if m.get("role") == "assistant"
        and m.get("weight", 1) != 0
        and isinstance(m.get("content"), str)
    )
