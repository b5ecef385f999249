"""A natural-language episode: prompts out, replies in, every step scored from hidden truth.

The rollout engine drives it: `next_messages()` is the exact chat the model must answer now,
`submit(reply)` parses the reply strictly and either re-prompts (format reminder), falls back
per `ParseConfig`, or plays the answer and advances. Rewards are read from the pre-drawn table
(or the full-information instance), so a parse failure never shifts later draws: only the
episode's own `rng` is consumed, by random fallbacks and by sampling an arm from a distribution
answer on a bandit.

Fallback semantics (every affected step is tagged in `Step.status`):
- random: a uniformly random arm (action answers) or a Dirichlet(1) random vector (distribution).
- repeat_last: the last played choice; in round 1 (nothing to repeat) it acts as random.
- forfeit: nothing is played: realised reward 0, and for expected regret the round earns 0 too
  (regret += max_a μ_t(a), or max_a r_t(a) for full information). A forfeited FOL round counts
  as the zero vector for the adaptive adversary.
- abort: `ParseAbortError`; the episode is done and `to_episode` marks it aborted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rmft_api.config import ParseConfig, PromptConfig
from rmft_api.envs.base import BanditInstance
from rmft_api.envs.parsing import ParseResult, parse_action, parse_distribution
from rmft_api.envs.render import AnswerKind, PromptRenderer
from rmft_api.envs.scenarios import Scenario
from rmft_api.envs.templates import TemplateSet, load_templates
from rmft_api.errors import ConfigError, ParseAbortError, StateError
from rmft_api.regret import full_info_regret_curve, policy_regret_steps, realised_regret
from rmft_api.schema import Attempt, Episode, EpisodeStatus, Message, ParseStatus, Step, Usage

# One arm index (action answers), a probability vector (distribution answers), or None (forfeit).
Choice = int | tuple[float, ...] | None


class TextEpisode:
    """One episode of a scenario played in words, round by round."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        prompt: PromptConfig,
        parse: ParseConfig,
        rng: np.random.Generator,
        templates: TemplateSet | None = None,
    ) -> None:
        instance = scenario.instance
        if len(scenario.context.arm_names) != instance.num_arms:
            raise ConfigError(
                f"scenario {scenario.scenario_id}: {len(scenario.context.arm_names)} arm names "
                f"for {instance.num_arms} arms"
            )
        self._scenario = scenario
        self._prompt = prompt
        self._parse = parse
        self._rng = rng
        tpl = templates if templates is not None else load_templates(prompt.templates_dir)
        self._renderer = PromptRenderer(scenario, prompt=prompt, templates=tpl)
        self._hash = self._renderer.template_hash()
        self._names = scenario.context.arm_names
        self._steps: list[Step] = []
        # Policies played per round (one-hot for actions, zeros when forfeited): regret and the
        # adaptive adversary read them.
        self._policies = np.zeros((instance.horizon, instance.num_arms), dtype=np.float64)
        self._chat: list[Message] = [Message(role="system", content=self.system_prompt)]
        self._attempts: list[Attempt] = []
        self._pending: list[Message] = []  # this round's rejected replies and reminders
        self._abort_error: str | None = None
        self._round_prompt = self._renderer.user_turn(0, [])
        self._reply_prefix = self._renderer.reply_prefix()

    # ------------------------------------------------------------ read-only views

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @property
    def answer_kind(self) -> AnswerKind:
        return self._renderer.answer

    @property
    def system_prompt(self) -> str:
        return self._renderer.system_prompt

    @property
    def template_hash(self) -> str:
        """sha256 (16 hex) of the templates this episode's factors use, and those factors."""
        return self._hash

    @property
    def renderer(self) -> PromptRenderer:
        return self._renderer

    @property
    def done(self) -> bool:
        return self._abort_error is not None or len(self._steps) >= self._scenario.instance.horizon

    @property
    def round_index(self) -> int:
        """The 0-based round now being asked (= number of finished steps)."""
        return len(self._steps)

    @property
    def attempt_index(self) -> int:
        """The 0-based attempt within the current round (> 0 after a format reminder)."""
        return len(self._attempts)

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps)

    # ------------------------------------------------------------ the loop

    def next_messages(self) -> list[Message]:
        """The exact chat the model must answer now."""
        if self.done:
            raise StateError(f"episode of {self._scenario.scenario_id} is finished")
        ask = Message(role="user", content=self._round_prompt)
        # prompt.reply_prefix: an unfinished assistant turn the model continues.
        prefix = self._reply_prefix
        start = [Message(role="assistant", content=prefix)] if prefix else []
        if self._prompt.transcript == "multi_turn":
            return [*self._chat, ask, *self._pending, *start]
        return [self._chat[0], ask, *self._pending, *start]

    def _parse_reply(self, reply: str) -> ParseResult[int] | ParseResult[tuple[float, ...]]:
        if self.answer_kind == "action":
            return parse_action(reply, self._names, answer_line=self._parse.answer_line)
        return parse_distribution(reply, self._names, tolerance=self._parse.distribution_tolerance)

    def submit(self, reply: str, *, truncated: bool = False) -> None:
        """Take the model's reply to `next_messages()`: play it, re-prompt, or fall back.

        truncated: the reply hit max_tokens; recorded on the attempt, parsed all the same.
        With `prompt.reply_prefix`, `reply` is the continuation: the prefix is put in front.
        """
        if self.done:
            raise StateError(f"episode of {self._scenario.scenario_id} is finished")
        reply = self._reply_prefix + reply
        result = self._parse_reply(reply)
        if result.ok and result.value is not None:
            self._attempts.append(Attempt(reply=reply, truncated=truncated))
            status: ParseStatus = "ok" if len(self._attempts) == 1 else "reprompted"
            self._play(
                result.value,
                status=status,
                ambiguous=result.ambiguous,
                lenient=result.lenient,
                reply=reply,
            )
            return
        error = result.error or "invalid answer"
        failed = Attempt(
            reply=reply, parse_error=error, parse_category=result.category, truncated=truncated
        )
        if len(self._attempts) < self._parse.max_reprompts:
            reminder = self._renderer.reminder(error)
            self._attempts.append(failed.model_copy(update={"reminder": reminder}))
            self._pending += [
                Message(role="assistant", content=reply),
                Message(role="user", content=reminder),
            ]
            return
        self._attempts.append(failed)
        self._fall_back(error, reply=reply)

    def _fall_back(self, error: str, *, reply: str) -> None:
        policy = self._parse.fallback
        if policy == "abort":
            self._abort_error = (
                f"round {self.round_index + 1} of {self._scenario.scenario_id}: no valid answer "
                f"after {len(self._attempts)} attempt(s): {error}"
            )
            raise ParseAbortError(self._abort_error)
        if policy == "forfeit":
            self._play(None, status="forfeit", reply=reply)
            return
        previous = self._last_choice() if policy == "repeat_last" else None
        if previous is not None:
            self._play(previous, status="fallback_repeat", reply=reply)
        else:
            self._play(self._random_choice(), status="fallback_random", reply=reply)

    def _last_choice(self) -> Choice:
        for step in reversed(self._steps):
            if self.answer_kind == "distribution" and step.policy is not None:
                return tuple(step.policy)
            if self.answer_kind == "action" and step.action is not None:
                return step.action
        return None

    def _random_choice(self) -> Choice:
        k = self._scenario.instance.num_arms
        if self.answer_kind == "action":
            return int(self._rng.integers(k))
        return tuple(float(p) for p in self._rng.dirichlet(np.ones(k)))

    def _play(
        self,
        choice: Choice,
        *,
        status: ParseStatus,
        reply: str,
        ambiguous: bool = False,
        lenient: bool = False,
    ) -> None:
        t = len(self._steps)
        instance = self._scenario.instance
        k = instance.num_arms
        if choice is None:
            pi = np.zeros(k)
        elif isinstance(choice, int):
            pi = np.eye(k)[choice]
        else:
            pi = np.asarray(choice, dtype=np.float64)
        self._policies[t] = pi
        action = choice if isinstance(choice, int) else None
        reward_vector: list[float] | None = None
        if isinstance(instance, BanditInstance):
            means = instance.means[t]
            best = float(means.max())
            expected = float(pi @ means)
            if isinstance(choice, tuple):
                # The episode's rng draws the arm: the environment's table is only read.
                action = int(self._rng.choice(k, p=pi))
            reward = 0.0 if action is None else float(instance.rewards[t, action])
            policy = list(choice) if isinstance(choice, tuple) else None
        else:
            vector = instance.reward_vector(t, self._policies[:t])
            reward_vector = [float(x) for x in vector]
            best = float(vector.max())
            reward = expected = float(pi @ vector)
            policy = None if choice is None else [float(p) for p in pi]
        step = Step(
            t=t,
            prompt=self._round_prompt,
            attempts=list(self._attempts),
            action=action,
            policy=policy,
            status=status,
            ambiguous=ambiguous,
            lenient=lenient,
            reward=reward,
            reward_vector=reward_vector,
            expected_reward=expected,
            best_expected_reward=best,
        )
        step = step.model_copy(update={"feedback": self._renderer.feedback(step)})
        self._steps.append(step)
        if self._prompt.transcript == "multi_turn":
            self._chat += [
                Message(role="user", content=self._round_prompt),
                *self._pending,
                Message(role="assistant", content=reply),
            ]
        self._attempts, self._pending = [], []
        if not self.done:
            self._round_prompt = self._renderer.user_turn(t + 1, self._steps)

    # ------------------------------------------------------------ scoring and records

    def regrets(self) -> tuple[float, float]:
        """(expected regret, realised regret) over the rounds played so far."""
        n = len(self._steps)
        if n == 0:
            return 0.0, 0.0
        instance = self._scenario.instance
        policies = self._policies[:n]
        if isinstance(instance, BanditInstance):
            means = instance.means[:n]
            expected = float(policy_regret_steps(means, policies).sum())
            rewards = np.array([s.reward for s in self._steps])
            return expected, float(realised_regret(means, rewards))
        vectors = np.array([s.reward_vector for s in self._steps], dtype=np.float64)
        # Full information: the reward earned is <π_t, r_t> exactly, so both regrets agree.
        static = float(full_info_regret_curve(policies, vectors)[-1])
        return static, static

    def to_episode(
        self,
        *,
        episode_id: str,
        iteration: int,
        rollout: int,
        policy_spec: str,
        usage: Usage,
        status: EpisodeStatus = "complete",
        error: str | None = None,
    ) -> Episode:
        """The finished (or, with status error/aborted, partial) episode as a record."""
        if self._abort_error is not None and status == "complete":
            status, error = "aborted", error or self._abort_error
        if status == "complete" and not self.done:
            raise StateError(
                f"episode {episode_id}: {len(self._steps)} of "
                f"{self._scenario.instance.horizon} rounds played; not complete"
            )
        regret, realised = self.regrets()
        sc = self._scenario
        return Episode(
            episode_id=episode_id,
            iteration=iteration,
            scenario_id=sc.scenario_id,
            scenario_index=sc.index,
            rollout=rollout,
            seed=sc.seed,
            split=sc.split,
            env=sc.env_kind,
            num_arms=sc.instance.num_arms,
            horizon=sc.instance.horizon,
            context=sc.context.name,
            arm_names=list(self._names),
            policy_spec=policy_spec,
            template_hash=self._hash,
            transcript=self._prompt.transcript,
            system_prompt=self.system_prompt,
            steps=list(self._steps),
            status=status,
            error=error,
            regret=regret,
            realised_regret=realised,
            usage=usage,
        )


