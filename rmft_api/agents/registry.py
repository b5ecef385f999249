"""Classic agents by name: which apply to an environment kind, and how to build one from config."""

from __future__ import annotations

from rmft_api.agents.bandit import (
    EpsilonGreedyAgent,
    Exp3Agent,
    GreedyAgent,
    Noise,
    OracleAgent,
    ThompsonAgent,
    UCB1Agent,
    UniformAgent,
    noise_scale,
)
from rmft_api.agents.base import BanditAgent, ExpertsAgent
from rmft_api.agents.experts import (
    FollowTheLeaderAgent,
    FollowThePerturbedLeaderAgent,
    HedgeAgent,
    UniformExpertsAgent,
)
from rmft_api.agents.nonstationary import DiscountedThompsonAgent, SlidingWindowUCBAgent
from rmft_api.config import AgentsConfig
from rmft_api.envs.base import BanditInstance, Instance
from rmft_api.errors import ConfigError

# Display order: reference points first, then from naive to strong.
_MAB_AGENTS = ("oracle", "uniform", "greedy", "eps_greedy", "ucb1", "thompson", "exp3")
_NS_AGENTS = (*_MAB_AGENTS, "sw_ucb", "discounted_ts")
_FOL_AGENTS = ("uniform", "ftl", "hedge", "ftpl")
_BY_KIND: dict[str, tuple[str, ...]] = {"mab": _MAB_AGENTS, "ns": _NS_AGENTS, "fol": _FOL_AGENTS}
# Other spellings accepted in specs such as `agent/ucb`.
_ALIASES = {"ucb": "ucb1", "ts": "thompson", "epsilon_greedy": "eps_greedy", "dts": "discounted_ts"}


def agent_names(env_kind: str) -> list[str]:
    """The agents that apply to `env_kind` ("mab", "ns" or "fol"), in display order."""
    if env_kind not in _BY_KIND:
        raise ConfigError(f"unknown env kind {env_kind!r}; allowed: {', '.join(_BY_KIND)}")
    return list(_BY_KIND[env_kind])


def make_agent(
    name: str,
    cfg: AgentsConfig,
    *,
    env_kind: str,
    instance: Instance | None = None,
    noise: Noise | None = None,
    sigma: float | None = None,
) -> BanditAgent | ExpertsAgent:
    """A fresh agent `name` for `env_kind`, with hyperparameters from `cfg`.

    `instance` is needed by the oracle only. Agents model Bernoulli rewards unless `noise` (or
    the instance's noise) says Gaussian; σ then comes from `sigma` or the instance (1.0, a
    cautious guess, when neither is given). Thompson-style agents use σ in their posterior, the
    UCB agents scale their bonus by it (`noise_scale`).
    """
    allowed = agent_names(env_kind)
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in allowed:
        raise ConfigError(
            f"unknown agent {name!r} for env kind {env_kind!r}; allowed: {', '.join(allowed)}"
        )
    if env_kind == "fol":
        return _make_experts_agent(key, cfg)
    bandit = instance if isinstance(instance, BanditInstance) else None
    if noise is None:
        noise = bandit.noise if bandit is not None else "bernoulli"
    if sigma is None:
        sigma = bandit.sigma if bandit is not None and bandit.sigma > 0 else 1.0
    return _make_bandit_agent(key, cfg, instance=bandit, noise=noise, sigma=sigma)


def _make_bandit_agent(
    key: str, cfg: AgentsConfig, *, instance: BanditInstance | None, noise: Noise, sigma: float
) -> BanditAgent:
    if key == "oracle":
        if instance is None:
            raise ConfigError("agent 'oracle' needs the bandit instance (its hidden means)")
        return OracleAgent(instance)
    if key == "uniform":
        return UniformAgent()
    if key == "greedy":
        return GreedyAgent()
    if key == "eps_greedy":
        return EpsilonGreedyAgent(cfg.epsilon)
    if key == "ucb1":
        return UCB1Agent(cfg.ucb_c, scale=noise_scale(noise, sigma), bonus=cfg.ucb_bonus)
    if key == "thompson":
        return ThompsonAgent(noise=noise, sigma=sigma)
    if key == "exp3":
        return Exp3Agent(cfg.exp3_gamma)
    if key == "sw_ucb":
        return SlidingWindowUCBAgent(
            window=cfg.window, c=cfg.ucb_c, scale=noise_scale(noise, sigma)
        )
    if key == "discounted_ts":
        return DiscountedThompsonAgent(discount=cfg.discount, noise=noise, sigma=sigma)
    raise ConfigError(f"unknown bandit agent {key!r}")


def _make_experts_agent(key: str, cfg: AgentsConfig) -> ExpertsAgent:
    if key == "uniform":
        return UniformExpertsAgent()
    if key == "ftl":
        return FollowTheLeaderAgent()
    if key == "hedge":
        return HedgeAgent(cfg.hedge_eta)
    if key == "ftpl":
        return FollowThePerturbedLeaderAgent(cfg.ftpl_noise)
    raise ConfigError(f"unknown experts agent {key!r}")
