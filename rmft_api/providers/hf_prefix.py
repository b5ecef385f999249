"""Prefix caching for the local model: each chat's first message is prefilled once, not per round.

Every round of an episode sends the same first message (the system prompt, ~85% of a
single-turn prompt's tokens in this project's tasks) followed by a new rest. On a CPU, prefill
costs the same per token alone or in a batch, so a lock-step batch spent about half its time
re-reading system prompts it had read the round before. The keys and values of each first
message are kept (least recently used first out, up to `max_tokens` cached tokens) and a batch is
laid out so that they can be reused:

    row i:  [pad × (P − pᵢ)] [prefix ᵢ (cached)] [pad × (S − sᵢ)] [rest ᵢ]

P and S are the longest prefix and rest of the batch. Padding is masked and position ids come
from the attention mask (what `generate` does), so prefix token j sits at position j exactly as
when its keys and values were computed alone, and the rest follows at pᵢ, pᵢ + 1, ... The cache
handed to `generate` already holds the first P columns; only the rest is prefilled.

Used only for models whose KV cache is plain full attention (no sliding window, no linear
attention), where cached keys and values do not depend on what comes after them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rmft_api.providers.hf_batch import PREFILL_ROWS as _PREFILL_ROWS
from rmft_api.providers.hf_batch import batch_cache, output_cache, prefill_rows


@dataclass
class _Entry:
    ids: list[int]
    keys: list[Any]  # per layer: (heads, tokens, head_dim)
    values: list[Any]


@dataclass
class PrefixBatch:
    """Inputs for `generate`: token ids and mask laid out as above, and the pre-filled cache."""

    input_ids: Any
    attention_mask: Any
    cache: Any
    prompt_len: int  # columns before the first generated token


def supports_prefix_cache(model: Any) -> bool:
    """True when every layer of the model's static KV cache is a plain full-attention layer."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    try:
        cache = StaticCache(config=model.config, max_cache_len=8)
    except (ValueError, TypeError, AttributeError, KeyError):
        return False
    return bool(cache.layers) and all(type(layer) is StaticLayer for layer in cache.layers)


