"""Scenarios and trajectories of the numeric policy: sampling, and exact regret from hidden truth.

A trajectory is one episode of the model on one scenario. The L rollouts of a scenario differ
by exploration noise that is fixed for the whole episode: rollout r > 0 adds a random linear
function of the input features, ⟨w_r, x_t(a)⟩ with w_r ~ N(0, σ² I), to every action's logit
(shared by all actions, so the policy stays permutation-equivariant) and divides by a per-rollout
temperature; rollout 0 is the model itself. Episode-long noise changes the whole strategy (how
strongly to follow the leader, how long to explore), which is what trajectory-level regret can
tell apart; independent per-round noise would mostly average out over the episode.

Full information plays the (perturbed) π_t itself: regret max_a Σ_t r_t(a) − Σ_t ⟨π_t, r_t⟩ on
the pre-drawn vectors, and training is cross-entropy to the kept π_t. Bandits pull a_t ~ π_t; the
regret is the expected (pseudo-)regret of the pulled arms, Σ_t (μ* − μ_{a_t}) — never the realised
reward, which favours lucky greedy runs — and training is maximum likelihood of the kept actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from rmft_api import regret
from rmft_api.config import EnvConfig
from rmft_api.envs.base import BanditInstance, FullInfoInstance, Instance, Split, scenario_seed
from rmft_api.envs.factory import make_instance
from rmft_api.envs.online import adaptive_reward_vector
from rmft_api.numeric.config import NumericConfig
from rmft_api.numeric.features import fol_token_features, mab_token_features
from rmft_api.numeric.model import PolicyTransformer

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Scenario:
    """One environment instance: `index` is unique within its split, `group` its family/noise,
    `seed` the scenario seed it was drawn from (checked disjoint across splits and sets)."""

    index: int
    group: str
    instance: Instance
    seed: int


def env_config(cfg: NumericConfig, *, group: str, num_arms: int, horizon: int) -> EnvConfig:
    """The foundation's EnvConfig of one numeric scenario (group = FOL family or MAB noise)."""
    if cfg.env == "fol":
        return EnvConfig.model_validate(
            {"kind": "fol", "family": group, "num_arms": num_arms, "horizon": horizon}
        )
    return EnvConfig.model_validate(
        {
            "kind": "mab",
            "num_arms": num_arms,
            "horizon": horizon,
            "means_mode": "gap",
            "gap": cfg.gap,
            "noise": group,
            "sigma": cfg.sigma,
        }
    )


def groups_of(cfg: NumericConfig) -> list[str]:
    return list(cfg.families) if cfg.env == "fol" else list(cfg.noises)


