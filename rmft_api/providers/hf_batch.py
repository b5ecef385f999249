"""What makes a padded batch cheaper for the local model, without changing any row's result.

A lock-step batch of 64 rows on a CPU spends most of its time in attention: every decode step
reads every row's keys and values, and a prefill applies a (rows × new tokens × columns) mask.
Three costs there belong to the batch layout, not to the rows' own tokens:

- transformers' StaticCache hands attention all of its preallocated columns, masked, so each
  decode step also read the not-yet-generated tail (up to max_tokens columns of zeros) and each
  prefill built and applied its mask over it. `batch_cache` returns a cache whose layers hand
  attention only the columns filled so far (the same attention: the tail was masked out).
- Given a boolean mask, torch's CPU attention converts it to an additive (0 / -inf) one at every
  call, i.e. once per layer, a pass over the whole mask each time (for a 64-row prefill, ~20
  MB per layer). `use_additive_masks` builds the additive mask once per forward instead; the
  attention itself is transformers' own SDPA path, given the very mask it would have made.
- A 64-row prefill's intermediates overflow a core's cache; `prefill_rows` runs it a few rows
  per call.

A single row (the dynamic cache, no padding: usually no mask at all) is unaffected either way.

All of this builds on transformers internals that move between releases (StaticLayer's
attributes, the mask functions' keywords, the cache keyword's name: 5.24 renamed
`past_key_values` to `cache`). So it is the *fast path*, used only on the releases it was tested
with (`FAST_PATH_TRANSFORMERS`); elsewhere the provider runs the public path, plain left-padded
batched `generate`, which gives the same greedy replies (tests/test_hf_fast_path.py) and is
slower (docs/benchmarks.md). `fast_path_decision` makes that choice and says why.
"""

from __future__ import annotations

import re
from typing import Any, Literal

ADDITIVE_SDPA = "sdpa_additive_mask"
# Rows per prefill call: their intermediates stay in a core's cache (see `prefill_rows`).
PREFILL_ROWS = 8

# The transformers releases (oldest, newest; inclusive) the fast path was tested with: the whole
# suite passes on both (docs/benchmarks.md). Widen only after running it on the new release.
FAST_PATH_TRANSFORMERS = ((5, 23, 0), (5, 24, 0))

FastPathMode = Literal["auto", "on", "off"]


