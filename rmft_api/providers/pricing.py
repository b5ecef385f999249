"""The one price table: dollars per 1M tokens for inference and training, by model.

Prices are (unverified) list prices as reported in 2025-2026 (REFERENCE §4); the config's
`[prices]` section overrides or adds entries. A fine-tuned model `ft:<base>:<org>:<suffix>:<id>`
is priced by its base's fine-tuned rates (its training by the base's training rate). Unknown
models cost 0 and are flagged `known=False`; a capped run with one is refused before anything is
paid (costs.check_prices), unless `[prices]` gives it a price.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class ModelPrice(BaseModel):
    """USD per 1M tokens. Reasoning tokens are billed as output (they are in completion_tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_m: float = Field(ge=0, description="Base model, prompt tokens.")
    output_per_m: float = Field(ge=0, description="Base model, completion tokens.")
    ft_input_per_m: float | None = Field(
        default=None, ge=0, description="Fine-tuned model, prompt tokens; None = not tunable."
    )
    ft_output_per_m: float | None = Field(default=None, ge=0, description="Fine-tuned output.")
    training_per_m: float | None = Field(
        default=None, ge=0, description="Training tokens (billed once per epoch)."
    )


# Longest-prefix match on the model name, so dated snapshots (gpt-4o-mini-2024-07-18) share
# their family's entry.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(
        input_per_m=0.15,
        output_per_m=0.60,
        ft_input_per_m=0.30,
        ft_output_per_m=1.20,
        training_per_m=3.00,
    ),
    "gpt-4o": ModelPrice(
        input_per_m=2.50,
        output_per_m=10.00,
        ft_input_per_m=3.75,
        ft_output_per_m=15.00,
        training_per_m=25.00,
    ),
    "gpt-4.1-nano": ModelPrice(
        input_per_m=0.10,
        output_per_m=0.40,
        ft_input_per_m=0.20,
        ft_output_per_m=0.80,
        training_per_m=1.50,
    ),
    "gpt-4.1-mini": ModelPrice(
        input_per_m=0.40,
        output_per_m=1.60,
        ft_input_per_m=0.80,
        ft_output_per_m=3.20,
        training_per_m=5.00,
    ),
    "gpt-4.1": ModelPrice(
        input_per_m=2.00,
        output_per_m=8.00,
        ft_input_per_m=3.00,
        ft_output_per_m=12.00,
        training_per_m=25.00,
    ),
}


class Rate(BaseModel):
    """What one model's tokens cost; `known=False` when no table entry matched."""

    model_config = ConfigDict(frozen=True)

    input_per_m: float
    output_per_m: float
    training_per_m: float
    known: bool
    fine_tuned: bool


class PriceTable:
    """Looks up a model's rates in the defaults overlaid with config overrides."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}

    def rate(self, model: str) -> Rate:
        fine_tuned = model.startswith("ft:")
        base = model.split(":")[1] if fine_tuned and model.count(":") >= 1 else model
        # An override for the exact ft:... name wins over its base's fine-tuned rates.
        exact = self._prices.get(model)
        price = exact or self._lookup(base)
        if price is None:
            return Rate(
                input_per_m=0.0,
                output_per_m=0.0,
                training_per_m=0.0,
                known=False,
                fine_tuned=fine_tuned,
            )
        if fine_tuned and exact is None:
            if price.ft_input_per_m is None or price.ft_output_per_m is None:
                return Rate(
                    input_per_m=0.0,
                    output_per_m=0.0,
                    training_per_m=0.0,
                    known=False,
                    fine_tuned=True,
                )
            inp, out = price.ft_input_per_m, price.ft_output_per_m
        else:
            inp, out = price.input_per_m, price.output_per_m
        return Rate(
            input_per_m=inp,
            output_per_m=out,
            training_per_m=price.training_per_m or 0.0,
            known=True,
            fine_tuned=fine_tuned,
        )

    def inference_cost(self, model: str, *, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of one call; 0 for unknown models (check `rate(model).known`)."""
        r = self.rate(model)
        return (prompt_tokens * r.input_per_m + completion_tokens * r.output_per_m) / 1e6

    def training_cost(self, model: str, *, tokens: int, epochs: int = 1) -> float:
        """USD of a fine-tuning job on `model` over `tokens` per epoch."""
        return tokens * epochs * self.rate(model).training_per_m / 1e6

    def _lookup(self, name: str) -> ModelPrice | None:
        matches = [key for key in self._prices if name == key or name.startswith(key + "-")]
        return self._prices[max(matches, key=len)] if matches else None