def _round_messages(step: Step) -> list[Message]:
    """The user turn of a round and every reply to it; only the played valid reply is weighted 1."""
    out = [Message(role="user", content=step.prompt)]
    for attempt in step.attempts:
        trained = attempt.parse_error is None and step.valid
        out.append(Message(role="assistant", content=attempt.reply, weight=1 if trained else 0))
        if attempt.reminder is not None:
            out.append(Message(role="user", content=attempt.reminder))
    return out


def episode_chats(episode: Episode) -> list[list[Message]]:
    """The chats the model answered, rebuilt from the record, with per-message weights.

    multi_turn: one chat (system, then every round's user turn and replies, rejected replies and
    format reminders included). single_turn: one [system, user, replies...] chat per round.
    Rejected replies and replies of fallback rounds carry weight 0 (context only); the reply
    that was played as the model's own answer carries weight 1 (ambiguous ones too: check
    `Step.ambiguous` to exclude them).
    """
    system = Message(role="system", content=episode.system_prompt)
    if episode.transcript == "single_turn":
        return [[system, *_round_messages(step)] for step in episode.steps]
    chat = [system]
    for step in episode.steps:
        chat += _round_messages(step)
    return [chat]


def scripted_reply(episode: TextEpisode, *, t: int) -> str:
    """A deterministic well-formed reply for round t: round-robin arm or the uniform vector."""
    names: Sequence[str] = episode.scenario.context.arm_names
    if episode.answer_kind == "action":
        return f"ANSWER: {names[t % len(names)]}"
    share = 1.0 / len(names)
    body = ", ".join(f'"{n}": {share:.4g}' for n in names)
    return "ANSWER: {" + body + "}"
