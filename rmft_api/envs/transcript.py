"""Reading an episode back from its chat alone: arm names, horizon, the round asked, the history.

A policy behind an HTTP endpoint (the sandbox, a replica) sees only messages. `TranscriptReader`
turns our own prompt templates into regular expressions and recovers from a chat what the text
layer put into it: the arm names and horizon (system prompt), the round being asked and the
answer form (the last question), the noise scale, and every past round the chat reveals.

Exactness depends on the prompt factors. Multi-turn chats carry each round's feedback line, and
single-turn raw history carries every round's line: the history is recovered exactly (rewards as
rendered: Bernoulli 0/1 exactly, Gaussian rounded to two decimals). A single-turn window shows
only its last rounds, and a summarized single-turn prompt shows per-arm counts and means only:
those give `exact = False` views, with the summary expanded into pseudo-rounds that reproduce its
counts and means.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rmft_api.envs.render import AnswerKind
from rmft_api.envs.templates import TemplateSet
from rmft_api.errors import ConfigError
from rmft_api.schema import Message

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_INT = r"\d+"
# Arm names are one or two ASCII words (scenarios.check_arm_pool): no commas, no periods.
_ARM_LIST = r"[A-Za-z0-9][A-Za-z0-9 ,\-]*?"


def template_regex(text: str, groups: Mapping[str, str]) -> re.Pattern[str]:
    """A pattern matching what `string.Template(text)` renders to.

    Variables named in `groups` become named groups with the given sub-pattern (a repeat of a
    name must match the same text); any other variable matches a short run of text on one line.
    Patterns are searched, not anchored: the renderer may join several texts on one line.
    """
    parts: list[str] = []
    seen: set[str] = set()
    pos = 0
    for m in string.Template.pattern.finditer(text):
        parts.append(re.escape(text[pos : m.start()]))
        pos = m.end()
        if m.group("escaped") is not None:
            parts.append(re.escape("$"))
            continue
        name = m.group("named") or m.group("braced")
        if name is None:  # an invalid '$': TemplateSet validation rejects those already
            parts.append(re.escape(m.group(0)))
        elif name in groups and name in seen:
            parts.append(f"(?P={name})")
        elif name in groups:
            seen.add(name)
            parts.append(f"(?P<{name}>{groups[name]})")
        else:
            parts.append(r"[^\n]*?")
    parts.append(re.escape(text[pos:]))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class PastRound:
    """What the chat reveals about one played round (0-based `t`)."""

    t: int
    arm: int | None = None  # bandits: the arm played (None: forfeited / not shown)
    reward: float | None = None
    reward_vector: tuple[float, ...] | None = None  # full information


@dataclass(frozen=True)
class TranscriptView:
    arm_names: tuple[str, ...]
    horizon: int
    round_index: int  # 0-based round being asked now
    answer: AnswerKind
    full_information: bool
    gaussian: bool
    history: tuple[PastRound, ...]  # ascending t; empty when read with history=False
    exact: bool  # every past round recovered as played (not a summary or a window)


def _arm_group(names: Sequence[str]) -> str:
    ordered = sorted(names, key=len, reverse=True)  # longest first: no prefix shadowing
    return "|".join(re.escape(n) for n in ordered)


class TranscriptReader:
    """Recovers a `TranscriptView` from chats rendered with `templates`."""

    def __init__(self, templates: TemplateSet) -> None:
        self._t = templates
        setup = {"arm_list": _ARM_LIST, "horizon": _INT, "num_actions": _INT}
        self._setups = {
            name: template_regex(templates.texts[name], setup)
            # Most specific first: setup_bandit's free text would also match the others.
            for name in ("setup_full_action", "setup_full", "setup_bandit")
        }
        self._gaussian = template_regex(templates.texts["scale_gaussian"], {})
        question = {"round": _INT, "horizon": _INT}
        self._questions: dict[AnswerKind, re.Pattern[str]] = {
            "action": template_regex(templates.texts["question_action"], question),
            "distribution": template_regex(templates.texts["question_distribution"], question),
        }
        self._summary_header = template_regex(templates.texts["summary_header"], {"rounds": _INT})
        # Round patterns depend on the arm names (an alternation of them), so they are per chat.
        self._by_names: dict[tuple[str, ...], dict[str, re.Pattern[str]]] = {}

    def _round_patterns(self, names: tuple[str, ...]) -> dict[str, re.Pattern[str]]:
        cached = self._by_names.get(names)
        if cached is None:
            cached = self._by_names[names] = self._compile_round_patterns(names)
        return cached

    def _compile_round_patterns(self, names: tuple[str, ...]) -> dict[str, re.Pattern[str]]:
        arm = _arm_group(names)
        step = {"round": _INT, "arm": arm, "reward": _NUMBER}
        full = {"round": _INT, "reward_list": r"[^\n]+?", "reward": _NUMBER}
        summary = {"arm": arm, "count": _INT, "mean": _NUMBER, "total": _NUMBER}
        texts = self._t.texts
        return {
            "feedback_action": template_regex(texts["feedback_action"], step),
            "feedback_sampled": template_regex(texts["feedback_sampled"], step),
            "feedback_full": template_regex(texts["feedback_full"], full),
            "line_action": template_regex(texts["line_action"], step),
            "line_full": template_regex(texts["line_full"], full),
            "summary_action": template_regex(texts["summary_action"], summary),
            "summary_full": template_regex(texts["summary_full"], summary),
            "history_window": template_regex(texts["history_window"], {"count": _INT}),
        }

    def read(self, chat: Sequence[Message], *, history: bool = True) -> TranscriptView:
        """The view of `chat`; ConfigError if it was not rendered with these templates.

        `history=False` skips recovering past rounds (the costly part on long chats).
        """
        if not chat or chat[0].role != "system":
            raise ConfigError("chat has no system prompt: not an rmft-api episode")
        names, horizon, full_info = self._setup(chat[0].content)
        users = [m.content for m in chat if m.role == "user"]
        answer, round_index = self._question(users)
        patterns = self._round_patterns(names)
        rounds: dict[int, PastRound] = {}
        for text in users if history else ():
            for found in self._rounds_in(text, names, patterns):
                rounds[found.t] = found
        gaussian = self._gaussian.search(chat[0].content) is not None
        exact = True
        if history and not rounds and round_index > 0 and users:
            rounds = self._from_summary(
                users[-1], names, patterns, full_info=full_info, gaussian=gaussian
            )
            exact = False
        if any(patterns["history_window"].search(text) for text in users):
            exact = False
        return TranscriptView(
            arm_names=names,
            horizon=horizon,
            round_index=round_index,
            answer=answer,
            full_information=full_info,
            gaussian=gaussian,
            history=tuple(rounds[t] for t in sorted(rounds) if t < round_index),
            exact=exact,
        )

    def _setup(self, system: str) -> tuple[tuple[str, ...], int, bool]:
        for name, pattern in self._setups.items():
            m = pattern.search(system)
            if m is None:
                continue
            names = tuple(n.strip() for n in m.group("arm_list").split(","))
            if len(names) == int(m.group("num_actions")) and all(names):
                return names, int(m.group("horizon")), name != "setup_bandit"
        raise ConfigError(
            "system prompt does not match the setup templates (arm list not found): the chat "
            "was rendered with other prompt templates than this reader's"
        )

    def _question(self, users: Sequence[str]) -> tuple[AnswerKind, int]:
        # The last user turn may be a format reminder: the question is then further up.
        for text in reversed(users):
            for answer, pattern in self._questions.items():
                matches = list(pattern.finditer(text))
                if matches:
                    return answer, int(matches[-1].group("round")) - 1
        raise ConfigError("no round question found in the chat's user turns")

    def _rounds_in(
        self, text: str, names: tuple[str, ...], patterns: Mapping[str, re.Pattern[str]]
    ) -> list[PastRound]:
        index = {n: i for i, n in enumerate(names)}
        out: list[PastRound] = []
        for key in ("feedback_action", "feedback_sampled", "line_action"):
            for m in patterns[key].finditer(text):
                t = int(m.group("round")) - 1
                out.append(
                    PastRound(t=t, arm=index[m.group("arm")], reward=float(m.group("reward")))
                )
        for key in ("feedback_full", "line_full"):
            for m in patterns[key].finditer(text):
                vector = _reward_vector(m.group("reward_list"), names)
                if vector is not None:
                    out.append(PastRound(t=int(m.group("round")) - 1, reward_vector=vector))
        return out

    def _from_summary(
        self,
        text: str,
        names: tuple[str, ...],
        patterns: Mapping[str, re.Pattern[str]],
        *,
        full_info: bool,
        gaussian: bool,
    ) -> dict[int, PastRound]:
        """Pseudo-rounds reproducing a summary's per-arm counts and means (order unknown)."""
        index = {n: i for i, n in enumerate(names)}
        if full_info:
            means = [0.0] * len(names)
            for m in patterns["summary_full"].finditer(text):
                means[index[m.group("arm")]] = float(m.group("mean"))
            header = self._summary_header.search(text)
            played = int(header.group("rounds")) if header else 0
            return {t: PastRound(t=t, reward_vector=tuple(means)) for t in range(played)}
        plays: list[list[float]] = [[] for _ in names]
        for m in patterns["summary_action"].finditer(text):
            count, mean = int(m.group("count")), float(m.group("mean"))
            if gaussian:
                plays[index[m.group("arm")]] = [mean] * count
            else:  # Bernoulli: the 2-decimal mean still pins the number of 1s down
                ones = round(mean * count)
                plays[index[m.group("arm")]] = [1.0] * ones + [0.0] * (count - ones)
        # Interleave the arms so no arm's plays all come first.
        rounds: dict[int, PastRound] = {}
        t = 0
        for k in range(max((len(p) for p in plays), default=0)):
            for arm, rewards in enumerate(plays):
                if k < len(rewards):
                    rounds[t] = PastRound(t=t, arm=arm, reward=rewards[k])
                    t += 1
        return rounds


def _reward_vector(listed: str, names: tuple[str, ...]) -> tuple[float, ...] | None:
    """`Red 0.5, Blue 1` (the renderer's reward list) → a vector in arm order, or None."""
    values: dict[str, float] = {}
    for item in listed.split(", "):
        name, _, number = item.rpartition(" ")
        if name not in names or not re.fullmatch(_NUMBER, number):
            return None
        values[name] = float(number)
    if len(values) != len(names):
        return None
    return tuple(values[n] for n in names)
