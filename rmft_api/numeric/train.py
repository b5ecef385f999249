"""Maximum-likelihood fitting of the policy on kept trajectories (the SFT step of numeric RMFT)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rmft_api.numeric.config import TrainConfig
from rmft_api.numeric.features import fol_sequence_features, mab_sequence_features
from rmft_api.numeric.model import PolicyTransformer
from rmft_api.numeric.rollout import Trajectories


@dataclass(frozen=True)
class FitStats:
    """Mean per-round NLL of the training data before and after fitting, and optimiser steps."""

    nll_before: float
    nll_after: float
    steps: int


def sequence_features(data: Trajectories) -> torch.Tensor:
    """Teacher-forced features (N, T, K, F) of recorded trajectories."""
    if data.observations.ndim == 3:  # full information: the reward vectors
        return fol_sequence_features(torch.from_numpy(data.observations).float())
    k = data.policies.shape[-1]
    return mab_sequence_features(
        torch.from_numpy(data.actions), torch.from_numpy(data.observations), num_arms=k
    )


def _cross_entropy(
    model: PolicyTransformer, feats: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean per-round −Σ_a target(a) log π(a): NLL of the pulled arm when targets are one-hot."""
    loss: torch.Tensor = -(targets * model(feats)).sum(dim=-1).mean()
    return loss


@torch.no_grad()
def mean_nll(model: PolicyTransformer, data: list[Trajectories], *, batch_size: int = 256) -> float:
    """Per-round cross-entropy of the recorded targets (kept π_t or pulled arms) under `model`."""
    model.eval()
    total, rounds = 0.0, 0
    for block in data:
        feats = sequence_features(block)
        targets = torch.from_numpy(block.targets()).float()
        for start in range(0, len(targets), batch_size):
            stop = start + batch_size
            n = targets[start:stop, :, 0].numel()
            total += float(_cross_entropy(model, feats[start:stop], targets[start:stop])) * n
            rounds += n
    return total / max(rounds, 1)


def fit(
    model: PolicyTransformer,
    data: list[Trajectories],
    cfg: TrainConfig,
    *,
    rng: np.random.Generator,
) -> FitStats:
    """Maximise the likelihood of the kept targets; `data` blocks each have one shape.

    Minibatches never mix shapes (K and T vary between blocks); their order is shuffled across
    blocks every epoch with `rng`.
    """
    before = mean_nll(model, data)
    prepared = [(sequence_features(b), torch.from_numpy(b.targets()).float()) for b in data]
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = 0
    for _ in range(cfg.epochs):
        batches: list[tuple[int, torch.Tensor]] = []
        for j, (_, targets) in enumerate(prepared):
            order = torch.from_numpy(rng.permutation(len(targets)))
            size = cfg.batch_size
            batches.extend((j, order[s : s + size]) for s in range(0, len(order), size))
        model.train()
        for pick in rng.permutation(len(batches)):
            j, rows = batches[int(pick)]
            feats, targets = prepared[j]
            loss = _cross_entropy(model, feats[rows], targets[rows])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            steps += 1
    return FitStats(nll_before=before, nll_after=mean_nll(model, data), steps=steps)
