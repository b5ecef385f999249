"""The generalization grid: each iteration's policy on variants of the task it was trained on.

A variant (`[[eval.grid]]`, config.GridVariant) changes some [env] / [prompt] keys — a longer
horizon, more arms, Gaussian rewards, non-stationary means, contexts training never saw — and is
played on held-out scenarios of its own: the variant's config gets a run seed derived from the
run seed and the variant's name, so its scenario seeds are disjoint from training, from the main
held-out set and from every other variant (checked before playing, like the main evaluation).
The evaluation itself is `evaluate.evaluate_policy` on that derived config, so the classic agents
face the same draws and a killed evaluation resumes from its episodes file.

Results: `iter-NNN/grid/<variant>/episodes.jsonl` and `metrics.json` (an EvalMetrics).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmft_api.config import Config, GridVariant, grid_variant_sections
from rmft_api.envs.scenarios import Scenario, load_library
from rmft_api.errors import ConfigError, StateError
from rmft_api.evaluate import (
    EvalMetrics,
    check_disjoint,
    evaluate_policy,
    heldout_scenarios,
    metrics_final,
)
from rmft_api.ledger import Ledger
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.rollout_progress import ProgressCallback
from rmft_api.schema import Episode
from rmft_api.store import RunPaths, read_json, read_jsonl, write_json_atomic

# Salt of the variants' run seeds, apart from every other use of run.seed.
_GRID_SALT = 0x6E1D


@dataclass(frozen=True)
class GridEntry:
    """One variant with the full config it is evaluated under."""

    variant: GridVariant
    cfg: Config

    @property
    def name(self) -> str:
        return self.variant.name


def variant_seed(run_seed: int, name: str) -> int:
    """The run seed of a variant: from the run seed and the variant's name (not its position,
    so reordering or adding variants leaves each variant's scenarios unchanged)."""
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    seq = np.random.SeedSequence([run_seed, _GRID_SALT, digest])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def unseen_contexts(cfg: Config) -> list[str]:
    """Scenario contexts in the library that training never draws from (sorted)."""
    library = load_library(cfg.prompt.templates_dir)
    left = sorted(set(library) - set(cfg.prompt.contexts))
    if not left:
        raise ConfigError(
            f"prompt.contexts names every context of the library ({', '.join(sorted(library))}); "
            "a grid variant with unseen_contexts has nothing left to play"
        )
    return left


def variant_config(cfg: Config, variant: GridVariant) -> Config:
    """The config a variant is evaluated under: its env/prompt, its own seed, no grid."""
    from rmft_api.agents.registry import agent_names

    env, prompt = grid_variant_sections(cfg.env, cfg.prompt, variant)
    if variant.unseen_contexts:
        prompt = prompt.model_copy(update={"contexts": unseen_contexts(cfg)})
    known = agent_names(env.kind)
    evaluation = cfg.eval.model_copy(
        update={
            "scenarios": variant.scenarios or cfg.eval.scenarios,
            "baselines": [b for b in cfg.eval.baselines if b in known],
            "grid": [],
        }
    )
    run = cfg.run.model_copy(update={"seed": variant_seed(cfg.run.seed, variant.name)})
    derived = cfg.model_copy(update={"env": env, "prompt": prompt, "eval": evaluation, "run": run})
    # Re-validate the assembled tree (model_copy does not), so a derived config is a real one.
    return Config.model_validate(derived.model_dump(mode="json"))


def grid_entries(cfg: Config) -> list[GridEntry]:
    """Every configured variant with its config; raises ConfigError before anything is played."""
    return [GridEntry(variant=v, cfg=variant_config(cfg, v)) for v in cfg.eval.grid]


