"""TextEpisode: prompts per history / transcript mode, parse-failure policies, CRN, regret, hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rmft_api.config import Config, config_from_dict
from rmft_api.envs.base import BanditInstance, FullInfoInstance
from rmft_api.envs.scenarios import Scenario, build_scenario
from rmft_api.envs.templates import load_templates
from rmft_api.envs.text import TextEpisode, episode_chats, scripted_reply
from rmft_api.errors import ConfigError, ParseAbortError, StateError
from rmft_api.regret import full_info_regret_curve
from rmft_api.schema import Episode, Message, Usage

GARBAGE = "I am not sure what to do here."


def make_cfg(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {"env": {"kind": "mab", "num_arms": 4, "horizon": 12}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


def make_episode(cfg: Config, *, index: int = 0, rng_seed: int = 0) -> TextEpisode:
    scenario = build_scenario(cfg, split="train", index=index)
    return TextEpisode(
        scenario, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(rng_seed)
    )


def answer(ep: TextEpisode, arm: int) -> str:
    return f"Some thinking about it.\nANSWER: {ep.scenario.context.arm_names[arm]}"


def finish(ep: TextEpisode, **kw: Any) -> Episode:
    defaults: dict[str, Any] = dict(
        episode_id="e0", iteration=0, rollout=0, policy_spec="scripted/test", usage=Usage()
    )
    return ep.to_episode(**{**defaults, **kw})


def bandit(scenario: Scenario) -> BanditInstance:
    assert isinstance(scenario.instance, BanditInstance)
    return scenario.instance


# ---------------------------------------------------------------- history and transcript modes


def test_multi_turn_raw_chat_grows_with_feedback_then_question() -> None:
    ep = make_episode(make_cfg(prompt={"history": "raw"}))
    first = ep.next_messages()
    assert [m.role for m in first] == ["system", "user"]
    assert "Round 1 of 12" in first[1].content
    for t in range(3):
        ep.submit(answer(ep, t))
    msgs = ep.next_messages()
    assert [m.role for m in msgs] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    names = ep.scenario.context.arm_names
    reward = int(ep.steps[2].reward)
    assert msgs[-1].content.startswith(f"Round 3: {names[2]} paid {reward}.")
    assert msgs[-1].content.endswith(
        "Round 4 of 12: which " + ep.scenario.context.action_noun + "?"
    )
    assert msgs[:-1] == [*first[:1], *msgs[1:-1]]  # the earlier chat is kept verbatim
    assert len(msgs[-1].content) < 120  # compact per-round text


def test_summarized_history_counts_and_means() -> None:
    ep = make_episode(make_cfg(prompt={"history": "summarized"}))
    for arm in (0, 0, 1, 0):
        ep.submit(answer(ep, arm))
    names = ep.scenario.context.arm_names
    arm0 = [s.reward for s in ep.steps if s.action == 0]
    text = ep.next_messages()[-1].content
    assert f"{names[0]} played 3, mean {np.mean(arm0):.2f}" in text
    assert f"{names[1]} played 1, mean {ep.steps[2].reward:.2f}" in text
    assert f"{names[2]} not tried" in text and f"{names[3]} not tried" in text


def test_single_turn_raw_shows_every_round() -> None:
    ep = make_episode(make_cfg(prompt={"history": "raw", "transcript": "single_turn"}))
    assert "No rounds played yet." in ep.next_messages()[1].content
    for t in range(5):
        ep.submit(answer(ep, t % 4))
    msgs = ep.next_messages()
    assert [m.role for m in msgs] == ["system", "user"]
    lines = msgs[1].content.splitlines()
    assert lines[0] == "Rounds so far:"
    assert [ln.split(":")[0] for ln in lines[1:6]] == ["1", "2", "3", "4", "5"]
    assert lines[-1].startswith("Round 6 of 12")


def test_single_turn_window_shows_only_last_rounds() -> None:
    ep = make_episode(
        make_cfg(prompt={"history": "window", "window": 3, "transcript": "single_turn"})
    )
    for t in range(7):
        ep.submit(answer(ep, t % 4))
    lines = ep.next_messages()[1].content.splitlines()
    assert lines[0] == "Last 3 rounds:"
    assert [ln.split(":")[0] for ln in lines[1:4]] == ["5", "6", "7"]
    assert len(lines) == 5


def test_window_history_needs_single_turn() -> None:
    with pytest.raises(ConfigError, match="single_turn"):
        make_episode(make_cfg(prompt={"history": "window", "transcript": "multi_turn"}))


def test_fol_distribution_answers_and_full_feedback() -> None:
    cfg = make_cfg(env={"kind": "fol", "num_arms": 3, "horizon": 10, "family": "iid_uniform"})
    ep = make_episode(cfg)
    assert ep.answer_kind == "distribution"
    assert "probabilit" in ep.system_prompt and "ANSWER: {" in ep.system_prompt
    names = ep.scenario.context.arm_names
    policies = []
    for t in range(10):
        p = np.roll([0.6, 0.3, 0.1], t)
        policies.append(p)
        body = ", ".join(f'"{n}": {x}' for n, x in zip(names, p, strict=True))
        ep.submit("ANSWER: {" + body + "}")
        if t == 0:
            feedback = ep.next_messages()[-1].content
            assert all(n in feedback for n in names) and "You earned" in feedback
    assert ep.done
    ep_rec = finish(ep)
    vectors = np.array([s.reward_vector for s in ep_rec.steps])
    instance = ep.scenario.instance
    assert isinstance(instance, FullInfoInstance)
    assert np.allclose(vectors, instance.table)
    expected = full_info_regret_curve(np.array(policies), vectors)[-1]
    assert ep_rec.regret == pytest.approx(expected)
    assert ep_rec.realised_regret == pytest.approx(expected)
    assert ep_rec.steps[0].reward == pytest.approx(float(policies[0] @ vectors[0]))


def test_bandit_distribution_answer_samples_with_episode_rng() -> None:
    cfg = make_cfg(prompt={"answer": "distribution"})
    eps = [make_episode(cfg, rng_seed=s) for s in (1, 1, 2)]
    for ep in eps:
        names = ep.scenario.context.arm_names
        body = ", ".join(f'"{n}": 0.25' for n in names)
        for _ in range(12):
            ep.submit("ANSWER: {" + body + "}")
    actions = [[s.action for s in ep.steps] for ep in eps]
    assert actions[0] == actions[1] and actions[0] != actions[2]
    means = bandit(eps[0].scenario).means
    rec = finish(eps[0])
    assert rec.regret == pytest.approx(float((means.max(1) - means.mean(1)).sum()))
    assert all(s.policy == [0.25] * 4 for s in rec.steps)


# ---------------------------------------------------------------- parse-failure policies


def test_reprompt_then_valid_is_tagged_and_kept_in_chat() -> None:
    ep = make_episode(make_cfg(parse={"max_reprompts": 2}))
    ep.submit(GARBAGE)
    msgs = ep.next_messages()
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2].content == GARBAGE and "Invalid answer" in msgs[3].content
    assert ep.round_index == 0 and ep.attempt_index == 1
    ep.submit(answer(ep, 1))
    step = ep.steps[0]
    assert step.status == "reprompted" and step.action == 1 and step.valid
    assert step.attempts[0].parse_error and step.attempts[0].reminder == msgs[3].content
    assert step.attempts[1].parse_error is None


@pytest.mark.parametrize("transcript", ["multi_turn", "single_turn"])
def test_forfeit_round_earns_zero_and_is_tagged(transcript: str) -> None:
    ep = make_episode(make_cfg(prompt={"transcript": transcript}, parse={"fallback": "forfeit"}))
    ep.submit(GARBAGE)  # re-prompted once (max_reprompts = 1 by default)
    ep.submit(GARBAGE)
    step = ep.steps[0]
    assert step.status == "forfeit" and not step.valid
    assert step.action is None and step.reward == 0 and step.expected_reward == 0
    assert len(step.attempts) == 2 and step.attempts[1].reminder is None
    assert "forfeited" in step.feedback
    for t in range(1, 12):
        ep.submit(answer(ep, t % 4))
    rec = finish(ep)
    means = bandit(ep.scenario).means
    per_step = [s.best_expected_reward - s.expected_reward for s in rec.steps]
    assert per_step[0] == pytest.approx(means[0].max())
    assert rec.regret == pytest.approx(sum(per_step))


def test_random_fallback_uses_episode_rng_and_is_tagged() -> None:
    cfg = make_cfg(parse={"fallback": "random", "max_reprompts": 0})
    picks = []
    for seed in range(8):
        ep = make_episode(cfg, rng_seed=seed)
        ep.submit(GARBAGE)
        assert ep.steps[0].status == "fallback_random"
        assert "random choice was made" in ep.next_messages()[-1].content
        picks.append(ep.steps[0].action)
    assert len(set(picks)) > 1  # really random across episode seeds
    again = make_episode(cfg, rng_seed=3)
    again.submit(GARBAGE)
    assert again.steps[0].action == picks[3]  # and reproducible


def test_repeat_last_fallback() -> None:
    cfg = make_cfg(parse={"fallback": "repeat_last", "max_reprompts": 0})
    ep = make_episode(cfg)
    ep.submit(GARBAGE)  # nothing to repeat in round 1: random, tagged as such
    assert ep.steps[0].status == "fallback_random"
    ep.submit(answer(ep, 2))
    ep.submit(GARBAGE)
    assert ep.steps[2].status == "fallback_repeat" and ep.steps[2].action == 2
    assert "previous choice was repeated" in ep.next_messages()[-1].content


def test_abort_raises_and_marks_episode() -> None:
    ep = make_episode(make_cfg(parse={"fallback": "abort"}))
    ep.submit(answer(ep, 0))
    ep.submit(GARBAGE)
    with pytest.raises(ParseAbortError, match="round 2"):
        ep.submit(GARBAGE)
    assert ep.done
    with pytest.raises(StateError):
        ep.next_messages()
    rec = finish(ep)
    assert rec.status == "aborted" and rec.error and len(rec.steps) == 1


def test_unfinished_episode_cannot_be_complete() -> None:
    ep = make_episode(make_cfg())
    ep.submit(answer(ep, 0))
    with pytest.raises(StateError):
        finish(ep)
    assert finish(ep, status="error", error="provider failed").status == "error"


@pytest.mark.parametrize("fallback", ["random", "repeat_last", "forfeit"])
def test_parse_failure_does_not_shift_later_draws(fallback: str) -> None:
    cfg = make_cfg(env={"horizon": 30}, parse={"fallback": fallback, "max_reprompts": 1})
    clean, broken = make_episode(cfg, rng_seed=0), make_episode(cfg, rng_seed=99)
    for t in range(30):
        arm = (t * 3) % 4
        clean.submit(answer(clean, arm))
        if t == 2:  # round 3 fails twice, then falls back
            broken.submit(GARBAGE)
            broken.submit(GARBAGE)
        else:
            broken.submit(answer(broken, arm))
    table = bandit(clean.scenario).rewards
    assert broken.steps[2].status != "ok"
    for a, b in zip(clean.steps[3:], broken.steps[3:], strict=True):
        assert a.action == b.action
        assert a.reward == b.reward == table[a.t, a.action]


def test_fol_forfeit_does_not_shift_later_vectors() -> None:
    cfg = make_cfg(
        env={"kind": "fol", "num_arms": 3, "horizon": 8},
        parse={"fallback": "forfeit", "max_reprompts": 0},
    )
    clean, broken = make_episode(cfg), make_episode(cfg)
    for t in range(8):
        clean.submit(scripted_reply(clean, t=t))
        broken.submit(GARBAGE if t == 2 else scripted_reply(broken, t=t))
    assert broken.steps[2].status == "forfeit" and broken.steps[2].reward == 0
    for a, b in zip(clean.steps, broken.steps, strict=True):
        assert a.reward_vector == b.reward_vector


# ---------------------------------------------------------------- records and chats


def test_oracle_has_zero_regret_and_record_round_trips() -> None:
    ep = make_episode(make_cfg())
    best = int(bandit(ep.scenario).means[0].argmax())
    for _ in range(12):
        ep.submit(answer(ep, best))
    rec = finish(ep)
    assert rec.regret == pytest.approx(0.0)
    assert rec.template_hash == ep.template_hash and rec.context == ep.scenario.context.name
    assert Episode.model_validate_json(rec.model_dump_json()) == rec


def test_multi_turn_chat_rebuilt_from_record_with_weights() -> None:
    ep = make_episode(make_cfg(env={"horizon": 4}, parse={"fallback": "random"}))
    replies = [answer(ep, 0), GARBAGE, answer(ep, 1), GARBAGE, GARBAGE, answer(ep, 3)]
    last_chat: list[Message] = []
    for reply in replies:
        last_chat = ep.next_messages()
        ep.submit(reply)
    (chat,) = episode_chats(finish(ep))
    seen = [*last_chat, Message(role="assistant", content=replies[-1])]
    assert [(m.role, m.content) for m in chat] == [(m.role, m.content) for m in seen]
    weights = [m.weight for m in chat if m.role == "assistant"]
    # round 1 ok, round 2 rejected then ok, round 3 two rejections (fallback), round 4 ok
    assert weights == [1, 0, 1, 0, 0, 1]


def test_single_turn_chats_rebuilt_per_round() -> None:
    ep = make_episode(make_cfg(env={"horizon": 3}, prompt={"transcript": "single_turn"}))
    seen = []
    for t in range(3):
        seen.append(ep.next_messages())
        ep.submit(answer(ep, t))
    chats = episode_chats(finish(ep))
    assert len(chats) == 3
    for chat, shown in zip(chats, seen, strict=True):
        assert [m.content for m in chat[:2]] == [m.content for m in shown]
        assert chat[2].weight == 1


# ---------------------------------------------------------------- template hash


def test_template_hash_stable_and_sensitive_to_factors(tmp_path: Path) -> None:
    base = make_cfg()
    h = make_episode(base).template_hash
    assert len(h) == 16 and int(h, 16) >= 0
    assert make_episode(base, index=5, rng_seed=3).template_hash == h  # per config, not scenario
    ep = make_episode(base)
    for t in range(12):
        ep.submit(answer(ep, t % 4) if t % 3 else GARBAGE)
    assert ep.template_hash == h
    assert ep.renderer.rendered_templates <= ep.renderer.template_names()
    variants = [
        {"prompt": {"framing": "suggestive"}},
        {"prompt": {"history": "raw"}},
        {"prompt": {"reasoning": False}},
        {"prompt": {"transcript": "single_turn"}},
        {"prompt": {"transcript": "single_turn", "history": "window", "window": 5}},
        {"prompt": {"answer": "distribution"}},
        {"env": {"kind": "ns"}},
        {"env": {"noise": "gaussian"}},
    ]
    hashes = {make_episode(make_cfg(**v)).template_hash for v in variants}
    assert len(hashes) == len(variants) and h not in hashes


def test_template_hash_follows_used_template_texts(tmp_path: Path) -> None:
    (tmp_path / "framing_suggestive.txt").write_text("Explore a lot!\n")
    scenario = build_scenario(make_cfg(), split="train", index=0)
    custom = load_templates(tmp_path)

    def hash_for(framing: str, templates: Any) -> str:
        cfg = make_cfg(prompt={"framing": framing})
        rng = np.random.default_rng(0)
        return TextEpisode(
            scenario, prompt=cfg.prompt, parse=cfg.parse, rng=rng, templates=templates
        ).template_hash

    # An overridden template that the factors do not use leaves the hash alone ...
    assert hash_for("neutral", custom) == hash_for("neutral", None)
    # ... and one they use changes it, and the text reaches the prompt.
    assert hash_for("suggestive", custom) != hash_for("suggestive", None)
    cfg = make_cfg(prompt={"framing": "suggestive"})
    ep = TextEpisode(scenario, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(0))
    assert "Explore a lot!" not in ep.system_prompt
    ep2 = TextEpisode(
        scenario, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(0), templates=custom
    )
    assert "Explore a lot!" in ep2.system_prompt


def test_every_factor_combination_renders_and_scores() -> None:
    envs: list[dict[str, Any]] = [
        {"kind": "mab", "noise": "gaussian"},
        {"kind": "ns", "ns_mode": "drift"},
        {"kind": "fol", "family": "adaptive"},
    ]
    histories = [("multi_turn", "raw"), ("multi_turn", "summarized")]
    histories += [("single_turn", h) for h in ("raw", "summarized", "window")]
    for env in envs:
        for transcript, history in histories:
            for answer_kind in ("action", "distribution"):
                for reasoning in (True, False):
                    cfg = make_cfg(
                        env={**env, "num_arms": 3, "horizon": 5},
                        prompt={
                            "transcript": transcript,
                            "history": history,
                            "window": 2,
                            "answer": answer_kind,
                            "reasoning": reasoning,
                            "framing": "suggestive" if reasoning else "neutral",
                        },
                        parse={"fallback": "repeat_last", "max_reprompts": 0},
                    )
                    ep = make_episode(cfg)
                    for t in range(5):
                        ep.submit(GARBAGE if t == 1 else scripted_reply(ep, t=t))
                    rec = finish(ep)
                    assert ep.renderer.rendered_templates <= ep.renderer.template_names()
                    assert "$" not in rec.system_prompt + "".join(s.prompt for s in rec.steps)
                    assert [s.status for s in rec.steps].count("fallback_repeat") == 1
                    gaps = sum(s.best_expected_reward - s.expected_reward for s in rec.steps)
                    if env["kind"] != "fol":  # expected bandit regret: Σ gaps, never < 0
                        assert rec.regret == pytest.approx(gaps) and rec.regret >= 0


# ---------------------------------------------------------------- lenient answers, tags, prefix


def test_unique_name_policy_plays_a_sentence_and_tags_the_step_lenient() -> None:
    cfg = make_cfg(parse={"answer_line": "unique_name", "max_reprompts": 0})
    ep = make_episode(cfg)
    names = ep.scenario.context.arm_names
    ep.submit(f"Thinking.\nANSWER: The correct answer is: {names[2]}")
    ep.submit(f"ANSWER: {names[1]}")
    first, second = ep.steps
    assert first.action == 2 and first.valid and first.lenient
    assert second.action == 1 and not second.lenient
    rec = Episode.model_validate_json(finish(make_finished(ep)).model_dump_json())
    assert rec.steps[0].lenient and not rec.steps[1].lenient


def make_finished(ep: TextEpisode) -> TextEpisode:
    while not ep.done:
        ep.submit(answer(ep, 0))
    return ep


def test_exact_policy_forfeits_the_same_sentence_and_records_why() -> None:
    ep = make_episode(make_cfg(parse={"max_reprompts": 0, "fallback": "forfeit"}))
    name = ep.scenario.context.arm_names[2]
    ep.submit(f"ANSWER: The correct answer is: {name}", truncated=True)
    ep.submit("I am thinking about it")
    first, second = ep.steps
    assert first.status == "forfeit" and not first.lenient
    assert first.attempts[0].parse_category == "not_exact" and first.attempts[0].truncated
    assert second.attempts[0].parse_category == "no_marker"
    assert not second.attempts[0].truncated


def test_reply_prefix_is_an_open_assistant_turn_and_part_of_the_reply() -> None:
    cfg = make_cfg(
        prompt={"reply_prefix": "ANSWER: The best $action_noun is", "transcript": "single_turn"},
        parse={"answer_line": "unique_name", "max_reprompts": 0},
        policy={"spec": "hf/models/any"},  # a local model: it continues the open turn
    )
    ep = make_episode(cfg)
    noun, names = ep.scenario.context.action_noun, ep.scenario.context.arm_names
    msgs = ep.next_messages()
    assert msgs[-1].role == "assistant"
    assert msgs[-1].content == f"ANSWER: The best {noun} is"
    ep.submit(f" {names[3]}.")
    step = ep.steps[0]
    assert step.action == 3 and step.lenient
    assert step.attempts[0].reply == f"ANSWER: The best {noun} is {names[3]}."
    plain = make_episode(make_cfg(prompt={"transcript": "single_turn"}))
    assert plain.next_messages()[-1].role == "user"
    assert plain.template_hash != ep.template_hash
