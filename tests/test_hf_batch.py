"""Batch-layout speed-ups of the local provider (hf_batch.py) compute what they replace."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from rmft_api.models.loading import load_causal_lm
from rmft_api.models.tiny import build_tiny_lm
from rmft_api.providers.hf_batch import (
    ADDITIVE_SDPA,
    _additive_sdpa_mask,
    batch_cache,
    cache_keyword,
    prefill_rows,
    use_additive_masks,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    lm, _ = load_causal_lm(path, device="cpu")
    return lm


def left_padded(lengths: list[int], *, width: int, seed: int) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (len(lengths), width), generator=gen)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    return ids, mask


def test_decode_mask_is_the_sdpa_mask_made_additive() -> None:
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    _, mask = left_padded([5, 9, 7], width=9, seed=0)
    mask = mask.bool()  # as the model hands it over
    for q_length, q_offset in ((1, 8), (3, 6)):  # the decode fast path, then the general one
        args: dict[str, Any] = dict(
            batch_size=3,
            q_length=q_length,
            kv_length=9,
            q_offset=q_offset,
            mask_function=causal_mask_function,
            attention_mask=mask,
            dtype=torch.float32,
        )
        expected = torch.where(sdpa_mask(**args), 0.0, float("-inf"))
        got = _additive_sdpa_mask(**args)
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    # No padding: like sdpa_mask, no mask at all (SDPA's causal path).
    full = torch.ones((2, 6), dtype=torch.bool)
    args = dict(batch_size=2, q_length=1, kv_length=6, q_offset=5, attention_mask=full)
    assert _additive_sdpa_mask(mask_function=causal_mask_function, **args) is None


def test_row_chunked_prefill_fills_the_cache_as_one_forward_does(model: Any) -> None:
    lengths = [12, 30, 21, 5, 30]
    ids, mask = left_padded(lengths, width=30, seed=1)
    end = 29  # generate then starts from the last prompt token
    one = batch_cache(model.config, max_cache_len=40, device=model.device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.inference_mode():
        model(
            input_ids=ids[:, :end],
            attention_mask=mask[:, :end],
            position_ids=positions[:, :end],
            use_cache=True,
            **{cache_keyword(): one},
        )
    chunked = batch_cache(model.config, max_cache_len=40, device=model.device)
    # Seed the cache with the first columns, as the prefix cache does, then fill the rest.
    with torch.inference_mode():
        for index, layer in enumerate(one.layers):
            chunked.update(layer.keys[:, :, :10].clone(), layer.values[:, :, :10].clone(), index)
    assert prefill_rows(model, chunked, ids, mask, end=end, rows=2)
    for a, b in zip(one.layers, chunked.layers, strict=True):
        assert a.filled == b.filled == end
        real = mask[:, :end].bool()[:, None, :, None].expand_as(a.keys[:, :, :end])
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            # Padding columns may differ (never attended); every real token's KV agrees.
            assert torch.allclose(x[:, :, :end][real], y[:, :, :end][real], atol=1e-5)
            assert not torch.equal(x[:, :, :end][real], torch.zeros_like(x[:, :, :end][real]))


def test_additive_masks_change_no_logits(model: Any) -> None:
    ids, mask = left_padded([7, 16, 11], width=16, seed=2)
    with torch.inference_mode():
        model.set_attn_implementation("sdpa")
        plain = model(input_ids=ids, attention_mask=mask).logits
        assert use_additive_masks(model)
        assert model.config._attn_implementation == ADDITIVE_SDPA
        additive = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.equal(plain[real], additive[real])
