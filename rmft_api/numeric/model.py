"""A small axial Transformer from an episode's history to a probability vector over K actions.

Input: one token per (round, action), features from `features.py`. Each block attends
causally across time within one action (what happened to this action so far), then across the
actions within one round (how it compares with the others), then applies an MLP. No positional
embedding over actions, so the policy is permutation-equivariant and K can be anything; time
has no learned positions either (the features carry n/T and 1/√n), so horizons longer than
the training ones are only a change of feature values, not an unseen position.

The logit of action a is a head on the block output plus a linear read-out of the raw features:
the skip keeps linear-in-features policies (FTRL on the cumulative reward) exactly
representable, the blocks learn corrections. `step` runs one token with a key/value cache, so a
rollout costs O(T) token passes instead of O(T²); `forward` runs whole teacher-forced sequences.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rmft_api.numeric.config import ModelConfig

# Per block: the keys and values of the time attention for every token seen so far,
# each (B·K, heads, n, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class _Attention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, L, d) → q, k, v each (N, heads, L, d/heads)."""
        n, length, d = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(N, heads, L, dh) → (N, L, d) through the output projection."""
        n, heads, length, dh = y.shape
        out: torch.Tensor = self.out(y.transpose(1, 2).reshape(n, length, heads * dh))
        return out

    def forward(self, x: torch.Tensor, *, causal: bool) -> torch.Tensor:
        q, k, v = self.project(x)
        return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal))


class _Block(nn.Module):
    def __init__(self, d_model: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm_time = nn.LayerNorm(d_model)
        self.time = _Attention(d_model, heads)
        self.norm_actions = nn.LayerNorm(d_model)
        self.actions = _Attention(d_model, heads)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )

    def _across_actions_and_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, K, d), one row per (episode, round)."""
        x = x + self.actions(self.norm_actions(x), causal=False)
        out: torch.Tensor = x + self.mlp(self.norm_mlp(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, K, d), whole sequences, causal in time."""
        b, t, k, d = x.shape
        per_action = x.permute(0, 2, 1, 3).reshape(b * k, t, d)
        per_action = per_action + self.time(self.norm_time(per_action), causal=True)
        x = per_action.view(b, k, t, d).permute(0, 2, 1, 3).reshape(b * t, k, d)
        return self._across_actions_and_mlp(x).view(b, t, k, d)

    def step(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, K, d), one new token per action; returns it transformed and the grown cache."""
        b, k, d = x.shape
        q, key, value = self.time.project(self.norm_time(x.reshape(b * k, 1, d)))
        if cache is not None:
            key = torch.cat([cache[0], key], dim=2)
            value = torch.cat([cache[1], value], dim=2)
        # The new token is the last one: it may see every cached token, so no mask is needed.
        attended = self.time.merge(F.scaled_dot_product_attention(q, key, value))
        x = x + attended.view(b, k, d)
        return self._across_actions_and_mlp(x), (key, value)


class PolicyTransformer(nn.Module):
    """History features (B, T, K, F) → log-probabilities over actions (B, T, K)."""

    def __init__(self, in_features: int, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise ValueError(f"d_model={cfg.d_model} is not divisible by heads={cfg.heads}")
        self.embed = nn.Linear(in_features, cfg.d_model)
        self.blocks = nn.ModuleList(
            _Block(cfg.d_model, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)
        self.skip = nn.Linear(in_features, 1, bias=False)
        # Zero start: the random init's policy comes from the (small) head alone, close to
        # uniform, instead of an arbitrary strong linear rule on the scaled features.
        nn.init.zeros_(self.skip.weight)

    def _logits(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.norm(x)).squeeze(-1) + self.skip(features).squeeze(-1)
        return out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.embed(features)
        for block in self.blocks:
            x = block(x)
        return F.log_softmax(self._logits(x, features), dim=-1)

    def step(self, features: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """One round: features (B, K, F) of the newest token → log-probs (B, K) and the cache."""
        x = self.embed(features)
        grown: KVCache = []
        for i, block in enumerate(self.blocks):
            assert isinstance(block, _Block)
            x, layer_cache = block.step(x, None if cache is None else cache[i])
            grown.append(layer_cache)
        return F.log_softmax(self._logits(x, features), dim=-1), grown
