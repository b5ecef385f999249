"""Settings of the numeric RMFT experiment (issue 6): its own small pydantic tree, torch-free.

Kept out of the main `Config`: the numeric experiment is self-contained (no prompts, providers or
trainers), and `default_numeric_config(env)` gives the settings the documented results use.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rmft_api.config import FolFamily, config_error, parse_override
from rmft_api.errors import ConfigError

NumericEnv = Literal["fol", "mab"]
Noise = Literal["bernoulli", "gaussian"]
ALL_FOL_FAMILIES: list[FolFamily] = [
    "iid_uniform",
    "iid_gaussian",
    "linear_trend",
    "sine_trend",
    "alternating",
    "adaptive",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """Size of the axial policy Transformer (model.py)."""

    d_model: int = Field(default=32, ge=4, description="Width of every token.")
    heads: int = Field(default=2, ge=1, description="Attention heads (must divide d_model).")
    layers: int = Field(default=2, ge=1, description="Blocks; 1 = the single-layer variant.")
    mlp_ratio: int = Field(default=2, ge=1, description="MLP hidden width / d_model.")


class TrainConfig(_Section):
    """Maximum-likelihood fitting of the kept trajectories, each iteration."""

    epochs: int = Field(default=4, ge=1, description="Passes over the iteration's data.")
    batch_size: int = Field(default=32, ge=1, description="Trajectories per optimiser step.")
    lr: float = Field(default=3e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(default=1.0, gt=0, description="Max gradient norm per step.")


class EvalConfig(_Section):
    """Held-out evaluation (the same draws for the model and every baseline)."""

    scenarios: int = Field(default=60, ge=2, description="Held-out scenarios per group.")
    num_arms: int = Field(default=5, ge=2, description="K of the held-out scenarios.")
    horizon_factor: int = Field(
        default=2, ge=1, description="Generalization: horizon = this × the training horizon."
    )
    more_arms: int = Field(
        default=8, ge=2, description="Generalization: K larger than any training K."
    )
    ci_level: float = Field(default=0.95, gt=0, lt=1, description="Bootstrap CI level.")
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples.")
    split: Literal["heldout", "validation"] = Field(
        default="heldout",
        description="Seed stream of every evaluation set: validation to choose settings, "
        "heldout (disjoint from it and from training) for the figures reported with them.",
    )
    baseline_seeds: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Plays of each classic agent per evaluation scenario (own generator each); "
        "its regret there is their mean, so one lucky seed cannot decide a comparison.",
    )


class NumericConfig(_Section):
    """Iterative RMFT on a small numeric-input Transformer."""

    env: NumericEnv = Field(description="fol: experts (full information); mab: stochastic bandit.")
    seed: int = Field(default=0, ge=0, description="Root seed of scenarios, sampling and init.")
    iterations: int = Field(default=4, ge=0, description="RMFT iterations after the random init.")
    scenarios: int = Field(default=64, ge=1, description="M: training scenarios per iteration.")
    rollouts: int = Field(default=16, ge=1, description="L: trajectories sampled per scenario.")
    keep: int = Field(default=2, ge=1, description="k: lowest-regret trajectories kept each.")
    horizon: int = Field(default=50, ge=2, description="T of training scenarios.")
    train_arms: list[int] = Field(
        default_factory=lambda: [3, 5], description="K values of training scenarios (cycled)."
    )
    families: list[FolFamily] = Field(
        default_factory=lambda: list(ALL_FOL_FAMILIES),
        description="FOL reward families, cycled over training and held-out scenarios.",
    )
    noises: list[Noise] = Field(
        default_factory=lambda: list[Noise](["bernoulli", "gaussian"]),
        description="MAB reward noises.",
    )
    gap: float = Field(default=0.2, gt=0, le=1, description="MAB Δ (0.2 = the hard preset).")
    sigma: float = Field(default=0.1, gt=0, le=1, description="MAB Gaussian reward std.")
    exploration: float = Field(
        default=2.0,
        ge=0,
        description="σ of the episode-long logit perturbation ⟨w, features⟩, w ~ N(0, σ²I), of "
        "every rollout but the first (rollout.py); 0 = rollouts differ by sampling only.",
    )
    temperatures: list[float] = Field(
        default_factory=lambda: [1.0],
        description="Sampling temperatures, cycled over a scenario's exploring rollouts "
        "(< 1 sharper, > 1 flatter); rollout 0 always uses 1.",
    )
    data: Literal["fresh", "accumulated"] = Field(
        default="fresh", description="Train on this iteration's kept data, or all so far."
    )
    init: Literal["continue", "initial"] = Field(
        default="continue",
        description="Train from the previous iteration's weights, or from the random init.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    threads: int = Field(
        default=1,
        ge=1,
        description="torch CPU threads. The tensors are small; with more threads on shared cores "
        "OpenMP's waits for descheduled threads made runs ~5x slower in our measurements.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.keep > self.rollouts:
            raise ValueError(f"keep={self.keep} exceeds rollouts={self.rollouts}")
        if not self.train_arms or min(self.train_arms) < 2:
            raise ValueError("train_arms needs at least one K ≥ 2")
        if not self.families or not self.noises or not self.temperatures:
            raise ValueError("families, noises and temperatures must not be empty")
        if any(t <= 0 for t in self.temperatures):
            raise ValueError("temperatures must be > 0")
        return self


# The settings the documented results were measured with; see docs/numeric.md. k was chosen on
# the validation split (eval.split = validation) from {1, 2, 4} (FOL) and {2, 4, 8} (MAB) by the
# lowest final-iteration regret averaged over the tasks, before the held-out runs.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "fol": {"horizon": 50, "iterations": 4, "keep": 1},
    "mab": {
        "horizon": 100,
        "iterations": 4,
        "train_arms": [5],
        "keep": 4,
        "eval": {"scenarios": 100},
    },
}


def default_numeric_config(
    env: NumericEnv, *, overrides: list[str] | tuple[str, ...] = (), **fields: Any
) -> NumericConfig:
    """The documented defaults for `env`, then keyword fields, then `key=value` overrides."""
    data: dict[str, Any] = {"env": env, **copy.deepcopy(_DEFAULTS[env])}
    data.update({k: v for k, v in fields.items() if v is not None})
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is a value, not a table")
            node = child
        node[path[-1]] = value
    try:
        return NumericConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source="numeric settings", model=NumericConfig) from None
