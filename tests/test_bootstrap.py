"""The offline base model: synthetic transcripts, packing, determinism, cache, configs, and (slow)
the whole embedded demo."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rmft_api.bootstrap import (
    BootstrapSettings,
    bootstrap_key,
    bootstrap_model,
    parse_bootstrap_spec,
    resolve_bootstrap_spec,
)
from rmft_api.bootstrap_data import MediocrePolicy, RoundView, synthetic_chats
from rmft_api.config import PromptConfig, load_config
from rmft_api.envs.parsing import parse_action
from rmft_api.envs.scenarios import load_library
from rmft_api.envs.templates import load_templates
from rmft_api.envs.transcript import TranscriptReader
from rmft_api.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SINGLE_TURN = PromptConfig(transcript="single_turn", history="summarized")

# A miniature bootstrap: a 32-wide model, a few steps; seconds, not minutes.
MINI = BootstrapSettings(
    arms=(3,),
    horizons=(4,),
    gaps=(0.5,),
    vocab_size=400,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    tokenizer_episodes=4,
    steps=3,
    batch_size=2,
    pack_rounds=2,
    warmup_steps=1,
    threads=1,
)


def _weights_digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


# ---------------------------------------------------------------- synthetic data


def test_synthetic_replies_parse_strictly_and_name_the_chosen_arm() -> None:
    reader = TranscriptReader(load_templates())
    chats = list(
        synthetic_chats(
            seed=5, episodes=30, prompt=SINGLE_TURN, arms=(3, 4), horizons=(6,), gaps=(0.5,)
        )
    )
    assert len(chats) == 30 * 6
    for chat in chats:
        view = reader.read(list(chat.messages), history=False)
        result = parse_action(chat.reply, view.arm_names)
        assert result.ok and not result.ambiguous, chat.reply
        assert chat.reply.splitlines()[-1] == f"ANSWER: {view.arm_names[result.value or 0]}"
    # Every rule of the mixture shows up, the uninformed ones most.
    policies = Counter(c.policy for c in chats[::6])
    assert set(policies) == {"random", "least_tried", "stick", "greedy", "explore_commit"}
    assert policies["random"] >= policies["explore_commit"]


def test_synthetic_data_is_deterministic_in_its_seed() -> None:
    def replies(seed: int) -> list[str]:
        return [
            c.reply
            for c in synthetic_chats(
                seed=seed, episodes=8, prompt=SINGLE_TURN, arms=(3,), horizons=(5,), gaps=(0.5,)
            )
        ]

    assert replies(1) == replies(1)
    assert replies(1) != replies(2)


def _view(counts: list[int], means: list[float], t: int) -> RoundView:
    return RoundView(
        t=t,
        horizon=20,
        counts=np.array(counts, dtype=float),
        means=np.array(means),
        names=("Red", "Blue", "Green"),
        noun="button",
    )


def test_mediocre_rules_do_what_their_reasoning_says() -> None:
    rng = np.random.default_rng(0)
    greedy = MediocrePolicy("greedy", num_arms=3, rng=rng)
    assert greedy.decide(_view([1, 0, 1], [1.0, 0.0, 0.0], 2)).arm == 1  # untried first
    best = greedy.decide(_view([2, 3, 1], [0.5, 0.67, 0.0], 6))
    assert best.arm == 1 and best.reasoning == "Highest mean so far."
    stick = MediocrePolicy("stick", num_arms=3, rng=rng)
    first = stick.decide(_view([0, 0, 0], [0, 0, 0], 0)).arm
    assert {stick.decide(_view([3, 0, 0], [1, 0, 0], 3)).arm for _ in range(5)} == {first}
    least = MediocrePolicy("least_tried", num_arms=3, rng=rng)
    assert least.decide(_view([2, 1, 3], [0.5, 0.0, 1.0], 6)).arm == 1
    random_arms = {
        MediocrePolicy("random", num_arms=3, rng=rng).decide(_view([1, 1, 1], [1, 0, 0], 3)).arm
        for _ in range(40)
    }
    assert random_arms == {0, 1, 2}


# ---------------------------------------------------------------- packing


def test_packed_rounds_compute_exactly_what_single_chats_compute(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rmft_api.bootstrap_train import IGNORE_INDEX, collate_packed, pack_episodes
    from rmft_api.models.tiny import build_tiny_lm

    chats = list(
        synthetic_chats(
            seed=3, episodes=2, prompt=SINGLE_TURN, arms=(3,), horizons=(3,), gaps=(0.5,)
        )
    )
    model_dir = build_tiny_lm(tmp_path / "m", seed=0, hidden_size=32, num_layers=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    packs = pack_episodes(tokenizer, chats, rounds_per_pack=3)
    assert len(packs) == 2
    ids, labels, positions, mask = collate_packed(packs, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        for row, episode in enumerate((chats[:3], chats[3:])):
            trained = (labels[row, 1:] != IGNORE_INDEX).nonzero().flatten()
            expected = []
            for chat in episode:
                prompt = tokenizer.apply_chat_template(
                    [{"role": m.role, "content": m.content} for m in chat.messages],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                r = tokenizer(chat.reply + tokenizer.eos_token, add_special_tokens=False)[
                    "input_ids"
                ]
                alone = model(input_ids=torch.tensor([p + r])).logits[0]
                expected.append(alone[len(p) - 1 : len(p) + len(r) - 1])
            torch.testing.assert_close(
                packed[row, trained], torch.cat(expected), atol=1e-4, rtol=1e-4
            )


# ---------------------------------------------------------------- build, determinism, cache


@pytest.fixture(scope="module")
def mini_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bootstrap_model(tmp_path_factory.mktemp("boot") / "seed0", seed=0, settings=MINI)


def test_bootstrap_is_deterministic_in_its_seed(tmp_path: Path, mini_model: Path) -> None:
    told: list[tuple[int, int]] = []
    again = bootstrap_model(
        tmp_path / "again", seed=0, settings=MINI, on_step=lambda d, n, _: told.append((d, n))
    )
    assert told == [(MINI.steps, MINI.steps)]  # every 50 steps and the last
    assert bootstrap_model(
        tmp_path / "again", seed=0, settings=MINI, on_step=lambda d, n, _: told.append((d, n))
    )
    assert len(told) == 1  # found built: no training, nothing told
    other = bootstrap_model(tmp_path / "other", seed=1, settings=MINI)
    assert _weights_digest(again) == _weights_digest(mini_model)
    assert _weights_digest(other) != _weights_digest(mini_model)
    info = json.loads((mini_model / "bootstrap.json").read_text())
    assert info["key"] == bootstrap_key(MINI, 0) != bootstrap_key(MINI, 1)
    assert info["examples"] > 0 and np.isfinite(info["final_loss"])


def test_the_weights_do_not_depend_on_the_callers_torch_threads(tmp_path: Path) -> None:
    """The random init (a QR) rounds differently on 1 and 2 threads at this width: a build
    must not inherit whatever thread count the calling process (a test run, a CLI) had set."""
    import torch

    settings = MINI.model_copy(update={"hidden_size": 64, "num_heads": 4})
    previous = torch.get_num_threads()
    digests = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            out = bootstrap_model(tmp_path / f"t{threads}", seed=0, settings=settings)
            digests.append(_weights_digest(out))
            assert torch.get_num_threads() == threads  # restored after the build
    finally:
        torch.set_num_threads(previous)
    assert digests[0] == digests[1]


def test_a_built_model_is_reused_and_other_settings_rebuild(
    tmp_path: Path, mini_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMFT_CACHE", str(tmp_path / "cache"))
    first = bootstrap_model(seed=0, settings=MINI)
    assert first.parent == tmp_path / "cache" and first.name.startswith("bootstrap-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    began = time.perf_counter()
    assert bootstrap_model(seed=0, settings=MINI) == first
    assert time.perf_counter() - began < 1.0  # found, not trained again
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = bootstrap_model(seed=0, settings=MINI.model_copy(update={"steps": 2}))
    assert other != first and _weights_digest(other) != _weights_digest(first)


def test_bootstrap_spec_resolves_to_the_cached_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMFT_CACHE", str(tmp_path))
    assert parse_bootstrap_spec("hf/@bootstrap") == (0, None)
    assert parse_bootstrap_spec("hf/@bootstrap:7+runs/a/adapter") == (7, "runs/a/adapter")
    assert parse_bootstrap_spec("hf/models/tiny") is None
    with pytest.raises(ConfigError):
        parse_bootstrap_spec("hf/@bootstrap-x")
    assert resolve_bootstrap_spec("agent/ucb1") == "agent/ucb1"
    resolved = resolve_bootstrap_spec("hf/@bootstrap:2+adapter", settings=MINI)
    model_dir, adapter = resolved.removeprefix("hf/").split("+")
    assert adapter == "adapter" and Path(model_dir).parent == tmp_path
    assert (Path(model_dir) / "bootstrap.json").is_file()


def test_a_briefly_trained_model_answers_in_the_format_through_the_hf_provider(
    tmp_path: Path,
) -> None:
    """A few hundred steps: replies are a reasoning sentence then `ANSWER: <an arm name>`.

    (Answering with a name from *this* prompt takes the full pre-training: see the slow test.)"""
    import asyncio

    from rmft_api.config import Config, ParseConfig
    from rmft_api.envs.scenarios import build_scenarios
    from rmft_api.envs.text import TextEpisode
    from rmft_api.providers.base import SamplingParams
    from rmft_api.providers.registry import resolve

    settings = MINI.model_copy(
        update={"hidden_size": 64, "num_heads": 4, "steps": 900, "batch_size": 2}
    )
    model_dir = bootstrap_model(tmp_path / "model", seed=0, settings=settings)
    provider = resolve(f"hf/{model_dir}", batch_size=64, device="cpu")
    cfg = Config(prompt=SINGLE_TURN, parse=ParseConfig(max_reprompts=0))
    cfg = cfg.model_copy(update={"env": cfg.env.model_copy(update={"num_arms": 3, "horizon": 4})})
    episodes = [
        TextEpisode(s, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(i))
        for i, s in enumerate(build_scenarios(cfg, split="heldout", count=40))
    ]
    replies = asyncio.run(
        provider.generate(
            [e.next_messages() for e in episodes],
            SamplingParams(temperature=0.5, max_tokens=32, seed=0),
            request_ids=[str(i) for i in range(len(episodes))],
        )
    )
    library = {n for c in load_library().values() for n in c.arm_pool}
    shaped = [re.fullmatch(r"[A-Z][^\n]*\.\nANSWER: (.+)", r.text.strip()) for r in replies]
    assert sum(m is not None for m in shaped) >= 0.8 * len(replies), [r.text for r in replies]
    named = [m is not None and m.group(1).strip() in library for m in shaped]
    assert sum(named) >= 0.5 * len(replies), [r.text for r in replies]


def test_sampled_replies_do_not_depend_on_batch_companions(mini_model: Path) -> None:
    """Per-request seeded sampling: what a resumed (re-batched) rollout relies on."""
    import asyncio

    from rmft_api.providers.base import SamplingParams
    from rmft_api.providers.registry import resolve
    from rmft_api.schema import Message

    provider = resolve(f"hf/{mini_model}", batch_size=8, device="cpu")
    chats = [
        [Message(role="system", content="Pick one."), Message(role="user", content=f"Round {i}")]
        for i in range(6)
    ]
    ids = [f"ep{i}/0/0" for i in range(6)]
    hot = SamplingParams(temperature=1.0, max_tokens=12, seed=3)
    together = asyncio.run(provider.generate(chats, hot, request_ids=ids))
    alone = [
        asyncio.run(provider.generate([c], hot, request_ids=[i]))[0]
        for c, i in zip(chats, ids, strict=True)
    ]
    assert [c.text for c in together] == [c.text for c in alone]
    assert len({c.text for c in together}) > 1


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.iterations.count >= 1


def test_the_embedded_default_is_offline_local_and_measured() -> None:
    cfg = load_config(ROOT / "configs" / "default.toml")
    assert parse_bootstrap_spec(cfg.policy.spec) is not None
    assert cfg.trainer.kind == "lora"
    assert cfg.iterations.count >= 3
    assert cfg.eval.scenarios * cfg.eval.rollouts_per_scenario >= 200
    assert {"ucb1", "thompson"} <= set(cfg.eval.baselines)
    assert len(cfg.prompt.contexts) >= 3
    assert cfg.prompt.transcript == "single_turn"


# ---------------------------------------------------------------- the demo (slow)


@pytest.mark.slow
def test_make_demo_lowers_held_out_regret(tmp_path: Path) -> None:
    """The embedded default end to end: ≤ 0.7 × iteration 0's regret, CIs apart, below UCB's
    distance. Takes minutes (bootstrap + 3 iterations on CPU)."""
    env = {**os.environ, "RMFT_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", "run", "--set", f'run.runs_dir="{tmp_path}"'],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = next(p for p in tmp_path.iterdir() if (p / "state.json").is_file())
    status = subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", "status", str(run_dir), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    report = json.loads(status.stdout.strip().splitlines()[-1])
    first, final = report["iterations"][0], report["final"]
    assert final["eval_mean_regret"] <= 0.7 * first["eval_mean_regret"]
    assert final["eval_ci_high"] < first["eval_ci_low"]
    assert first["eval_mean_regret"] > first["baselines"]["ucb1"]
