"""select_k_lowest: the per-scenario k-lowest rule shared by the LLM and numeric pipelines."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from rmft_api.selection import select_k_lowest


@dataclass(frozen=True)
class Rollout:
    scenario: int
    index: int
    regret: float


def _select(items: list[Rollout], k: int) -> list[Rollout]:
    return select_k_lowest(
        items, k=k, regret=lambda r: r.regret, group=lambda r: r.scenario, order=lambda r: r.index
    )


def test_keeps_k_lowest_per_group_in_ascending_order() -> None:
    items = [Rollout(0, i, reg) for i, reg in enumerate([5.0, 1.0, 3.0, 2.0])]
    items += [Rollout(1, i, reg) for i, reg in enumerate([0.5, 9.0, 0.1])]
    kept = _select(items, 2)
    assert [(r.scenario, r.index) for r in kept] == [(0, 1), (0, 3), (1, 2), (1, 0)]


def test_ties_broken_by_order_not_input_position() -> None:
    items = [Rollout(0, 7, 1.0), Rollout(0, 2, 1.0), Rollout(0, 5, 1.0), Rollout(0, 0, 4.0)]
    kept = _select(items, 2)
    assert [r.index for r in kept] == [2, 5]
    # The same items in another input order give the same selection.
    assert _select(list(reversed(items)), 2) == kept


def test_small_groups_keep_everything_and_k_zero_keeps_nothing() -> None:
    items = [Rollout(0, 0, 3.0), Rollout(1, 0, 1.0), Rollout(1, 1, 2.0)]
    assert len(_select(items, 5)) == 3
    assert _select(items, 0) == []
    with pytest.raises(ValueError):
        _select(items, -1)


def test_nan_regret_is_never_kept() -> None:
    items = [Rollout(0, 0, math.nan), Rollout(0, 1, 2.0), Rollout(0, 2, 3.0)]
    assert [r.index for r in _select(items, 2)] == [1, 2]


def test_matches_a_brute_force_sort_on_random_inputs() -> None:
    rng = np.random.default_rng(3)
    # Rounded regrets make ties common, which is what the tie-break has to survive.
    items = [
        Rollout(int(s), int(i), float(np.round(rng.random() * 4) / 4))
        for s in range(6)
        for i in rng.permutation(9)
    ]
    rng.shuffle(items)  # type: ignore[arg-type]
    kept = _select(items, 3)
    for s in range(6):
        mine = [r for r in kept if r.scenario == s]
        expected = sorted((r for r in items if r.scenario == s), key=lambda r: (r.regret, r.index))
        assert mine == expected[:3]
