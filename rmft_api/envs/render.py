"""Words of an episode: the system prompt, each round's user turn, feedback and reminders.

One `PromptRenderer` per episode picks the templates that the config factors call for (and only
those: their texts plus the factors make the template hash) and fills them from the scenario's
context and the steps played so far. It never sees hidden truth beyond what a step revealed.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Literal

import numpy as np

from rmft_api.config import PromptConfig
from rmft_api.envs.base import BanditInstance, EnvKind
from rmft_api.envs.scenarios import Scenario
from rmft_api.envs.templates import TemplateSet
from rmft_api.schema import Step

AnswerKind = Literal["action", "distribution"]


def answer_kind(prompt: PromptConfig, env_kind: EnvKind) -> AnswerKind:
    """`auto` → one action for bandits, a probability vector for full information."""
    if prompt.answer != "auto":
        return prompt.answer
    return "distribution" if env_kind == "fol" else "action"


def fmt_number(x: float) -> str:
    """Compact: whole numbers without decimals (0/1 Bernoulli rewards), else two decimals."""
    value = float(x)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.2f}"


class PromptRenderer:
    """Renders every text of one episode from its scenario, prompt factors and templates."""

    def __init__(self, scenario: Scenario, *, prompt: PromptConfig, templates: TemplateSet) -> None:
        self._scenario = scenario
        self._prompt = prompt
        self._templates = templates
        self.answer: AnswerKind = answer_kind(prompt, scenario.env_kind)
        self._bandit = isinstance(scenario.instance, BanditInstance)
        ctx = scenario.context
        self._names = ctx.arm_names
        self._words = {"action_noun": ctx.action_noun, "action_plural": ctx.action_plural}
        self._used: set[str] = set()
        self.system_prompt = self._system()

    # ------------------------------------------------------------ bookkeeping

    def _render(self, name: str, **values: object) -> str:
        self._used.add(name)
        return self._templates.render(name, **self._words, **values)

    def template_names(self) -> set[str]:
        """Every template this episode's factors can use (not only those rendered so far)."""
        names = {"system", f"framing_{self._prompt.framing}", f"reminder_{self.answer}"}
        style = "reasoning" if self._prompt.reasoning else "direct"
        names |= {f"answer_{self.answer}_{style}", f"question_{self.answer}"}
        names |= {"note_fallback_random", "note_fallback_repeat", "note_forfeit"}
        instance = self._scenario.instance
        if isinstance(instance, BanditInstance):
            names |= {"setup_bandit", f"scale_{instance.noise}"}
            names |= {"note_nonstationary"} if instance.nonstationary else set()
            names |= {"feedback_action" if self.answer == "action" else "feedback_sampled"}
        else:
            names |= {"setup_full" if self.answer == "distribution" else "setup_full_action"}
            names |= {"feedback_full"}
        history = self._prompt.history
        if history == "summarized":
            names |= {"summary_header"}
            names |= {"summary_action", "summary_untried"} if self._bandit else {"summary_full"}
        elif self._prompt.transcript == "single_turn":
            names |= {f"history_{history}", "line_forfeit"}
            names |= {"line_action"} if self._bandit else {"line_full"}
        if self._prompt.transcript == "single_turn":
            names |= {"history_empty"}
        return names

    @property
    def rendered_templates(self) -> frozenset[str]:
        """The templates rendered so far (always a subset of `template_names()`)."""
        return frozenset(self._used)

    def factors(self) -> dict[str, object]:
        """The config factors that shape the words (part of the template hash)."""
        instance = self._scenario.instance
        out: dict[str, object] = {
            "env": self._scenario.env_kind,
            "answer": self.answer,
            "history": self._prompt.history,
            "reasoning": self._prompt.reasoning,
            "framing": self._prompt.framing,
            "transcript": self._prompt.transcript,
        }
        if self._prompt.history == "window":
            out["window"] = self._prompt.window
        if self._prompt.reply_prefix:
            out["reply_prefix"] = self._prompt.reply_prefix
        if isinstance(instance, BanditInstance):
            out["noise"] = instance.noise
            out["nonstationary"] = instance.nonstationary
        return out

    def template_hash(self) -> str:
        return self._templates.hash_of(self.template_names(), self.factors())

    # ------------------------------------------------------------ fixed texts

    def _system(self) -> str:
        ctx = self._scenario.context
        instance = self._scenario.instance
        common = {
            "num_actions": len(self._names),
            "arm_list": ", ".join(self._names),
            "reward_description": ctx.reward_description,
            "horizon": instance.horizon,
        }
        if isinstance(instance, BanditInstance):
            note = self._render("note_nonstationary") if instance.nonstationary else ""
            scale = self._render(f"scale_{instance.noise}")
            setup = self._render("setup_bandit", **common, reward_scale=scale, change_note=note)
        elif self.answer == "distribution":
            setup = self._render("setup_full", **common)
        else:
            setup = self._render("setup_full_action", **common)
        style = "reasoning" if self._prompt.reasoning else "direct"
        text = self._render(
            "system",
            description=ctx.description,
            setup=setup,
            framing=self._render(f"framing_{self._prompt.framing}"),
            answer_format=self._render(
                f"answer_{self.answer}_{style}", arm_list=common["arm_list"]
            ),
        )
        return _squeeze(text)

    def question(self, t: int) -> str:
        return self._render(
            f"question_{self.answer}",
            round=t + 1,
            horizon=self._horizon,
            arm_list=", ".join(self._names),
        )

    def reply_prefix(self) -> str:
        """`prompt.reply_prefix` with the scenario's words filled in ("" when unset)."""
        values = {**self._words, "arm_list": ", ".join(self._names)}
        return string.Template(self._prompt.reply_prefix).safe_substitute(values)

    def reminder(self, error: str) -> str:
        return self._render(f"reminder_{self.answer}", error=error, arm_list=", ".join(self._names))

    @property
    def _horizon(self) -> int:
        return self._scenario.instance.horizon

    # ------------------------------------------------------------ per-round texts

    def _reward_list(self, vector: Sequence[float]) -> str:
        return ", ".join(f"{n} {fmt_number(r)}" for n, r in zip(self._names, vector, strict=True))

    def feedback(self, step: Step) -> str:
        """What the model is told about round `step.t` (prefixed by a note after a fallback)."""
        rnd = step.t + 1
        notes = {
            "fallback_random": "note_fallback_random",
            "fallback_repeat": "note_fallback_repeat",
            "forfeit": "note_forfeit",
        }
        parts = [self._render(notes[step.status], round=rnd)] if step.status in notes else []
        if step.reward_vector is not None:
            rewards = self._reward_list(step.reward_vector)
            earned = fmt_number(step.reward)
            parts.append(
                self._render("feedback_full", round=rnd, reward_list=rewards, reward=earned)
            )
        elif step.action is not None:
            name = "feedback_action" if self.answer == "action" else "feedback_sampled"
            arm = self._names[step.action]
            parts.append(self._render(name, round=rnd, arm=arm, reward=fmt_number(step.reward)))
        return " ".join(parts)

    def _line(self, step: Step) -> str:
        rnd = step.t + 1
        if step.reward_vector is not None:
            rewards = self._reward_list(step.reward_vector)
            return self._render(
                "line_full", round=rnd, reward_list=rewards, reward=fmt_number(step.reward)
            )
        if step.action is None:
            return self._render("line_forfeit", round=rnd)
        arm = self._names[step.action]
        return self._render("line_action", round=rnd, arm=arm, reward=fmt_number(step.reward))

    def _summary(self, steps: Sequence[Step]) -> str:
        lines = [self._render("summary_header", rounds=len(steps))]
        k = len(self._names)
        if self._bandit:
            counts, sums = np.zeros(k), np.zeros(k)
            for step in steps:
                if step.action is not None:
                    counts[step.action] += 1
                    sums[step.action] += step.reward
            for a, name in enumerate(self._names):
                if counts[a] == 0:
                    lines.append(self._render("summary_untried", arm=name))
                else:
                    mean = f"{sums[a] / counts[a]:.2f}"
                    lines.append(
                        self._render("summary_action", arm=name, count=int(counts[a]), mean=mean)
                    )
        else:
            totals = np.zeros(k)
            for step in steps:
                if step.reward_vector is not None:
                    totals += np.asarray(step.reward_vector)
            for a, name in enumerate(self._names):
                mean = f"{totals[a] / max(len(steps), 1):.2f}"
                lines.append(
                    self._render("summary_full", arm=name, total=f"{totals[a]:.2f}", mean=mean)
                )
        # One line: the summary is repeated every round, so it must stay short.
        return lines[0] + " " + "; ".join(lines[1:])

    def history(self, steps: Sequence[Step]) -> str:
        """The history block of a single-turn prompt (raw, window or summarized)."""
        if not steps:
            return self._render("history_empty")
        mode = self._prompt.history
        if mode == "summarized":
            return self._summary(steps)
        shown = steps if mode == "raw" else steps[-self._prompt.window :]
        header = self._render(f"history_{mode}", count=len(shown))
        return "\n".join([header, *(self._line(s) for s in shown)])

    def user_turn(self, t: int, steps: Sequence[Step]) -> str:
        """The user message asking round t, given the steps of rounds 0..t-1."""
        if self._prompt.transcript == "single_turn":
            parts = [self.history(steps), self.question(t)]
        else:
            parts = [self.feedback(steps[-1])] if steps else []
            if steps and self._prompt.history == "summarized":
                parts.append(self._summary(steps))
            parts.append(self.question(t))
        return "\n".join(p for p in parts if p)


def _squeeze(text: str) -> str:
    """Drop blank lines left by empty parts (e.g. neutral framing) and trailing spaces."""
    return "\n".join(line.rstrip() for line in text.split("\n") if line.strip())