def make_scenarios(
    cfg: NumericConfig,
    *,
    split: Split,
    first_index: int,
    count: int,
    horizon: int,
    arms: list[int],
) -> list[Scenario]:
    """`count` scenarios; groups and K cycle with the index so every mix is balanced."""
    groups = groups_of(cfg)
    out: list[Scenario] = []
    for i in range(first_index, first_index + count):
        group = groups[i % len(groups)]
        k = arms[(i // len(groups)) % len(arms)]
        env = env_config(cfg, group=group, num_arms=k, horizon=horizon)
        seed = scenario_seed(cfg.seed, split, i)
        out.append(Scenario(i, group, make_instance(env, seed), seed))
    return out


@dataclass(frozen=True)
class Trajectories:
    """N episodes of one shape (K, T), rows scenario-major.

    `observations` is what the model saw: FOL reward vectors (N, T, K) or the bandit's realised
    rewards (N, T). `policies` (N, T, K) is what was played (FOL) or sampled from (bandits);
    `actions` (N, T) the pulled arms (bandits; argmax π_t for FOL, informational only).
    `regret_curve` (N, T) is R_1..R_T per episode from the hidden truth.
    """

    scenario: IntArray
    rollout: IntArray
    actions: IntArray
    observations: FloatArray
    policies: FloatArray
    regret_curve: FloatArray

    @property
    def full_info(self) -> bool:
        return self.observations.ndim == 3

    @property
    def final_regret(self) -> FloatArray:
        return self.regret_curve[:, -1]

    def targets(self) -> FloatArray:
        """What training imitates: the played π_t (FOL) or the one-hot pulled arm (bandits)."""
        if self.full_info:
            return self.policies
        return np.asarray(np.eye(self.policies.shape[-1])[self.actions], dtype=np.float64)

    def subset(self, rows: IntArray) -> Trajectories:
        return Trajectories(
            self.scenario[rows],
            self.rollout[rows],
            self.actions[rows],
            self.observations[rows],
            self.policies[rows],
            self.regret_curve[rows],
        )


def _sample(probs: FloatArray, rng: np.random.Generator) -> IntArray:
    """One inverse-CDF draw per row of (B, K) probabilities."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(size=(probs.shape[0], 1)) * cdf[:, -1:]
    picked = (cdf <= u).sum(axis=1)
    return np.asarray(np.minimum(picked, probs.shape[1] - 1), dtype=np.int64)


class _Explorer:
    """Per-rollout, episode-long perturbation of the model's logits (see the module docstring)."""

    def __init__(
        self,
        *,
        rollouts: int,
        scenarios: int,
        temperatures: list[float],
        noise: float,
        num_features: int,
        rng: np.random.Generator,
    ) -> None:
        index = np.tile(np.arange(rollouts), scenarios)
        self.temps = np.array([temperatures[r % len(temperatures)] for r in index])
        self.weights = noise * rng.standard_normal((index.size, num_features))
        self.temps[index == 0] = 1.0
        self.weights[index == 0] = 0.0

    def policy(self, log_probs: torch.Tensor, features: torch.Tensor) -> FloatArray:
        """(B, K) probabilities from the model's log-probs and this round's features (B, K, F)."""
        shift = np.einsum("bkf,bf->bk", features.double().numpy(), self.weights)
        logits = (log_probs.double().numpy() + shift) / self.temps[:, None]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return np.asarray(p / p.sum(axis=1, keepdims=True), dtype=np.float64)


@torch.no_grad()
def rollout(
    model: PolicyTransformer,
    scenarios: list[Scenario],
    *,
    rollouts: int = 1,
    temperatures: tuple[float, ...] | list[float] = (1.0,),
    noise: float = 0.0,
    rng: np.random.Generator,
) -> Trajectories:
    """Play every scenario `rollouts` times (rows scenario-major); all scenarios share (K, T).

    Rollout 0 of each scenario is the model as is (the evaluation setting with `rollouts=1`);
    the others explore with `noise` and `temperatures` (cycled).
    """
    instances = [s.instance for s in scenarios for _ in range(rollouts)]
    shapes = {(i.num_arms, i.horizon) for i in instances}
    if len(shapes) != 1:
        raise ValueError(f"rollout needs scenarios of one shape (K, T), got {sorted(shapes)}")
    explorer = _Explorer(
        rollouts=rollouts,
        scenarios=len(scenarios),
        temperatures=list(temperatures),
        noise=noise,
        num_features=model.embed.in_features,
        rng=rng,
    )
    scenario_ids = np.repeat(np.array([s.index for s in scenarios], dtype=np.int64), rollouts)
    rollout_ids = np.tile(np.arange(rollouts, dtype=np.int64), len(scenarios))
    model.eval()
    if isinstance(instances[0], FullInfoInstance):
        fol = [i for i in instances if isinstance(i, FullInfoInstance)]
        actions, obs, policies, curve = _play_fol(model, fol, explorer)
    else:
        bandits = [i for i in instances if isinstance(i, BanditInstance)]
        actions, obs, policies, curve = _play_mab(model, bandits, explorer, rng=rng)
    return Trajectories(scenario_ids, rollout_ids, actions, obs, policies, curve)


def _play_fol(
    model: PolicyTransformer, instances: list[FullInfoInstance], explorer: _Explorer
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    b, horizon, k = len(instances), instances[0].horizon, instances[0].num_arms
    tables = np.stack([i.table for i in instances])
    adaptive = [j for j, i in enumerate(instances) if i.adaptive]
    vectors = np.zeros((b, horizon, k))
    policies = np.zeros((b, horizon, k))
    last = torch.zeros(b, k)
    cumulative = torch.zeros(b, k)
    cache = None
    for t in range(horizon):
        feats = fol_token_features(last, cumulative, torch.tensor(t), horizon=horizon)
        log_probs, cache = model.step(feats, cache)
        policies[:, t] = explorer.policy(log_probs, feats)
        vectors[:, t] = tables[:, t]
        for j in adaptive:  # the adaptive adversary reacts to the policies played so far
            vectors[j, t] = adaptive_reward_vector(instances[j], t, policies[j, :t])
        last = torch.from_numpy(vectors[:, t]).float()
        cumulative = cumulative + last
    curve = regret.full_info_regret_curve(policies, vectors)
    return policies.argmax(axis=2), vectors, policies, curve


def _play_mab(
    model: PolicyTransformer,
    instances: list[BanditInstance],
    explorer: _Explorer,
    *,
    rng: np.random.Generator,
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    b, horizon, k = len(instances), instances[0].horizon, instances[0].num_arms
    means = np.stack([i.means for i in instances])
    tables = np.stack([i.rewards for i in instances])
    rows = np.arange(b)
    policies = np.zeros((b, horizon, k))
    actions = np.zeros((b, horizon), dtype=np.int64)
    rewards = np.zeros((b, horizon))
    chosen = torch.zeros(b, k)
    reward = torch.zeros(b, 1)
    counts = torch.zeros(b, k)
    sums = torch.zeros(b, k)
    cache = None
    for t in range(horizon):
        feats = mab_token_features(chosen, reward, counts, sums, torch.tensor(t), horizon=horizon)
        log_probs, cache = model.step(feats, cache)
        policies[:, t] = explorer.policy(log_probs, feats)
        actions[:, t] = _sample(policies[:, t], rng)
        rewards[:, t] = tables[rows, t, actions[:, t]]
        chosen = torch.nn.functional.one_hot(torch.from_numpy(actions[:, t]), k).float()
        reward = torch.from_numpy(rewards[:, t]).float().unsqueeze(-1)
        counts = counts + chosen
        sums = sums + chosen * reward
    curve = regret.cumulative(regret.action_regret_steps(means, actions))
    return actions, rewards, policies, curve