def describe_variant(entry: GridEntry) -> str:
    """A short label of what the variant's task is, e.g. "mab K=10 T=200 gaussian"."""
    env = entry.cfg.env
    parts = [env.kind, f"K={env.num_arms}", f"T={env.horizon}"]
    if env.kind in ("mab", "ns"):
        parts.append(env.noise)
    if env.kind == "ns":
        parts.append(env.ns_mode)
    if env.kind == "fol":
        parts.append(env.family)
    if entry.variant.unseen_contexts or "contexts" in entry.variant.prompt:
        parts.append("contexts " + ", ".join(entry.cfg.prompt.contexts))
    changed = sorted(k for k in entry.variant.prompt if k != "contexts")
    if changed:
        parts.append(
            "prompt " + ", ".join(f"{k}={entry.cfg.prompt.model_dump()[k]}" for k in changed)
        )
    return " ".join(parts)


def grid_dir(iteration_root: Path) -> Path:
    return iteration_root / "grid"


def check_grid_disjoint(
    entries: Sequence[GridEntry], train: Iterable[Scenario], cfg: Config
) -> None:
    """Refuse a variant whose held-out seeds meet training, the main held-out set or another
    variant's (StateError naming both)."""
    seen: list[tuple[str, Iterable[Scenario]]] = [("training", train)]
    if cfg.eval.scenarios:
        seen.append(("the main held-out set", heldout_scenarios(cfg)))
    for entry in entries:
        mine = heldout_scenarios(entry.cfg)
        for label, other in seen:
            try:
                check_disjoint(other, mine)
            except StateError as e:
                raise StateError(f"grid variant '{entry.name}' against {label}: {e}") from e
        seen.append((f"grid variant '{entry.name}'", mine))


async def evaluate_grid(
    provider: Provider,
    entries: Sequence[GridEntry],
    *,
    iteration: int,
    out_dir: Path,
    sampling: SamplingParams,
    progress: ProgressCallback | None = None,
    budget_left: Callable[[], float | None] = lambda: None,
    on_variant: Callable[[str], None] | None = None,
    ledger: Ledger | None = None,
) -> dict[str, EvalMetrics]:
    """Evaluate `provider` on every variant; a variant whose metrics.json exists is kept as is.

    Args:
        out_dir: the iteration's grid/ directory; variant v writes out_dir/v/.
        budget_left: dollars left, asked before each variant (None = no limit); with a
            `ledger`, the cap on the ledger's total.
        ledger: the run's ledger of paid requests.
        on_variant: told the name of each variant about to be played.
    """
    results: dict[str, EvalMetrics] = {}
    for entry in entries:
        where = out_dir / entry.name
        metrics_path = where / "metrics.json"
        if metrics_final(metrics_path):
            results[entry.name] = read_json(metrics_path, EvalMetrics)
            continue
        if entry.cfg.eval.scenarios == 0:
            continue
        where.mkdir(parents=True, exist_ok=True)
        if on_variant is not None:
            on_variant(entry.name)
        metrics = await evaluate_policy(
            provider,
            entry.cfg,
            iteration=iteration,
            out=where / "episodes.jsonl",
            sampling=sampling,
            progress=progress,
            budget_usd=budget_left(),
            ledger=ledger,
        )
        write_json_atomic(metrics_path, metrics)
        results[entry.name] = metrics
    return results


def grid_spent_usd(run: RunPaths) -> float:
    """Dollars the grid's episodes cost, over every iteration of a run."""
    total = 0.0
    for i in run.iterations():
        for path in sorted(grid_dir(run.iteration(i).root).glob("*/episodes.jsonl")):
            total += sum(e.usage.cost_usd for e in read_jsonl(path, Episode))
    return total


def read_grid(iteration_root: Path) -> dict[str, EvalMetrics]:
    """The grid metrics an iteration directory holds, by variant name (sorted)."""
    root = grid_dir(iteration_root)
    if not root.is_dir():
        return {}
    found = sorted(p for p in root.iterdir() if (p / "metrics.json").is_file())
    return {p.name: read_json(p / "metrics.json", EvalMetrics) for p in found}


__all__ = [
    "GridEntry",
    "check_grid_disjoint",
    "describe_variant",
    "evaluate_grid",
    "grid_dir",
    "grid_entries",
    "grid_spent_usd",
    "read_grid",
    "unseen_contexts",
    "variant_config",
    "variant_seed",
]
