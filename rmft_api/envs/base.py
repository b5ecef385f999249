"""The numeric core shared by every environment: instances with hidden truth and pre-drawn rewards.

Every instance is built from a scenario seed only, and its whole reward table is drawn up front
(common random numbers): the LLM and every classic agent facing the same scenario see the same
draws, and nothing an agent does (a parse failure, a retry) consumes the environment's randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

EnvKind = Literal["mab", "fol", "ns"]
# validation: a third stream for choosing settings without looking at the held-out figures.
Split = Literal["train", "heldout", "validation"]

# Distinct integers mixed into the seed sequence so the splits' scenario seeds never collide.
_SPLIT_SALT: dict[str, int] = {"train": 0x7A11, "heldout": 0x4E1D, "validation": 0x5A1D}


def scenario_seed(run_seed: int, split: Split, index: int) -> int:
    """The seed of scenario `index` of `split`; the splits' streams are disjoint by salt."""
    seq = np.random.SeedSequence([run_seed, _SPLIT_SALT[split], index])
    return int(seq.generate_state(1, dtype=np.uint64)[0])


def child_rng(*key: int) -> np.random.Generator:
    """A generator for one (run_seed, iteration, scenario, rollout, ...) key; no global RNG."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


@dataclass(frozen=True, eq=False)
class BanditInstance:
    """A (possibly non-stationary) K-armed bandit with its full reward table drawn up front.

    `means[t, a]` is the hidden expected reward of arm a at round t (rows are equal when
    stationary); `rewards[t, a]` is what pulling arm a at round t pays.
    """

    means: FloatArray
    rewards: FloatArray
    noise: Literal["bernoulli", "gaussian"]
    sigma: float = 0.0
    nonstationary: bool = False

    @property
    def num_arms(self) -> int:
        return int(self.means.shape[1])

    @property
    def horizon(self) -> int:
        return int(self.means.shape[0])

    def best_mean(self, t: int) -> float:
        return float(self.means[t].max())

    def best_arm(self, t: int) -> int:
        return int(self.means[t].argmax())

    def variation_budget(self) -> float:
        """V_T = Σ_{t≥2} max_a |μ_t(a) − μ_{t−1}(a)| (0 for a stationary bandit)."""
        if self.horizon < 2:
            return 0.0
        return float(np.abs(np.diff(self.means, axis=0)).max(axis=1).sum())


@dataclass(frozen=True, eq=False)
class FullInfoInstance:
    """Full-information online learning (experts): each round a whole reward vector in [0, 1]^K.

    Oblivious families read `table[t]`. The adaptive adversary computes round t's vector from the
    learner's past policies (and, for tie-breaking noise, `table[t]`), so it takes them.
    """

    family: str
    table: FloatArray
    adaptive: bool = False

    @property
    def num_arms(self) -> int:
        return int(self.table.shape[1])

    @property
    def horizon(self) -> int:
        return int(self.table.shape[0])

    def reward_vector(self, t: int, past_policies: FloatArray) -> FloatArray:
        """Round t's reward vector given the learner's policies for rounds 0..t-1 (shape (t, K))."""
        if not self.adaptive:
            return np.asarray(self.table[t], dtype=np.float64)
        from rmft_api.envs.online import adaptive_reward_vector

        return adaptive_reward_vector(self, t, past_policies)


Instance = BanditInstance | FullInfoInstance
