"""Which episodes become fine-tuning data: the k lowest-regret episodes of each scenario.

The core is pure and generic over the item type, so the LLM pipeline (episodes) and the numeric
experiment (sampled trajectories) share one rule. Ties are broken by a caller-given order (the
rollout index), never by input order or hashing, so a selection is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict

from rmft_api.schema import SCHEMA_VERSION

T = TypeVar("T")


def select_k_lowest(
    items: Sequence[T],
    *,
    k: int,
    regret: Callable[[T], float],
    group: Callable[[T], Hashable],
    order: Callable[[T], int],
) -> list[T]:
    """Per group, the k items of lowest regret; ties go to the lower `order`.

    Groups with fewer than k items keep all of them. An item whose regret is NaN is never kept:
    its score is undefined, and ranking it would silently treat it as best or worst. The result
    lists groups in order of first appearance, and within a group from lowest regret up.

    Args:
        items: candidates, e.g. every rollout of every scenario.
        k: how many to keep per group (≥ 0).
        regret: the score to minimise (exact regret from hidden truth).
        group: the key that items compete within (the scenario).
        order: the deterministic tie-break (the rollout index).
    """
    if k < 0:
        raise ValueError(f"k must be ≥ 0, got {k}")
    groups: dict[Hashable, list[tuple[float, int, T]]] = {}
    for item in items:
        score = float(regret(item))
        if math.isnan(score):
            continue
        groups.setdefault(group(item), []).append((score, int(order(item)), item))
    kept: list[T] = []
    for members in groups.values():
        members.sort(key=lambda m: (m[0], m[1]))
        kept.extend(m[2] for m in members[:k])
    return kept


# ---------------------------------------------------------------- episodes (the LLM pipeline)

if TYPE_CHECKING:
    from rmft_api.config import Config
    from rmft_api.envs.scenarios import Scenario
    from rmft_api.schema import Episode


class SelectionReport(BaseModel):
    """selection.json: what was kept, what each guard dropped, and what it did to regret."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    total: int  # episodes offered
    eligible: int  # complete episodes that passed every guard
    kept: int
    acceptance_rate: float  # kept / total
    dropped: dict[str, int]  # guard → episodes it removed (each counted once, first guard wins)
    regret_all_mean: float | None
    regret_eligible_mean: float | None
    regret_kept_mean: float | None
    scenarios: int  # scenarios with at least one episode
    scenarios_with_kept: int
    settings: dict[str, Any]
    kept_ids: list[str]


def _never_best_from(episode: Episode, scenario: Scenario, t0: int) -> bool:
    """True when the episode plays no best arm in rounds t0..T (1-based t0): a suffix failure."""
    means = getattr(scenario.instance, "means", None)
    if means is None:  # full information: every arm's reward is seen, no suffix failure
        return False
    for step in episode.steps[t0 - 1 :]:
        if step.action is not None and means[step.t, step.action] >= means[step.t].max() - 1e-12:
            return False
    return True


def _guard(
    episode: Episode,
    cfg: Config,
    scenario_of: Callable[[Episode], Scenario],
    baseline_regret: Callable[[Scenario], float],
) -> str | None:
    """The first guard that rejects `episode`, or None when it may be selected."""
    sel = cfg.selection
    if episode.status != "complete":
        return f"status_{episode.status}"
    if sel.drop_fallback and any(s.status not in ("ok", "reprompted") for s in episode.steps):
        return "fallback_or_forfeit"
    t0 = sel.suffix_failure_before
    bandit = episode.env != "fol"
    if t0 is not None and bandit and _never_best_from(episode, scenario_of(episode), t0):
        return "suffix_failure"
    if sel.baseline is not None:
        limit = sel.baseline_factor * baseline_regret(scenario_of(episode))
        if episode.regret > limit + 1e-12:
            return f"worse_than_{sel.baseline}"
    return None


def quantile_threshold(regrets: Sequence[float], q: float) -> float:
    """The empirical q-quantile of `regrets`: the ⌈q·n⌉-th smallest (−inf when empty).

    `global_quantile` keeps every episode at or below it, as the config promises. Keeping exactly
    ⌈q·n⌉ episodes instead would cut ties at the threshold by scenario index, which is common:
    on a gap instance every regret is a multiple of the gap.
    """
    if not regrets:
        return -math.inf
    ordered = sorted(regrets)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def select_episodes(
    episodes: Sequence[Episode],
    cfg: Config,
    *,
    scenario_of: Callable[[Episode], Scenario],
    baseline_regret: Callable[[Scenario], float],
) -> tuple[list[Episode], SelectionReport]:
    """Apply the guards, then keep the k lowest-regret per scenario (or a global quantile).

    Args:
        scenario_of: the scenario (hidden truth) an episode was played on; only called by guards
            that need it.
        baseline_regret: a classic agent's regret on a scenario's draws (`selection.baseline`).
    """
    sel = cfg.selection
    dropped: dict[str, int] = {}
    eligible: list[Episode] = []
    for episode in episodes:
        reason = _guard(episode, cfg, scenario_of, baseline_regret)
        if reason is None:
            eligible.append(episode)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    if sel.mode == "per_scenario":
        kept = select_k_lowest(
            eligible,
            k=sel.k,
            regret=lambda e: e.regret,
            group=lambda e: e.scenario_id,
            order=lambda e: e.rollout,
        )
    else:
        ranked = sorted(eligible, key=lambda e: (e.regret, e.scenario_index, e.rollout))
        threshold = quantile_threshold([e.regret for e in ranked], sel.quantile)
        kept = [e for e in ranked if e.regret <= threshold]
    report = SelectionReport(
        total=len(episodes),
        eligible=len(eligible),
        kept=len(kept),
        acceptance_rate=len(kept) / len(episodes) if episodes else 0.0,
        dropped=dropped,
        regret_all_mean=_mean([e.regret for e in episodes if e.status == "complete"]),
        regret_eligible_mean=_mean([e.regret for e in eligible]),
        regret_kept_mean=_mean([e.regret for e in kept]),
        scenarios=len({e.scenario_id for e in episodes}),
        scenarios_with_kept=len({e.scenario_id for e in kept}),
        settings=sel.model_dump(mode="json"),
        kept_ids=[e.episode_id for e in kept],
    )
    return kept, report
