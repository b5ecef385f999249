"""Synthetic transcripts for pre-training the offline base model: a mixture of mediocre policies.

Every transcript is produced by the real text layer (`TextEpisode`, the packaged templates and the
caller's prompt factors), so the model learns exactly the chats it will later be asked. Each
episode is played by one policy drawn from a mixture of simple, mostly poor rules (uniform random,
least-tried round-robin, stick with the first pick, greedy after one pull each, explore-then-
commit). Each reply is one short sentence naming the rule's step ("Highest mean so far."), then
the answer line. The rules read only what the prompt shows (per-arm counts and displayed means),
so what they do is learnable from the prompt, and nothing is selected by regret: raising the
share of the good behaviours is left to RMFT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rmft_api.config import Config, EnvConfig, ParseConfig, PromptConfig
from rmft_api.envs.base import child_rng
from rmft_api.envs.scenarios import build_scenario, load_library
from rmft_api.envs.templates import load_templates
from rmft_api.envs.text import TextEpisode
from rmft_api.errors import ConfigError, StateError
from rmft_api.schema import Message

PolicyName = Literal["random", "least_tried", "stick", "greedy", "explore_commit"]

# Episode shares of each rule: mostly uninformed play, with a minority of greedy / explore-then-
# commit episodes so that good decisions exist in the model's repertoire for RMFT to up-weight.
DEFAULT_MIXTURE: Mapping[PolicyName, float] = {
    "random": 0.35,
    "least_tried": 0.20,
    "stick": 0.15,
    "greedy": 0.20,
    "explore_commit": 0.10,
}

_DATA_SALT = 0xB007  # keeps the bootstrap's scenario seeds apart from any run's


@dataclass(frozen=True)
class RoundView:
    """What a single-turn summarized prompt shows at round `t` (0-based)."""

    t: int
    horizon: int
    counts: np.ndarray  # pulls per arm
    means: np.ndarray  # displayed means (two decimals), 0 where untried
    names: tuple[str, ...]
    noun: str


@dataclass(frozen=True)
class Decision:
    arm: int
    reasoning: str


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> int:
    """A uniformly random index among the True entries (ties broken at random)."""
    return int(rng.choice(np.flatnonzero(candidates)))


def _untried(view: RoundView, rng: np.random.Generator) -> Decision | None:
    untried = view.counts == 0
    if not untried.any():
        return None
    arm = _pick(untried, rng)
    return Decision(arm, "Not tried yet.")


def _least_tried(view: RoundView, rng: np.random.Generator) -> Decision:
    first = _untried(view, rng)
    if first is not None:
        return first
    arm = _pick(view.counts == view.counts.min(), rng)
    return Decision(arm, "Tried the least.")


def _best_mean(view: RoundView, rng: np.random.Generator) -> Decision:
    tried = view.counts > 0
    top = np.where(tried, view.means, -np.inf)
    arm = _pick(top == top.max(), rng)
    return Decision(arm, "Highest mean so far.")


class MediocrePolicy:
    """One episode's rule; `decide` sees only the round view (plus the rule's own memory)."""

    def __init__(self, name: PolicyName, *, num_arms: int, rng: np.random.Generator) -> None:
        self.name = name
        self._rng = rng
        self._stick_arm = int(rng.integers(num_arms))
        self._explore_pulls = int(rng.integers(1, 3)) + 1  # explore-then-commit: 2 or 3 each
        self._committed: int | None = None

    def decide(self, view: RoundView) -> Decision:
        rng = self._rng
        if self.name == "random":
            arm = int(rng.integers(len(view.names)))
            return Decision(arm, f"Any {view.noun} will do, at random.")
        if self.name == "least_tried":
            return _least_tried(view, rng)
        if self.name == "stick":
            if view.t == 0:
                return Decision(self._stick_arm, "I start with one and keep it.")
            return Decision(self._stick_arm, "I keep my choice.")
        if self.name == "greedy":
            return _untried(view, rng) or _best_mean(view, rng)
        # explore_commit: every arm gets a few pulls, then the best-looking one for good.
        if self._committed is None and view.counts.min() < self._explore_pulls:
            return _least_tried(view, rng)
        if self._committed is None:
            self._committed = _best_mean(view, rng).arm
        return Decision(self._committed, "Best after exploring, so I stay.")


def format_reply(decision: Decision, names: Sequence[str]) -> str:
    """The assistant reply: the reasoning sentence, then the answer line the parser reads."""
    return f"{decision.reasoning}\nANSWER: {names[decision.arm]}"


@dataclass(frozen=True)
class EnvVariant:
    """One family of pre-training scenarios and its share of the episodes."""

    kind: Literal["mab", "ns"] = "mab"
    noise: Literal["bernoulli", "gaussian"] = "bernoulli"
    weight: float = 1.0


@dataclass(frozen=True)
class SyntheticChat:
    """One round of one synthetic episode: the chat the model is shown and the reply to learn."""

    messages: tuple[Message, ...]  # system, user
    reply: str
    policy: PolicyName
    episode: int  # index of the synthetic episode (its rounds share the system prompt)


def _round_view(episode: TextEpisode, noun: str) -> RoundView:
    k = episode.scenario.instance.num_arms
    counts, sums = np.zeros(k), np.zeros(k)
    for step in episode.steps:
        if step.action is not None:
            counts[step.action] += 1
            sums[step.action] += step.reward
    # The prompt shows means with two decimals: decide on what the model can read.
    means = np.round(np.divide(sums, counts, out=np.zeros(k), where=counts > 0), 2)
    return RoundView(
        t=episode.round_index,
        horizon=episode.scenario.instance.horizon,
        counts=counts,
        means=means,
        names=episode.scenario.context.arm_names,
        noun=noun,
    )


def _episode_config(
    base: Config, variant: EnvVariant, *, num_arms: int, horizon: int, gap: float
) -> Config:
    env = EnvConfig(
        kind=variant.kind,
        num_arms=num_arms,
        horizon=horizon,
        noise=variant.noise,
        means_mode="gap",
        gap=gap,
    )
    return base.model_copy(update={"env": env})


def synthetic_chats(
    *,
    seed: int,
    episodes: int,
    prompt: PromptConfig,
    arms: Sequence[int],
    horizons: Sequence[int],
    gaps: Sequence[float],
    variants: Sequence[EnvVariant] = (EnvVariant(),),
    mixture: Mapping[PolicyName, float] = DEFAULT_MIXTURE,
    on_episode: Callable[[PolicyName, float], None] | None = None,
) -> Iterator[SyntheticChat]:
    """Play `episodes` synthetic episodes and yield every round as a chat + reply.

    Deterministic in its arguments. Each reply is checked by the episode's own strict parser
    (it must be played as status "ok"), so the data never teaches a malformed answer.
    `on_episode(policy, regret)` is told each finished episode (for the data card only).
    """
    if prompt.answer == "distribution":
        raise ConfigError("the bootstrap model plays action answers; prompt.answer is distribution")
    names = list(mixture)
    shares = np.array([mixture[n] for n in names], dtype=np.float64)
    weights = np.array([v.weight for v in variants], dtype=np.float64)
    if shares.min() < 0 or shares.sum() <= 0 or weights.min() < 0 or weights.sum() <= 0:
        raise ConfigError("bootstrap mixture and variant weights must be ≥ 0 with a positive sum")
    base = Config(prompt=prompt, parse=ParseConfig(max_reprompts=0, fallback="abort"))
    templates = load_templates(prompt.templates_dir)
    nouns = {c.name: c.action_noun for c in load_library(prompt.templates_dir).values()}
    for index in range(episodes):
        rng = child_rng(seed, _DATA_SALT, index)
        variant = variants[int(rng.choice(len(variants), p=weights / weights.sum()))]
        cfg = _episode_config(
            base,
            variant,
            num_arms=int(rng.choice(arms)),
            horizon=int(rng.choice(horizons)),
            gap=float(rng.choice(gaps)),
        )
        scenario = build_scenario(
            cfg, split="train", index=index, run_seed=int(rng.integers(2**62))
        )
        name: PolicyName = names[int(rng.choice(len(names), p=shares / shares.sum()))]
        policy = MediocrePolicy(name, num_arms=scenario.instance.num_arms, rng=rng)
        episode = TextEpisode(
            scenario, prompt=cfg.prompt, parse=cfg.parse, rng=rng, templates=templates
        )
        noun = nouns[scenario.context.name]
        while not episode.done:
            messages = episode.next_messages()
            decision = policy.decide(_round_view(episode, noun))
            reply = format_reply(decision, scenario.context.arm_names)
            episode.submit(reply)
            if episode.steps[-1].status != "ok" or episode.steps[-1].action != decision.arm:
                raise StateError(f"synthetic reply was not parsed as played: {reply!r}")
            yield SyntheticChat(messages=tuple(messages), reply=reply, policy=name, episode=index)
        if on_episode is not None:
            on_episode(name, episode.regrets()[0])
