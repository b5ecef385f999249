"""The local provider's fast path is used only where it was tested, and falls back cleanly.

The fast path (hf_batch.py, hf_prefix.py) builds on transformers internals; the public path is
plain left-padded batched `generate`. Greedy replies must not depend on which one ran.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmft_api.config import config_from_dict, load_config
from rmft_api.envs.scenarios import build_scenarios
from rmft_api.models.tiny import build_tiny_lm
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.hf import HFProvider
from rmft_api.providers.hf_batch import FAST_PATH_TRANSFORMERS, fast_path_decision
from rmft_api.rollout import read_episodes, run_rollouts
from rmft_api.run_state import default_config_path
from rmft_api.schema import Message

GREEDY = SamplingParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def chats(n: int, round_index: int) -> list[list[Message]]:
    return [
        [
            Message(role="system", content=f"Task {i}: pick one of " + "A, B, C. " * (i + 1)),
            Message(role="user", content=f"Round {round_index + 1}. " + "B paid 0. " * round_index),
        ]
        for i in range(n)
    ]


def texts(provider: HFProvider, batch: list[list[Message]], sampling: SamplingParams) -> list[str]:
    ids = [str(i) for i in range(len(batch))]
    return [c.text for c in asyncio.run(provider.generate(batch, sampling, request_ids=ids))]


def test_the_decision_follows_the_tested_releases_and_the_mode() -> None:
    oldest, newest = (".".join(map(str, v)) for v in FAST_PATH_TRANSFORMERS)
    assert fast_path_decision("auto", oldest)[0] and fast_path_decision("auto", newest)[0]
    for version in ("5.22.2", "5.99.0", "6.0.0.dev0", "unknown"):
        used, why = fast_path_decision("auto", version)
        assert not used
        assert version in why and "public generate path" in why and "fast_path = on" in why
    assert fast_path_decision("on", "6.0.0")[0]
    assert not fast_path_decision("off", newest)[0]
    # The release this suite runs on is one the fast path was tested with: keep them in step.
    import transformers as loaded

    assert fast_path_decision("auto", loaded.__version__)[0], loaded.__version__


def test_public_and_fast_paths_give_the_same_replies(tiny_dir: Path) -> None:
    fast = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=6, device="cpu")
    public = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=6, device="cpu", fast_path="off")
    assert fast.fast_path and fast.prefix_cache is not None
    assert not public.fast_path and public.prefix_cache is None
    sampled = SamplingParams(temperature=1.0, max_tokens=24, seed=2)
    for round_index in range(3):
        batch = chats(6, round_index)
        assert texts(fast, batch, GREEDY) == texts(public, batch, GREEDY)
        # Sampling draws per-row noise from seeded generators: the same on either path too.
        assert texts(fast, batch, sampled) == texts(public, batch, sampled)
        assert texts(fast, batch[1:2], GREEDY) == texts(public, batch[1:2], GREEDY)


def test_an_untested_release_uses_the_public_path_and_says_so(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # (by name: transformers swaps its lazy module in sys.modules once it is first used)
    monkeypatch.setattr("transformers.__version__", "5.99.0")
    with caplog.at_level(logging.WARNING, logger="rmft_api.providers.hf"):
        provider = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=4, device="cpu")
    assert not provider.fast_path and provider.prefix_cache is None
    assert any("5.99.0" in r.getMessage() and "public" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    reference = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=4, device="cpu")
    assert texts(provider, chats(4, 1), GREEDY) == texts(reference, chats(4, 1), GREEDY)


def test_internals_that_moved_at_run_time_fall_back_to_the_public_path(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A transformers whose StaticLayer no longer sets what the fast path reads (as 5.24 dropped
    `dtype`): the batch is redone on the public path, once logged, with the same replies."""
    from transformers.cache_utils import StaticLayer

    reference = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=4, device="cpu")
    want, later = texts(reference, chats(4, 2), GREEDY), texts(reference, chats(4, 0), GREEDY)
    provider = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=4, device="cpu")
    assert provider.fast_path
    moved = StaticLayer.lazy_initialization

    def lazy_initialization(self: object, key_states: object, value_states: object) -> None:
        moved(self, key_states, value_states)
        del self.k_head_dim  # type: ignore[attr-defined]

    monkeypatch.setattr(StaticLayer, "lazy_initialization", lazy_initialization)
    with caplog.at_level(logging.WARNING, logger="rmft_api.providers.hf"):
        got = texts(provider, chats(4, 2), GREEDY)
    assert got == want
    assert not provider.fast_path and provider.prefix_cache is None
    assert [r for r in caplog.records if "fast path is off" in r.getMessage()]
    # The model is back on transformers' own attention: later calls need no fast-path code.
    assert provider._model.config._attn_implementation == "sdpa"
    assert texts(provider, chats(4, 0), GREEDY) == later


def test_a_lock_step_rollout_of_the_bootstrap_model_is_the_same_on_both_paths(
    tmp_path: Path,
) -> None:
    """The embedded default's model and prompts, greedy: every reply of every episode agrees."""
    from tests.bootstrap_fixture import speaking_model

    model = speaking_model()
    default = default_config_path()
    assert default is not None
    data = load_config(default).model_dump(mode="json")
    data["env"]["horizon"] = 8
    cfg = config_from_dict(data)
    drawn = build_scenarios(cfg, split="train", count=6)
    sampling = SamplingParams(temperature=0, max_tokens=32)
    replies = {}
    for mode in ("auto", "off"):
        provider = HFProvider("hf/boot", model_path=model, batch_size=64, device="cpu")
        if mode == "off":
            provider = HFProvider(
                "hf/boot", model_path=model, batch_size=64, device="cpu", fast_path="off"
            )
        out = tmp_path / f"{mode}.jsonl"
        asyncio.run(
            run_rollouts(
                provider,
                drawn,
                cfg=cfg,
                iteration=0,
                rollouts_per_scenario=2,
                out=out,
                sampling=sampling,
            )
        )
        episodes = sorted(read_episodes(out), key=lambda e: e.episode_id)
        replies[mode] = [[a.reply for s in e.steps for a in s.attempts] for e in episodes]
    assert len(replies["auto"]) == 12 and replies["auto"] == replies["off"]
