"""Per-(round, action) input features of the numeric policy, from running statistics of the history.

Token n of an episode summarises rounds 0..n-1 (token 0 is the empty history) and the policy for
round n is read from it. Every feature is a function of one action's statistics next to the other
actions' (centred or relative to the leader), so the model built on them stays equivariant under
a permutation of the actions and works for any K. Running sums are given to the model directly,
scaled by 1/√n or 1/n: a linear read-out of the centred cumulative reward over √n is exactly
anytime Hedge / FTRL with entropy, so that behaviour is learnable in minutes on CPU (the hint of
the paper: a single-layer Transformer can represent FTRL given such summaries).

The same function computes the features for a whole teacher-forced sequence (training) and for
one new token during a rollout, so the two paths cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

import torch

EnvKind = Literal["fol", "mab"]

FOL_FEATURES = 8
MAB_FEATURES = 12
# Prior pseudo-observation of an arm's mean reward: shrinks empirical means of rarely pulled arms.
PRIOR_MEAN = 0.5
# Features are scaled so their typical magnitude is about 1: differences of mean rewards are
# ~0.1-0.2 in these tasks, so they are multiplied by MEAN_SCALE; sums over √n and single rewards
# by SUM_SCALE. Equal scales matter twice: the optimiser moves every read-out weight at a similar
# pace, and the exploration noise ⟨w, x⟩ (rollout.py) perturbs every feature's logit comparably.
MEAN_SCALE = 10.0
SUM_SCALE = 2.0


def num_features(kind: EnvKind) -> int:
    return FOL_FEATURES if kind == "fol" else MAB_FEATURES


def _rounds(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(start indicator, max(n, 1)) with n broadcastable to (..., K)."""
    start = (n == 0).to(torch.float32)
    return start, n.clamp(min=1).to(torch.float32)


def fol_token_features(
    last: torch.Tensor, cumulative: torch.Tensor, n: torch.Tensor, *, horizon: int
) -> torch.Tensor:
    """Features of full-information tokens.

    Args:
        last: (..., K) the reward vector of round n-1 (zeros at n = 0).
        cumulative: (..., K) Σ_{s<n} r_s.
        n: rounds observed, broadcastable to (..., 1).
        horizon: T of the episode (the model is told it, as an LLM's prompt would).
    Returns:
        (..., K, FOL_FEATURES).
    """
    start, nn = _rounds(n)
    cum_c = cumulative - cumulative.mean(dim=-1, keepdim=True)
    lead = cumulative - cumulative.max(dim=-1, keepdim=True).values
    root = nn.sqrt()
    start_k = start.expand_as(last)
    parts = [
        start_k,
        SUM_SCALE * (last - last.mean(dim=-1, keepdim=True)),
        SUM_SCALE * cum_c / root,
        MEAN_SCALE / 2 * cum_c / nn,
        SUM_SCALE * lead / root,
        (1.0 - start_k) * (lead == 0).to(torch.float32),  # the current leader(s)
        ((1.0 - start) / root).expand_as(last),
        (n.to(torch.float32) / horizon).expand_as(last),
    ]
    return torch.stack(parts, dim=-1)


def mab_token_features(
    chosen: torch.Tensor,
    reward: torch.Tensor,
    counts: torch.Tensor,
    sums: torch.Tensor,
    n: torch.Tensor,
    *,
    horizon: int,
) -> torch.Tensor:
    """Features of bandit tokens.

    Args:
        chosen: (..., K) one-hot of the arm pulled at round n-1 (zeros at n = 0).
        reward: (..., 1) its reward (0 at n = 0).
        counts: (..., K) pulls of each arm in rounds < n.
        sums: (..., K) summed rewards of each arm in rounds < n.
        n: rounds observed, broadcastable to (..., 1).
    Returns:
        (..., K, MAB_FEATURES).
    """
    start, nn = _rounds(n)
    shrunk = (sums + PRIOR_MEAN) / (counts + 1.0)
    bonus = torch.sqrt(torch.log(nn + 1.0) / (counts + 1.0))
    gap = shrunk - shrunk.max(dim=-1, keepdim=True).values
    parts = [
        start.expand_as(counts),
        chosen,
        SUM_SCALE * chosen * (reward - PRIOR_MEAN),
        counts / nn,
        MEAN_SCALE * (shrunk - shrunk.mean(dim=-1, keepdim=True)),
        MEAN_SCALE * gap,
        (gap == 0).to(torch.float32),  # the empirical leader(s)
        1.0 / torch.sqrt(counts + 1.0),
        bonus,
        (counts == 0).to(torch.float32),
        ((1.0 - start) / nn.sqrt()).expand_as(counts),
        (n.to(torch.float32) / horizon).expand_as(counts),
    ]
    return torch.stack(parts, dim=-1)


def _shift_in_time(x: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) → (B, T, ...) with row t holding x[t-1] and row 0 zeros."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def fol_sequence_features(reward_vectors: torch.Tensor) -> torch.Tensor:
    """Teacher-forced features of tokens 0..T-1 from the reward vectors (B, T, K) of an episode."""
    horizon = reward_vectors.shape[1]
    last = _shift_in_time(reward_vectors)
    cumulative = torch.cumsum(last, dim=1)
    n = torch.arange(horizon).view(1, horizon, 1)
    return fol_token_features(last, cumulative, n, horizon=horizon)


def mab_sequence_features(
    actions: torch.Tensor, rewards: torch.Tensor, *, num_arms: int
) -> torch.Tensor:
    """Teacher-forced features of tokens 0..T-1 from actions (B, T) and rewards (B, T)."""
    horizon = actions.shape[1]
    onehot = torch.nn.functional.one_hot(actions, num_arms).to(torch.float32)
    chosen = _shift_in_time(onehot)
    reward = _shift_in_time(rewards.to(torch.float32)).unsqueeze(-1)
    counts = torch.cumsum(chosen, dim=1)
    sums = torch.cumsum(chosen * reward, dim=1)
    n = torch.arange(horizon).view(1, horizon, 1)
    return mab_token_features(chosen, reward, counts, sums, n, horizon=horizon)
