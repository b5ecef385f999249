"""The tiny local model builder and the HF provider: real weights, real tokenizer, real generate."""

from __future__ import annotations

import asyncio
import filecmp
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmft_api.errors import ConfigError, FatalProviderError
from rmft_api.models.tiny import EOS_TOKEN, PAD_TOKEN, build_tiny_lm
from rmft_api.providers.base import SamplingParams
from rmft_api.providers.hf import HFProvider, answer_end, trim_reply
from rmft_api.schema import Message


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def provider(tiny_dir: Path) -> HFProvider:
    return HFProvider("hf/tiny", model_path=tiny_dir, batch_size=8, device="cpu")


def _chats(n: int) -> list[list[Message]]:
    # Prompts of clearly different lengths, so a batch really needs padding.
    return [
        [
            Message(role="system", content="You pick one option per round."),
            Message(role="user", content=f"Round {i + 1}. " + "Option A paid 1. " * (3 * i + 1)),
        ]
        for i in range(n)
    ]


def test_tiny_model_is_deterministic_and_loads_back(tmp_path: Path, tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = build_tiny_lm(tmp_path / "again", seed=0)
    other = build_tiny_lm(tmp_path / "other", seed=1)
    assert filecmp.cmp(tiny_dir / "model.safetensors", again / "model.safetensors", shallow=False)
    assert filecmp.cmp(tiny_dir / "tokenizer.json", again / "tokenizer.json", shallow=False)
    assert not filecmp.cmp(
        tiny_dir / "model.safetensors", other / "model.safetensors", shallow=False
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.eos_token == EOS_TOKEN
    assert model.config.eos_token_id == tokenizer.eos_token_id
    chat = [{"role": "user", "content": "Which option?"}, {"role": "assistant", "content": "A"}]
    rendered = tokenizer.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [
        t for t, m in zip(rendered["input_ids"], rendered["assistant_masks"], strict=True) if m
    ]
    # Exactly the assistant content and its closing token are marked for training.
    assert tokenizer.decode(trained) == "A" + EOS_TOKEN
    # Byte-level: any text round-trips, including characters absent from the corpus.
    text = "Ünïcode ✓ and ANSWER: B"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tiny_model_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        build_tiny_lm(tmp_path / "bad", hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="too small"):
        build_tiny_lm(tmp_path / "bad", vocab_size=100)


def test_left_padding_gives_the_same_greedy_reply_alone_and_in_a_batch(
    provider: HFProvider,
) -> None:
    chats = _chats(5)
    greedy = SamplingParams(temperature=0, max_tokens=12)
    batched = asyncio.run(provider.generate(chats, greedy))
    alone = [asyncio.run(provider.generate([chat], greedy))[0] for chat in chats]
    assert [c.text for c in batched] == [c.text for c in alone]
    # The untrained model's greedy output still depends on its prompt (else this test is empty).
    assert len({c.text for c in batched}) > 1
    for chat, c in zip(chats, batched, strict=True):
        assert c.error is None and c.finish_reason in ("stop", "length")
        assert c.usage.prompt_tokens == len(provider._tokenizer(provider.render(chat))["input_ids"])
        assert 1 <= c.usage.completion_tokens <= 12


def test_batches_are_split_by_batch_size_and_keep_order(tiny_dir: Path) -> None:
    small = HFProvider("hf/tiny", model_path=tiny_dir, batch_size=2, device="cpu")
    chats = _chats(5)
    greedy = SamplingParams(temperature=0, max_tokens=6)
    whole = asyncio.run(
        HFProvider("hf/t", model_path=tiny_dir, device="cpu").generate(chats, greedy)
    )
    split = asyncio.run(small.generate(chats, greedy))
    assert [c.text for c in split] == [c.text for c in whole]


def test_sampling_is_reproducible_from_seed_and_request_ids(provider: HFProvider) -> None:
    chats = _chats(3)
    ids = ["e1/0/0", "e2/0/0", "e3/0/0"]
    hot = SamplingParams(temperature=1.0, max_tokens=16, seed=7)
    first = asyncio.run(provider.generate(chats, hot, request_ids=ids))
    second = asyncio.run(provider.generate(chats, hot, request_ids=ids))
    assert [c.text for c in first] == [c.text for c in second]
    other = asyncio.run(
        provider.generate(chats, hot.model_copy(update={"seed": 8}), request_ids=ids)
    )
    assert [c.text for c in other] != [c.text for c in first]


def test_stop_string_cuts_the_reply_and_ends_generation_early(provider: HFProvider) -> None:
    chat = _chats(1)
    free = asyncio.run(provider.generate(chat, SamplingParams(temperature=0, max_tokens=24)))[0]
    assert free.finish_reason == "length" and len(free.text) > 8
    stop = free.text[4:7]
    cut = asyncio.run(
        provider.generate(chat, SamplingParams(temperature=0, max_tokens=24, stop=[stop]))
    )[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.usage.completion_tokens < free.usage.completion_tokens


def test_trim_keeps_the_answer_line_and_drops_what_follows() -> None:
    text = "I explore.\nANSWER: B\nand then more text"
    assert trim_reply(text, stop=[], answer_marker="ANSWER:") == "I explore.\nANSWER: B"
    assert trim_reply("ANSWER: B", stop=[], answer_marker="ANSWER:") == "ANSWER: B"
    assert trim_reply(text, stop=["explore"], answer_marker="ANSWER:") == "I "
    assert trim_reply(text, stop=[], answer_marker=None) == text


def test_answer_end_waits_for_a_complete_answer() -> None:
    assert answer_end("thinking ANSWER:", "ANSWER:") is None
    assert answer_end("ANSWER:\n", "ANSWER:") is None  # the answer may be on the next line
    assert answer_end("ANSWER:\n  Red\nmore", "ANSWER:") == len("ANSWER:\n  Red")
    multi = 'ANSWER: {"Red": 0.5,\n "Blue": 0.5}\nbye'
    assert answer_end(multi[:20], "ANSWER:") is None
    assert answer_end(multi, "ANSWER:") == multi.index("}") + 1
    fenced = 'ANSWER: ```json\n{"Red": 1}\n```'
    assert answer_end(fenced, "ANSWER:") == fenced.index("}") + 1


def test_missing_model_or_adapter_is_fatal(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(FatalProviderError, match="cannot load model"):
        HFProvider("hf/nowhere", model_path=tmp_path / "nowhere", device="cpu")
    with pytest.raises(FatalProviderError, match="adapter directory not found"):
        HFProvider("hf/x", model_path=tiny_dir, adapter_path=tmp_path / "nope", device="cpu")


def test_peft_adapter_is_applied(tmp_path: Path, tiny_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # a non-zero update, so the adapted model really differs
    lora.save_pretrained(tmp_path / "adapter")

    chats = _chats(3)
    greedy = SamplingParams(temperature=0, max_tokens=10)
    plain = asyncio.run(
        HFProvider("hf/a", model_path=tiny_dir, device="cpu").generate(chats, greedy)
    )
    adapted_provider = HFProvider(
        "hf/a+b", model_path=tiny_dir, adapter_path=tmp_path / "adapter", device="cpu"
    )
    adapted = asyncio.run(adapted_provider.generate(chats, greedy))
    assert [c.text for c in adapted] != [c.text for c in plain]


def test_a_final_assistant_turn_is_continued_not_closed(provider: HFProvider) -> None:
    chat = _chats(1)[0]
    opened = provider.render([*chat, Message(role="assistant", content="ANSWER: The best is")])
    assert opened.endswith("ANSWER: The best is")
    sampling = SamplingParams(temperature=0, max_tokens=4)
    (reply,) = asyncio.run(
        provider.generate([[*chat, Message(role="assistant", content="ANSWER:")]], sampling)
    )
    assert not reply.text.startswith("ANSWER:")  # only the continuation comes back
