"""Cost estimates for the paid steps of an iteration, and the budget guard in front of them.

Prices come from the one table in providers/pricing.py; this module only does the arithmetic
OpenAI bills by (REFERENCE §4): training = file tokens × epochs × training rate, where
`n_epochs="auto"` picks min(25, 100 // n) epochs when n·3 < 100, else 3.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from rmft_api.config import Config, LoraTrainerConfig
from rmft_api.errors import BudgetError, ConfigError
from rmft_api.ledger import format_usd
from rmft_api.providers.pricing import PriceTable

DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25
# OpenAI's "auto" aims at about this many example passes when the file is small.
AUTO_TARGET_PASSES = 100


def auto_epochs(n_examples: int) -> int:
    """Epochs OpenAI picks for `n_epochs="auto"`: min(25, 100 // n) when n·3 < 100, else 3."""
    if n_examples <= 0:
        return 0
    if n_examples * DEFAULT_EPOCHS < AUTO_TARGET_PASSES:
        return min(MAX_AUTO_EPOCHS, AUTO_TARGET_PASSES // n_examples)
    return DEFAULT_EPOCHS


class CostEstimate(BaseModel):
    """What training on a file and rolling out the result will cost, in USD."""

    model: str  # the model being fine-tuned
    n_epochs: int
    epochs_rule: Literal["auto", "fixed"]
    file_tokens: int
    billed_tokens: int  # file tokens × epochs
    training_usd: float
    training_priced: bool  # False: no price known for `model` (e.g. a local model: free)
    rollout_model: str | None = None  # the fine-tuned model the next rollout will call
    rollout_prompt_tokens: int = 0
    rollout_completion_tokens: int = 0
    rollout_usd: float | None = None
    total_usd: float


def fine_tuned_name(model: str) -> str:
    """A name that prices like the model a job on `model` will produce."""
    return model if model.startswith("ft:") else f"ft:{model}"


def estimate_costs(
    model: str,
    *,
    n_examples: int,
    file_tokens: int,
    n_epochs: int | Literal["auto"] = "auto",
    rollout_tokens: tuple[int, int] | None = None,
    prices: PriceTable | None = None,
) -> CostEstimate:
    """Training cost of a file and, given expected (prompt, completion) tokens, the next rollout's
    cost at the fine-tuned model's rates."""
    table = prices or PriceTable()
    if n_epochs == "auto":
        epochs, rule = auto_epochs(n_examples), "auto"
    elif n_epochs >= 1:
        epochs, rule = n_epochs, "fixed"
    else:
        raise ConfigError(f"n_epochs: got {n_epochs}; use a positive integer or 'auto'")
    rate = table.rate(model)
    billed = file_tokens * epochs
    training = table.training_cost(model, tokens=file_tokens, epochs=epochs)
    estimate = CostEstimate(
        model=model,
        n_epochs=epochs,
        epochs_rule="auto" if rule == "auto" else "fixed",
        file_tokens=file_tokens,
        billed_tokens=billed,
        training_usd=training,
        training_priced=rate.known and rate.training_per_m > 0,
        total_usd=training,
    )
    if rollout_tokens is not None:
        prompt, completion = rollout_tokens
        tuned = fine_tuned_name(model)
        rollout = table.inference_cost(tuned, prompt_tokens=prompt, completion_tokens=completion)
        estimate = estimate.model_copy(
            update={
                "rollout_model": tuned,
                "rollout_prompt_tokens": prompt,
                "rollout_completion_tokens": completion,
                "rollout_usd": rollout,
                "total_usd": training + rollout,
            }
        )
    return estimate


def check_budget(estimate_usd: float, spent_usd: float, max_usd: float | None) -> None:
    """Refuse a paid step that would take total spending over `max_usd` (None = no limit)."""
    if max_usd is None:
        return
    after = spent_usd + estimate_usd
    if after > max_usd:
        raise BudgetError(
            f"the next step would cost about {format_usd(estimate_usd)}; with "
            f"{format_usd(spent_usd)} already spent that makes {format_usd(after)}, over "
            f"budget.max_usd = {format_usd(max_usd)}. Raise "
            "budget.max_usd (--set budget.max_usd=...) or make the iteration smaller "
            "(fewer scenarios or rollouts, a shorter horizon, fewer epochs)."
        )


def _priced_name(spec: str) -> str | None:
    """The price-table name of a paid policy spec (openai/<model>, azure/<deployment>);
    None for the free local ones (hf/, agent/, scripted/)."""
    backend, _, rest = spec.partition("/")
    return rest if backend in ("openai", "azure") and rest else None


def check_prices(cfg: Config, *, policy: str | None = None) -> None:
    """With budget.max_usd set, refuse (ConfigError, before anything is paid) a policy or a
    hosted trainer whose model has no price: the cap would silently count it as $0."""
    if cfg.budget.max_usd is None:
        return
    table = PriceTable(cfg.prices)
    spec = policy or cfg.policy.spec
    wanted: list[tuple[str, str]] = []  # (model, what is missing)
    model = _priced_name(spec)
    if model is not None and not table.rate(model).known:
        wanted.append((model, "input_per_m and output_per_m"))
    trainer = cfg.trainer
    if not isinstance(trainer, LoraTrainerConfig):
        base = getattr(trainer, "model", None) or model
        if base is not None:
            entry = cfg.prices.get(base)
            explicit = entry is not None and entry.training_per_m is not None
            if not explicit and table.rate(base).training_per_m == 0:
                wanted.append((base, "training_per_m"))
    if wanted:
        name, missing = wanted[0]
        raise ConfigError(
            f"budget.max_usd is set but model {name!r} has no price, so its spending would "
            f'count as $0: add [prices."{name}"] with {missing} (USD per 1M tokens), '
            "or unset budget.max_usd"
        )
