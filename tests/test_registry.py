"""Provider specs, scripted and agent providers, and reading an episode back from its chat."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from rmft_api.config import Config, config_from_dict
from rmft_api.envs.scenarios import build_scenario
from rmft_api.envs.templates import load_templates
from rmft_api.envs.text import TextEpisode, scripted_reply
from rmft_api.envs.transcript import TranscriptReader
from rmft_api.errors import ConfigError
from rmft_api.providers.agent import AgentProvider
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.providers.registry import (
    SPEC_FORMS,
    is_local,
    resolve,
    resolve_policy,
    sampling_params,
    split_spec,
)
from rmft_api.providers.scripted import ScriptedProvider
from rmft_api.schema import Message

SAMPLING = SamplingParams(temperature=0, max_tokens=64)


def make_cfg(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {"env": {"kind": "mab", "num_arms": 4, "horizon": 10}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def episode(cfg: Config, index: int = 0) -> TextEpisode:
    scenario = build_scenario(cfg, split="train", index=index)
    return TextEpisode(scenario, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(0))


def play(provider: Provider, ep: TextEpisode, *, rid: str | None = None) -> list[str]:
    """Play `ep` to the end with `provider`; return every reply."""
    replies = []
    while not ep.done:
        ids = None if rid is None else [f"{rid}/{ep.round_index}/{ep.attempt_index}"]
        [c] = asyncio.run(provider.generate([ep.next_messages()], SAMPLING, request_ids=ids))
        assert c.error is None
        replies.append(c.text)
        ep.submit(c.text)
    return replies


# ---------------------------------------------------------------- specs


def test_scripted_and_agent_specs_import_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from rmft_api.providers.registry import resolve\n"
        "for spec in ('scripted/first', 'scripted/random', 'agent/ucb1', 'agent/hedge'):\n"
        "    resolve(spec, env_kind='fol' if spec.endswith('hedge') else 'mab')\n"
        "heavy = [m for m in ('torch', 'transformers', 'openai', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("gpt-4o-mini", "no '<backend>/' prefix"),
        ("openai/", "no '<backend>/' prefix"),
        ("vllm/llama", "unknown backend 'vllm'"),
        ("scripted/best", "unknown script 'best'"),
        ("agent/nosuch", "unknown agent 'nosuch'"),
        ("agent/oracle", "hidden means"),
        ("hf/", "no '<backend>/' prefix"),
        ("hf/models/tiny+", "hf needs a model directory"),
    ],
)
def test_bad_specs_are_config_errors(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")) as info:
        resolve(spec)
    if "backend" in needle or "prefix" in needle or "hf needs" in needle:
        assert all(form in str(info.value) for form in SPEC_FORMS)


def test_spec_parts_and_locality() -> None:
    assert split_spec("openai/ft:gpt-4o-mini:org::abc") == ("openai", "ft:gpt-4o-mini:org::abc")
    assert split_spec("hf/runs/x/adapter+y") == ("hf", "runs/x/adapter+y")
    assert is_local("hf/m") and is_local("agent/ucb1") and is_local("scripted/first")
    assert not is_local("openai/gpt-4o-mini")


def test_openai_spec_keeps_the_model_name_and_the_options() -> None:
    from rmft_api.providers.openai import OpenAIProvider

    provider = resolve(
        "openai/ft:gpt-4o-mini:org::abc",
        base_url="http://127.0.0.1:9/v1",
        concurrency=3,
        rpm=120,
        batch_size=99,  # an hf option: ignored by this backend
    )
    assert isinstance(provider, OpenAIProvider)
    assert provider.model == "ft:gpt-4o-mini:org::abc"
    assert provider.spec == "openai/ft:gpt-4o-mini:org::abc"
    assert provider.limiter.rpm == 120


def test_policy_section_drives_resolution_and_sampling() -> None:
    cfg = make_cfg(
        policy={"spec": "agent/thompson", "sampling": {"temperature": 0.3, "stop": ["\n\n"]}},
        run={"seed": 5},
    )
    provider = resolve_policy(cfg)
    assert isinstance(provider, AgentProvider) and provider.seed == 5
    assert resolve_policy(cfg, spec="scripted/cycle").spec == "scripted/cycle"
    assert sampling_params(cfg) == SamplingParams(temperature=0.3, max_tokens=256, stop=["\n\n"])


# ---------------------------------------------------------------- scripted providers


def test_scripted_first_and_cycle_play_what_they_say() -> None:
    cfg = make_cfg()
    first = episode(cfg)
    play(resolve("scripted/first"), first)
    assert [s.action for s in first.steps] == [0] * 10
    cycle = episode(cfg)
    play(resolve("scripted/cycle"), cycle)
    assert [s.action for s in cycle.steps] == [t % 4 for t in range(10)]
    assert all(s.status == "ok" for s in (*first.steps, *cycle.steps))


def test_scripted_distributions_are_well_formed() -> None:
    cfg = make_cfg(env={"kind": "fol", "num_arms": 3, "horizon": 6})
    for name in ("first", "cycle", "random"):
        ep = episode(cfg)
        play(resolve(f"scripted/{name}"), ep, rid="e")
        assert all(s.status == "ok" and s.policy is not None for s in ep.steps)
        assert all(math.isclose(sum(s.policy or []), 1.0) for s in ep.steps)


def test_scripted_garbage_never_parses() -> None:
    ep = episode(make_cfg(parse={"max_reprompts": 2}))
    play(resolve("scripted/garbage"), ep)
    assert all(s.status == "forfeit" and len(s.attempts) == 3 for s in ep.steps)


def test_scripted_random_is_seeded_by_request_id() -> None:
    provider = ScriptedProvider("scripted/random", name="random", seed=1)
    cfg = make_cfg(env={"num_arms": 10})
    chat = episode(cfg).next_messages()
    again = [provider.reply(chat, request_id=f"e{i}/0/0") for i in range(20)]
    assert again == [provider.reply(chat, request_id=f"e{i}/0/0") for i in range(20)]
    assert len(set(again)) > 3  # ids change the draw
    # Without ids (over HTTP) the chat alone decides.
    assert provider.reply(chat) == provider.reply(chat)
    other_seed = ScriptedProvider("scripted/random", name="random", seed=2)
    assert [other_seed.reply(chat, request_id=f"e{i}/0/0") for i in range(20)] != again


# ---------------------------------------------------------------- agents in text


@pytest.mark.parametrize(
    "prompt",
    [
        {},
        {"history": "raw"},
        {"transcript": "single_turn", "history": "raw"},
    ],
)
def test_agent_ucb1_in_text_plays_the_ucb_rule(prompt: dict[str, Any]) -> None:
    cfg = make_cfg(prompt=prompt, env={"horizon": 40})
    ep = episode(cfg, index=3)
    play(resolve("agent/ucb1", agents=cfg.agents), ep, rid="e")
    k = 4
    counts, sums = np.zeros(k), np.zeros(k)
    for step in ep.steps:
        assert step.status == "ok" and step.action is not None
        if step.t < k:
            assert counts[step.action] == 0  # every arm once first
        else:
            index = sums / counts + np.sqrt(cfg.agents.ucb_c * math.log(step.t) / counts)
            assert index[step.action] >= index.max() - 1e-9
        counts[step.action] += 1
        sums[step.action] += step.reward


def test_agent_hedge_answers_its_own_distribution() -> None:
    from rmft_api.agents.registry import make_agent

    cfg = make_cfg(env={"kind": "fol", "num_arms": 3, "horizon": 8})
    ep = episode(cfg)
    play(resolve("agent/hedge", env_kind="fol", agents=cfg.agents), ep, rid="e")
    hedge = make_agent("hedge", cfg.agents, env_kind="fol")
    hedge.reset(3, 8, np.random.default_rng(0))
    for step in ep.steps:
        assert step.policy is not None and step.reward_vector is not None
        # 4 decimals in the reply, renormalised by the parser.
        np.testing.assert_allclose(step.policy, hedge.policy(step.t), atol=2e-4)
        # The agent saw the rewards as the feedback line shows them: two decimals.
        shown = np.array([float(f"{r:.2f}") for r in step.reward_vector])
        hedge.update(step.t, shown)  # type: ignore[call-arg, arg-type]


def test_agent_reply_depends_on_the_episode_not_on_the_round_only() -> None:
    provider = resolve("agent/thompson")
    cfg = make_cfg(env={"num_arms": 10})
    chat = episode(cfg).next_messages()
    replies = {
        asyncio.run(provider.generate([chat], SAMPLING, request_ids=[f"e{i}/0/0"]))[0].text
        for i in range(12)
    }
    assert len(replies) > 2


# ---------------------------------------------------------------- transcript reader


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"prompt": {"history": "raw"}},
        {"prompt": {"transcript": "single_turn", "history": "raw"}},
        {"env": {"noise": "gaussian"}},
        {"env": {"kind": "ns"}},
        {"env": {"kind": "fol"}},
        {"env": {"kind": "fol"}, "prompt": {"answer": "action"}},
        {"prompt": {"answer": "distribution"}},
    ],
)
def test_reader_recovers_the_history_from_the_chat(sections: dict[str, Any]) -> None:
    cfg = make_cfg(**sections)
    ep = episode(cfg, index=1)
    reader = TranscriptReader(load_templates())
    while not ep.done:
        view = reader.read(ep.next_messages())
        assert view.arm_names == ep.scenario.context.arm_names
        assert (view.horizon, view.round_index, view.answer) == (10, ep.round_index, ep.answer_kind)
        assert view.exact and len(view.history) == len(ep.steps)
        assert view.gaussian == (cfg.env.noise == "gaussian" and cfg.env.kind != "fol")
        for past, step in zip(view.history, ep.steps, strict=True):
            if step.reward_vector is not None:
                np.testing.assert_allclose(past.reward_vector or [], step.reward_vector, atol=5e-3)
            else:
                assert past.arm == step.action
                assert past.reward is not None and abs(past.reward - step.reward) <= 5e-3
        ep.submit(scripted_reply(ep, t=ep.round_index))


def test_reader_expands_a_summary_into_matching_pseudo_rounds() -> None:
    cfg = make_cfg(prompt={"transcript": "single_turn", "history": "summarized"})
    ep = episode(cfg, index=2)
    for t in range(7):
        ep.submit(scripted_reply(ep, t=t % 2))  # arms 0 and 1 only
    view = TranscriptReader(load_templates()).read(ep.next_messages())
    assert not view.exact and view.round_index == 7
    for arm in range(4):
        played = [s.reward for s in ep.steps if s.action == arm]
        seen = [p.reward for p in view.history if p.arm == arm]
        assert len(seen) == len(played) and sum(seen) == pytest.approx(sum(played))


def test_reader_rejects_foreign_chats() -> None:
    reader = TranscriptReader(load_templates())
    with pytest.raises(ConfigError, match="system prompt"):
        reader.read([Message(role="user", content="hi")])
    with pytest.raises(ConfigError, match="setup templates"):
        reader.read(
            [Message(role="system", content="Be helpful."), Message(role="user", content="hi")]
        )
    reply = asyncio.run(
        resolve("agent/ucb1").generate([[Message(role="system", content="x")]], SAMPLING)
    )[0]
    assert reply.error is not None and "cannot read the chat" in reply.error