def _release(version: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def fast_path_decision(mode: FastPathMode, version: str) -> tuple[bool, str]:
    """Whether a provider on transformers `version` takes the fast path, and why.

    `auto`: only on a tested release; `on`: always (to try a new release); `off`: never.
    """
    oldest, newest = FAST_PATH_TRANSFORMERS
    tested = f"{'.'.join(map(str, oldest))}–{'.'.join(map(str, newest))}"
    if mode == "off":
        return False, "policy.fast_path = off"
    if mode == "on":
        return True, f"policy.fast_path = on (transformers {version}; tested: {tested})"
    release = _release(version)
    if release is not None and oldest <= release <= newest:
        return True, f"transformers {version} is a tested release ({tested})"
    return False, (
        f"transformers {version} is not a release the lock-step fast path was tested with "
        f"({tested}): using the public generate path (same replies, slower); "
        "set policy.fast_path = on to try the fast path anyway"
    )


def cache_keyword() -> str:
    """The keyword a model's forward and `generate` take a KV cache by: `cache` from transformers
    5.24 on, `past_key_values` before (deprecated after, removed in 5.40 / 6.0)."""
    import transformers

    release = _release(transformers.__version__)
    return "cache" if release is not None and release >= (5, 24, 0) else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned, under either name (see `cache_keyword`)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def batch_cache(config: Any, *, max_cache_len: int, device: Any) -> Any:
    """A preallocated KV cache of `max_cache_len` columns for a batch of several rows.

    On a CPU, where every layer is plain full attention, its layers hand attention only the
    columns filled so far (see `_filled_static_layer_class`); otherwise transformers' own
    StaticCache (on an accelerator `generate` may compile for it; that path is left as it was,
    as nothing here was measured there).
    """
    from transformers import StaticCache
    from transformers.cache_utils import Cache, StaticLayer

    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    if getattr(device, "type", device) != "cpu" or not cache.layers:
        return cache
    if any(type(layer) is not StaticLayer for layer in cache.layers):
        return cache
    filled_layer = _filled_static_layer_class()
    return Cache(layers=[filled_layer(max_cache_len) for _ in cache.layers])


_FILLED_LAYER: Any = None


def _filled_static_layer_class() -> Any:
    """The StaticLayer subclass behind `batch_cache`, defined on first use (lazy transformers)."""
    global _FILLED_LAYER
    if _FILLED_LAYER is not None:
        return _FILLED_LAYER
    from transformers.cache_utils import StaticLayer

    base: Any = StaticLayer  # typed loosely: its tensors are Optional until initialised

    class FilledStaticLayer(base):  # type: ignore[misc]
        """Writes at a running offset and returns (and sizes the mask to) the filled columns.

        Not compileable: its shapes change at every step, as a dynamic cache's do.
        """

        is_compileable = False

        def __init__(self, max_cache_len: int) -> None:
            super().__init__(max_cache_len=max_cache_len)
            self.filled = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self.filled, self.filled + int(key_states.shape[-2])
            self.keys[:, :, start:end] = key_states
            self.values[:, :, start:end] = value_states
            self.filled = end
            self.cumulative_length.fill_(end)
            return self.keys[:, :, :end], self.values[:, :, :end]

        def rows(self, start: int, end: int, *, filled: int) -> Any:
            """A layer over rows start..end of this one's storage (writes land here), taken
            as filled up to column `filled`."""
            view = type(self)(self.max_cache_len)
            view.device = self.device
            view.batch_size, view.num_heads = end - start, self.num_heads
            view.k_head_dim, view.v_head_dim = self.k_head_dim, self.v_head_dim
            view.keys, view.values = self.keys[start:end], self.values[start:end]
            view.cumulative_length = self.cumulative_length.clone().fill_(filled)
            view.filled = filled
            view.is_initialized = True
            return view

        def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
            return self.filled + query_length, 0

        def get_seq_length(self) -> int:
            return self.filled

    _FILLED_LAYER = FilledStaticLayer
    return _FILLED_LAYER


def prefill_rows(
    model: Any,
    cache: Any,
    input_ids: Any,
    attention_mask: Any,
    *,
    end: int,
    rows: int = PREFILL_ROWS,
) -> bool:
    """Fill `cache` (from `batch_cache`, holding its first columns already) up to column `end`
    with the model's keys and values for `input_ids`, a few rows at a time.

    A prefill is memory-bound element-wise work (activations, norms, rotary, the mask) besides
    its matrix products: for 64 rows × 160 new tokens each intermediate is ~10 MB, beyond the
    core's cache, while 8 rows' fit (a 64-row prefill took ~117 ms in one call, ~85 ms as
    8-row calls). Each row's keys and values depend on that row only. Positions follow the
    mask as in `generate`. Returns False (nothing done) for a cache of another kind.
    """
    import torch
    from transformers.cache_utils import Cache

    layers = list(cache.layers)
    if not layers or not all(hasattr(layer, "rows") for layer in layers):
        return False
    start = int(layers[0].filled)
    if end <= start:
        return True
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    with torch.inference_mode():
        batch = int(input_ids.shape[0])
        for first in range(0, batch, rows):
            last = min(batch, first + rows)
            # Columns that are padding in every one of these rows stay zeros (masked anyway).
            real = attention_mask[first:last, start:end].any(dim=0)
            if not bool(real.any()):
                continue
            begin = start + int(real.int().argmax())
            part = Cache(layers=[layer.rows(first, last, filled=begin) for layer in layers])
            model(
                input_ids=input_ids[first:last, begin:end],
                attention_mask=attention_mask[first:last, :end],
                position_ids=positions[first:last, begin:end],
                use_cache=True,
                logits_to_keep=1,
                **{cache_keyword(): part},
            )
    for layer in layers:
        layer.filled = end
        layer.cumulative_length.fill_(end)
    return True


def _additive_sdpa_mask(**kwargs: Any) -> Any:
    """transformers' SDPA mask, as the additive float mask torch would derive from it per call."""
    import torch
    from transformers.masking_utils import sdpa_mask

    mask = _decode_padding_mask(**kwargs)
    if mask is None:
        mask = sdpa_mask(**kwargs)
    if mask is None or mask.dtype != torch.bool or mask.device.type != "cpu":
        return mask
    dtype = kwargs.get("dtype", torch.float32)
    # Exactly torch's own conversion (0 where attended, -inf elsewhere), done once, not per layer.
    attend = torch.zeros((), dtype=dtype)
    return torch.where(mask, attend, torch.full((), float("-inf"), dtype=dtype))


def _decode_padding_mask(
    *,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: Any = None,
    **kwargs: Any,
) -> Any:
    """For one new token at the end of a padded causal batch, the mask `sdpa_mask` builds is the
    padding mask itself (every earlier column is causally visible): read it off directly instead
    of through its index-broadcasting machinery (every decode step of a batch). None where that
    does not apply, or where `sdpa_mask` would drop the mask (no padding)."""
    from transformers.masking_utils import causal_mask_function

    if kwargs.get("mask_function") is not causal_mask_function or q_length != 1:
        return None
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    end = kv_offset + kv_length
    if q_offset < end - 1 or attention_mask.shape[-1] < end:
        return None
    padding = attention_mask[:, kv_offset:end].bool()
    if bool(padding.all()):
        return None
    return padding[:, None, None, :]


def use_additive_masks(model: Any) -> bool:
    """Switch a CPU model on transformers' SDPA attention to masks built additive once per
    forward (same attention function, same mask values). Returns whether it was switched."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if model.device.type != "cpu" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(ADDITIVE_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(ADDITIVE_SDPA, _additive_sdpa_mask)
    try:
        model.set_attn_implementation(ADDITIVE_SDPA)
    except (ValueError, TypeError, AttributeError, KeyError):
        return False
    return bool(config._attn_implementation == ADDITIVE_SDPA)
