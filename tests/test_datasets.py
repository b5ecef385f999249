"""Export: rows reproduce exactly the chats TextEpisode showed the model, weighted, and validate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rmft_api.config import Config, load_config
from rmft_api.datasets import DataCard, episode_to_rows, write_train_jsonl
from rmft_api.envs.scenarios import build_scenario
from rmft_api.envs.text import TextEpisode, scripted_reply
from rmft_api.schema import Episode, Message, Usage
from rmft_api.store import read_json, write_json_atomic
from rmft_api.tokens import EstimateCounter
from rmft_api.validation import validate_file

# (episode, round, attempt) → reply
Replier = Callable[[TextEpisode, int, int], str]
Seen = list[tuple[list[Message], str]]  # (chat shown, reply given) per submit


def _cfg(*overrides: str) -> Config:
    return load_config(
        overrides=[
            "env.horizon=6",
            "env.num_arms=3",
            "parse.max_reprompts=1",
            "parse.fallback=forfeit",
            *overrides,
        ]
    )


def _play(
    cfg: Config, replier: Replier, *, index: int = 0, rollout: int = 0
) -> tuple[Episode, Seen]:
    scenario = build_scenario(cfg, split="train", index=index)
    ep = TextEpisode(scenario, prompt=cfg.prompt, parse=cfg.parse, rng=np.random.default_rng(1))
    seen: Seen = []
    while not ep.done:
        chat = ep.next_messages()
        reply = replier(ep, ep.round_index, ep.attempt_index)
        seen.append((chat, reply))
        ep.submit(reply)
    episode = ep.to_episode(
        episode_id=f"ep-{index}-{rollout}",
        iteration=0,
        rollout=rollout,
        policy_spec="scripted/test",
        usage=Usage(),
    )
    return episode, seen


def _mixed(ep: TextEpisode, t: int, attempt: int) -> str:
    """Round 1: garbage then valid (reprompted); round 3: garbage twice (forfeit); else valid."""
    if t == 1 and attempt == 0:
        return "I am not sure which one to pick."
    if t == 3:
        return f"still thinking ({attempt})"
    return f"Reasoning about round {t + 1}: explore.\n" + scripted_reply(ep, t=t)


def _plain(messages: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(m["role"], m["content"]) for m in messages]


def _as_plain(chat: list[Message], reply: str) -> list[tuple[object, object]]:
    return [(m.role, m.content) for m in chat] + [("assistant", reply)]


def test_episode_row_is_exactly_the_chat_the_model_saw() -> None:
    episode, seen = _play(_cfg(), _mixed)
    assert [s.status for s in episode.steps] == ["ok", "reprompted", "ok", "forfeit", "ok", "ok"]
    rows = episode_to_rows(episode, mode="episode")
    assert len(rows) == 1
    messages = rows[0]["messages"]
    # The last chat shown plus the last reply is the whole row; every earlier chat is a prefix.
    assert _plain(messages) == _as_plain(*seen[-1])
    for chat, reply in seen:
        n = len(chat) + 1
        assert _plain(messages[:n]) == _as_plain(chat, reply)
    # Weights: rejected attempts and the forfeited round's replies are context only.
    weights = [(m["content"], m["weight"]) for m in messages if m["role"] == "assistant"]
    assert weights == [
        (reply, 0 if ("not sure" in reply or "still thinking" in reply) else 1) for _, reply in seen
    ]
    assert all("weight" not in m for m in messages if m["role"] != "assistant")
    assert messages[0] == {"role": "system", "content": episode.system_prompt}


def test_round_rows_are_the_chat_at_each_valid_round() -> None:
    episode, seen = _play(_cfg(), _mixed)
    rows = episode_to_rows(episode, mode="round")
    valid_rounds = [s.t for s in episode.steps if s.valid]
    assert len(rows) == len(valid_rounds) == 5
    # The played reply of a valid round is the last submit of that round.
    played = {}
    for chat, reply in seen:
        user_turns = [m for m in chat if m.role == "user"]
        played[len(user_turns)] = (chat, reply)  # later attempts overwrite earlier ones
    for row in rows:
        messages = row["messages"]
        last = messages[-1]
        assert last["role"] == "assistant" and last["weight"] == 1
        assert all(m["weight"] == 0 for m in messages[:-1] if m["role"] == "assistant")
        # Find the submit whose chat + reply is this row.
        assert any(_plain(messages) == _as_plain(c, r) for c, r in played.values())


def test_single_turn_rows_match_each_round_prompt() -> None:
    cfg = _cfg("prompt.transcript=single_turn")
    episode, seen = _play(cfg, _mixed)
    rows = episode_to_rows(episode, mode="episode")
    # One row per round; the forfeited round has no trainable reply and is left out.
    assert len(rows) == 5
    final_chats = {}
    for chat, reply in seen:
        final_chats[chat[1].content] = _as_plain(chat, reply)
    for row in rows:
        assert _plain(row["messages"]) == final_chats[row["messages"][1]["content"]]
        assert row["messages"][-1]["weight"] == 1
    assert episode_to_rows(episode, mode="round") == rows


def test_distribution_answers_export(tmp_path: Path) -> None:
    cfg = _cfg("env.kind=fol", "env.family=sine_trend")
    episode, seen = _play(cfg, _mixed)
    rows = episode_to_rows(episode)
    assert _plain(rows[0]["messages"]) == _as_plain(*seen[-1])
    assert "ANSWER: {" in rows[0]["messages"][-1]["content"]


def test_mask_ambiguous() -> None:
    def ambiguous(ep: TextEpisode, t: int, attempt: int) -> str:
        names = ep.scenario.context.arm_names
        if t == 2:
            return f"ANSWER: {names[0]}\nOn reflection, no.\nANSWER: {names[1]}"
        return scripted_reply(ep, t=t)

    episode, _ = _play(_cfg(), ambiguous)
    assert [s.ambiguous for s in episode.steps] == [False, False, True, False, False, False]
    kept = episode_to_rows(episode)[0]["messages"]
    masked = episode_to_rows(episode, mask_ambiguous=True)[0]["messages"]
    w_kept = [m["weight"] for m in kept if m["role"] == "assistant"]
    w_masked = [m["weight"] for m in masked if m["role"] == "assistant"]
    assert w_kept == [1] * 6 and w_masked == [1, 1, 0, 1, 1, 1]
    assert len(episode_to_rows(episode, mode="round", mask_ambiguous=True)) == 5


def test_rows_that_would_fail_validation_are_dropped_and_counted(tmp_path: Path) -> None:
    def empty_at_3(ep: TextEpisode, t: int, attempt: int) -> str:
        if t == 3 and attempt == 0:
            return ""  # an empty reply, re-prompted
        return scripted_reply(ep, t=t)

    def special(ep: TextEpisode, t: int, attempt: int) -> str:
        return scripted_reply(ep, t=t) + ("<|im_end|>" if t == 4 else "")

    empty, _ = _play(_cfg(), empty_at_3)
    assert episode_to_rows(empty) == []
    # Per round, only rounds whose chat contains the empty reply go.
    assert len(episode_to_rows(empty, mode="round")) == 3
    tokened, _ = _play(_cfg(), special, index=1)
    assert episode_to_rows(tokened) == []
    good, _ = _play(_cfg(), _mixed, index=2)
    same_again, _ = _play(_cfg(), _mixed, index=2, rollout=1)  # an identical transcript
    card = write_train_jsonl(
        [empty, tokened, good, same_again], tmp_path / "train.jsonl", mode="episode"
    )
    assert card.n_examples == 1 and card.n_episodes == 4
    assert card.dropped == {"empty_message": 1, "special_token": 1, "duplicate": 1}


def test_written_file_validates_and_card_describes_it(tmp_path: Path) -> None:
    cfg = _cfg()
    episodes = [_play(cfg, _mixed, index=i)[0] for i in range(12)]
    path = tmp_path / "iter-000" / "train.jsonl"
    thresholds = {"k": 1, "drop_fallback": False}
    card = write_train_jsonl(
        episodes, path, mode="episode", thresholds=thresholds, token_counter=EstimateCounter()
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]  # no temp left
    data = path.read_bytes()
    assert card.sha256 == hashlib.sha256(data).hexdigest() and card.file_bytes == len(data)
    assert card.n_examples == 12 and card.dropped == {}
    assert card.policies == ["scripted/test"] and len(card.template_hashes) == 1
    assert card.scenario_ids == sorted(e.scenario_id for e in episodes)
    assert card.seeds == sorted(e.seed for e in episodes)
    assert card.thresholds == thresholds
    # Per episode: 6 played replies, 1 rejected + 2 forfeited attempts masked.
    assert card.n_trained_replies == 12 * 5 and card.n_masked_replies == 12 * 3
    assert card.n_lenient_steps == 0

    report = validate_file(path)
    assert report.ok, report.problems
    assert report.n_examples == card.n_examples
    assert report.tokens.method == card.tokens.method == "estimate:chars/4"
    assert report.tokens.total == card.tokens.total
    assert report.tokens.trainable == card.tokens.trainable

    # Round mode: one example per valid round, also a valid file.
    rounds = write_train_jsonl(episodes, tmp_path / "rounds.jsonl", mode="round")
    assert rounds.n_examples == 12 * 5 and rounds.n_trained_replies == 12 * 5
    assert validate_file(tmp_path / "rounds.jsonl").ok

    # The card round-trips through the store.
    write_json_atomic(tmp_path / "data_card.json", card)
    assert read_json(tmp_path / "data_card.json", DataCard) == card
    first = json.loads(data.splitlines()[0])
    assert set(first) == {"messages"}


def test_card_counts_the_rounds_read_leniently(tmp_path: Path) -> None:
    cfg = _cfg("parse.answer_line=unique_name")

    def sentence_on_even_rounds(ep: TextEpisode, t: int, attempt: int) -> str:
        name = ep.scenario.context.arm_names[t % 3]
        return f"ANSWER: I pick {name}" if t % 2 == 0 else f"ANSWER: {name}"

    episodes = [_play(cfg, sentence_on_even_rounds, index=i)[0] for i in range(2)]
    card = write_train_jsonl(
        episodes, tmp_path / "train.jsonl", mode="episode", token_counter=EstimateCounter()
    )
    assert card.n_lenient_steps == 2 * 3 and card.n_trained_replies == 2 * 6
