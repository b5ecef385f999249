"""Prefix caching and batch caches of the local provider: the same replies, less prefill."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmft_api.models.tiny import build_tiny_lm
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.hf import HFProvider
from rmft_api.schema import Completion, Message

GREEDY = SamplingParams(temperature=0, max_tokens=20)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def episode_round(n: int, round_index: int) -> list[list[Message]]:
    """`n` episodes' chats at one round: each keeps its own system prompt, the rest changes."""
    return [
        [
            Message(role="system", content=f"Task {i}: pick one of " + "A, B, C. " * (i + 1)),
            Message(role="user", content=f"Round {round_index + 1}. " + "A paid 1. " * round_index),
        ]
        for i in range(n)
    ]


def run(
    provider: HFProvider, chats: list[list[Message]], sampling: SamplingParams
) -> list[Completion]:
    return asyncio.run(
        provider.generate(chats, sampling, request_ids=[str(i) for i in range(len(chats))])
    )


def test_prefix_cache_gives_the_same_replies_and_is_reused(tiny_dir: Path) -> None:
    cached = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=6, device="cpu")
    plain = HFProvider(
        "hf/tiny", model_path=tiny_dir, batch_size=6, device="cpu", prefix_cache_tokens=0
    )
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    for round_index in range(3):
        chats = episode_round(6, round_index)
        for sampling in (GREEDY, SamplingParams(temperature=1.0, max_tokens=20, seed=5)):
            got, want = run(cached, chats, sampling), run(plain, chats, sampling)
            assert [c.text for c in got] == [c.text for c in want]
            assert [c.usage for c in got] == [c.usage for c in want]
        # one row alone (the one-request-at-a-time schedule) reuses the same entries
        assert run(cached, chats[2:3], GREEDY)[0].text == run(plain, chats[2:3], GREEDY)[0].text
    assert cached.prefix_cache.misses == 6  # each system prompt prefilled once...
    assert cached.prefix_cache.hits == 6 * 5 + 3  # ...and reused by every later call
    assert len({c.text for c in run(plain, episode_round(6, 1), GREEDY)}) > 1  # not trivial


def test_prefix_cache_stays_within_its_token_budget(tiny_dir: Path) -> None:
    small = HFProvider(
        "hf/tiny", model_path=tiny_dir, batch_size=8, device="cpu", prefix_cache_tokens=120
    )
    plain = HFProvider(
        "hf/tiny", model_path=tiny_dir, batch_size=8, device="cpu", prefix_cache_tokens=0
    )
    chats = episode_round(8, 1)
    assert [c.text for c in run(small, chats, GREEDY)] == [
        c.text for c in run(plain, chats, GREEDY)
    ]
    cache = small.prefix_cache
    assert cache is not None and 0 < cache.cached_tokens <= 120 and 0 < len(cache) < 8


def test_single_message_chats_are_not_cached(tiny_dir: Path) -> None:
    provider = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=4, device="cpu")
    chats = [[Message(role="user", content=f"question {i}")] for i in range(4)]
    replies = run(provider, chats, GREEDY)
    assert all(c.error is None for c in replies)
    assert provider.prefix_cache is not None and provider.prefix_cache.misses == 0