class PrefixCache:
    """Keys and values of chat prefixes, reused across `generate` calls."""

    def __init__(
        self, model: Any, *, tokenize: Callable[[str], list[int]], max_tokens: int
    ) -> None:
        self._model = model
        self._tokenize = tokenize
        self.max_tokens = max_tokens
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._tokens = 0
        self.hits = 0
        self.misses = 0

    @property
    def cached_tokens(self) -> int:
        return self._tokens

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def build(
        self,
        rows: Sequence[list[int]],
        prefixes: Sequence[str | None],
        *,
        pad_id: int,
        new_tokens: int,
    ) -> PrefixBatch | None:
        """The batch for `rows` (full prompt ids) with the KV of their `prefixes` (the text of
        each prompt's first message; None: none) reused or computed now; None when no row has a
        usable prefix (the caller then pads as usual)."""
        import torch

        entries = self._entries_for(rows, prefixes)
        if not any(entries):
            return None
        lengths = [len(e.ids) if e is not None else 0 for e in entries]
        width_p = max(lengths)
        width_s = max(len(row) - p for row, p in zip(rows, lengths, strict=True))
        ids = torch.full((len(rows), width_p + width_s), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (row, p) in enumerate(zip(rows, lengths, strict=True)):
            rest = row[p:]
            ids[i, width_p - p : width_p] = torch.tensor(row[:p], dtype=torch.long)
            ids[i, width_p + width_s - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, width_p - p : width_p] = 1
            mask[i, width_p + width_s - len(rest) :] = 1
        cache = self._filled_cache(entries, width_p, total=width_p + width_s + new_tokens)
        device = self._model.device
        ids, mask = ids.to(device), mask.to(device)
        if len(rows) > 1:
            # All but the last column now, a few rows at a time (hf_batch.prefill_rows);
            # `generate` then starts from the last prompt token of every row.
            prefill_rows(self._model, cache, ids, mask, end=width_p + width_s - 1)
        return PrefixBatch(
            input_ids=ids, attention_mask=mask, cache=cache, prompt_len=width_p + width_s
        )

    # ------------------------------------------------------------------ internals

    def _entries_for(
        self, rows: Sequence[list[int]], prefixes: Sequence[str | None]
    ) -> list[_Entry | None]:
        out: list[_Entry | None] = [None] * len(rows)
        missing: dict[str, list[int]] = {}
        for i, (row, text) in enumerate(zip(rows, prefixes, strict=True)):
            if text is None:
                continue
            entry = self._entries.get(text)
            if entry is not None:
                self._entries.move_to_end(text)
                ids = entry.ids
            else:
                ids = missing[text] if text in missing else self._tokenize(text)
            # Usable when its tokens are exactly the prompt's first tokens (the tokenizer did
            # not merge across the boundary) and something follows it.
            if not 0 < len(ids) < len(row) or row[: len(ids)] != ids:
                continue
            if entry is not None:
                self.hits += 1
                out[i] = entry
            elif len(ids) <= self.max_tokens:
                missing[text] = ids
        if missing:
            self.misses += len(missing)
            self._compute(missing)
            for i, text in enumerate(prefixes):
                if out[i] is None and text is not None and text in missing:
                    out[i] = self._entries.get(text)
        return out

    def _compute(self, missing: dict[str, list[int]]) -> None:
        """Prefill the missing prefixes, left-padded, a few at a time (similar lengths together:
        less padding; small calls: see hf_batch.prefill_rows), and keep their KV."""
        texts = sorted(missing, key=lambda text: len(missing[text]))
        for first in range(0, len(texts), _PREFILL_ROWS):
            self._compute_rows({t: missing[t] for t in texts[first : first + _PREFILL_ROWS]})
        while self._tokens > self.max_tokens and self._entries:
            _, old = self._entries.popitem(last=False)
            self._tokens -= len(old.ids)

    def _compute_rows(self, missing: dict[str, list[int]]) -> None:
        import torch

        texts = list(missing)
        longest = max(len(missing[t]) for t in texts)
        ids = torch.zeros((len(texts), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            row = missing[text]
            ids[i, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, longest - len(row) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self._model.device
        with torch.inference_mode():
            out = self._model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=1,
            )
        layers = output_cache(out).layers
        for i, text in enumerate(texts):
            n = len(missing[text])
            keys = [layer.keys[i, :, longest - n :, :].clone() for layer in layers]
            values = [layer.values[i, :, longest - n :, :].clone() for layer in layers]
            self._entries[text] = _Entry(ids=missing[text], keys=keys, values=values)
            self._tokens += n

    def _filled_cache(self, entries: Sequence[_Entry | None], width: int, *, total: int) -> Any:
        """A cache of `total` columns holding each row's prefix right-aligned in its first
        `width` columns (zeros under the padding, which the mask hides)."""
        import torch
        from transformers import DynamicCache

        config = self._model.config
        # One row: the dynamic cache is as fast and allocates nothing up front (see hf.py).
        cache = (
            batch_cache(config, max_cache_len=total, device=self._model.device)
            if len(entries) > 1
            else DynamicCache(config=config)
        )
        sample = next(e for e in entries if e is not None)
        for layer in range(len(sample.keys)):
            heads, _, dim = sample.keys[layer].shape
            like = sample.keys[layer]
            keys = like.new_zeros((len(entries), heads, width, dim))
            values = like.new_zeros((len(entries), heads, width, dim))
            for i, entry in enumerate(entries):
                if entry is not None:
                    n = len(entry.ids)
                    keys[i, :, width - n :, :] = entry.keys[layer]
                    values[i, :, width - n :, :] = entry.values[layer]
            with torch.inference_mode():
                cache.update(keys, values, layer)
        return cache
