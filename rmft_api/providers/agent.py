"""A classic agent (UCB1, Thompson, Hedge, ...) answering in text, from the chat alone.

`agent/<name>` reads the chat back with `TranscriptReader` (arm names, horizon, the round asked,
every past round's arm and reward), replays that history into a fresh agent and answers
`<one line of reasoning>\\nANSWER: <arm>` (or the probability vector) in the exact answer format.
Nothing but the messages is needed, so the same policy works in-process and behind an HTTP
endpoint (the sandbox passes only messages).

Randomness: the fresh agent's generator is seeded from the provider seed, the chat's text and
the episode part of the request id (`<episode>/<round>/<attempt>`) when one is given. Replayed
rounds use only `update`, so the history, not the generator, decides the agent's state; the
generator decides the current round's draw alone. Over HTTP (no request ids) rollouts of one
scenario are therefore identical; in-process they differ per episode.

Exactness follows the transcript (see envs/transcript.py): exact for multi-turn chats and raw
single-turn history; approximate for summarized or windowed single-turn prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rmft_api.agents.base import BanditAgent, ExpertsAgent, sample_index
from rmft_api.agents.registry import agent_names, make_agent
from rmft_api.config import AgentsConfig
from rmft_api.envs.templates import load_templates
from rmft_api.envs.transcript import TranscriptReader, TranscriptView
from rmft_api.errors import ConfigError
from rmft_api.providers.scripted import (
    LOCAL_BATCH_SIZE,
    InProcessReplies,
    answer_text,
    chat_digest,
)
from rmft_api.schema import Message


class AgentProvider(InProcessReplies):
    """A named classic agent as a provider; `env_kind` picks bandit (mab/ns) or experts (fol)."""

    def __init__(
        self,
        spec: str,
        *,
        name: str,
        agents: AgentsConfig | None = None,
        env_kind: str | None = None,
        sigma: float | None = None,
        seed: int = 0,
        templates_dir: str | Path | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        self.seed = seed
        self.batch_size = LOCAL_BATCH_SIZE
        self.requests = 0
        self._agents = agents if agents is not None else AgentsConfig()
        self._env_kind = env_kind or "mab"
        self._sigma = sigma
        self._reader = TranscriptReader(load_templates(templates_dir))
        # Fail at construction, not at the first request: unknown names, and agents that need
        # hidden truth (the oracle), are configuration mistakes.
        if name.strip().lower() == "oracle":
            raise ConfigError(
                f"provider spec {spec!r}: the oracle needs the hidden means, which a chat does "
                "not reveal; use it only as a baseline (`rmft-api baselines`)"
            )
        make_agent(name, self._agents, env_kind=self._env_kind)

    def _fresh_agent(self, view: TranscriptView) -> BanditAgent | ExpertsAgent:
        if view.full_information:
            kind = "fol"
        else:
            kind = self._env_kind if self._env_kind in ("mab", "ns") else "mab"
        if kind != self._env_kind and self.name not in agent_names(kind):
            raise ConfigError(
                f"agent {self.name!r} does not play env kind {kind!r} (the chat's setup)"
            )
        return make_agent(
            self.name,
            self._agents,
            env_kind=kind,
            noise="gaussian" if view.gaussian else "bernoulli",
            sigma=self._sigma if view.gaussian else None,
        )

    def reply(self, chat: Sequence[Message], *, request_id: str | None = None) -> str:
        """The agent's reply to `chat`, after replaying the history the chat shows."""
        view = self._reader.read(chat)
        episode = request_id.split("/", 1)[0] if request_id is not None else ""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, chat_digest(chat, episode)]))
        agent = self._fresh_agent(view)
        k = len(view.arm_names)
        agent.reset(k, view.horizon, rng)
        t = view.round_index
        if isinstance(agent, ExpertsAgent) and not isinstance(agent, BanditAgent):
            for past in view.history:
                if past.reward_vector is not None:
                    agent.update(past.t, np.asarray(past.reward_vector, dtype=np.float64))
            policy = agent.policy(t)
            reasoning = f"{agent.name}: weights after {len(view.history)} rounds of rewards."
            if view.answer == "action":
                return answer_text(view, sample_index(policy, rng), reasoning=reasoning)
            return answer_text(view, [float(p) for p in policy], reasoning=reasoning)
        counts, sums = np.zeros(k), np.zeros(k)
        for past in view.history:
            if past.arm is not None and past.reward is not None:
                agent.update(past.t, past.arm, past.reward)
                counts[past.arm] += 1
                sums[past.arm] += past.reward
        if view.answer == "distribution":
            policy = agent.policy(t)
            reasoning = f"{agent.name}: my current probabilities after {len(view.history)} rounds."
            return answer_text(view, [float(p) for p in policy], reasoning=reasoning)
        arm = agent.act(t)
        if counts[arm] > 0:
            seen = f"{int(counts[arm])} plays so far, mean {sums[arm] / counts[arm]:.2f}"
        else:
            seen = "not tried yet"
        name = view.arm_names[arm]
        return answer_text(view, arm, reasoning=f"{agent.name}: {name} ({seen}).")
