"""Scenarios: a seeded numeric instance dressed in a natural-language context.

The library is one TOML file per context in `prompts/scenarios/<name>.toml` (title, description,
action noun, reward description, a pool of arm names). A scenario is fully determined by
(config, run seed, split, index): its seed comes from `scenario_seed`, its instance from
`make_instance(cfg.env, seed)`, and its context and arm names from a generator keyed by the same
seed but salted, so choosing words never touches the reward draws.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from rmft_api.config import Config
from rmft_api.envs.base import EnvKind, Instance, Split, scenario_seed
from rmft_api.envs.factory import make_instance
from rmft_api.envs.templates import packaged_prompts_dir
from rmft_api.errors import ConfigError

# Every pool must cover the largest K the config allows (EnvConfig.num_arms ≤ 26).
MIN_POOL_SIZE = 26
# One or two ASCII words of letters, digits and inner hyphens: nothing the parser trims.
_NAME_RE = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*(?: [A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)?")
# Salt of the word-choice stream, distinct from the instance's stream of the same seed.
_CONTEXT_SALT = 0xC07E
_TEXT_FIELDS = ("title", "description", "action_noun", "action_plural", "reward_description")
# Scenarios a ScenarioRange keeps built (the live episodes' and those being read back).
_RECENT_SCENARIOS = 1024


@dataclass(frozen=True)
class ContextSpec:
    """One library entry: the texts of a context and its whole arm-name pool."""

    name: str
    title: str
    description: str
    action_noun: str
    action_plural: str
    reward_description: str
    arm_pool: tuple[str, ...]


@dataclass(frozen=True)
class ScenarioContext:
    """The words of one scenario: its context's texts and the K arm names drawn for it."""

    name: str
    title: str
    description: str
    action_noun: str
    action_plural: str
    reward_description: str
    arm_names: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Scenario:
    """One scenario: ids, seed, hidden numeric instance and natural-language context."""

    scenario_id: str  # e.g. "train-0007"
    index: int
    split: Split
    seed: int
    env_kind: EnvKind
    instance: Instance
    context: ScenarioContext


def check_arm_pool(name: str, pool: list[str]) -> None:
    """Raise ConfigError unless the pool is large, ASCII, distinct and substring-free."""
    where = f"scenario context '{name}'"
    if len(pool) < MIN_POOL_SIZE:
        raise ConfigError(f"{where}: arm_names holds {len(pool)} names; need ≥ {MIN_POOL_SIZE}")
    for arm in pool:
        if not isinstance(arm, str) or not _NAME_RE.fullmatch(arm):
            raise ConfigError(f"{where}: arm name {arm!r} must be one or two ASCII words")
        if "answer" in arm.casefold():
            raise ConfigError(f"{where}: arm name {arm!r} contains the answer marker word")
    lowered = [n.casefold() for n in pool]
    for i, a in enumerate(lowered):
        for j, b in enumerate(lowered):
            if i != j and a in b:
                raise ConfigError(f"{where}: arm name {pool[i]!r} is inside {pool[j]!r}")


def _read_context(path: Path) -> ContextSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read scenario context {path}: {e}") from e
    expected = {*_TEXT_FIELDS, "arm_names"}
    if set(data) != expected:
        raise ConfigError(
            f"scenario context {path}: keys {sorted(data)}; expected exactly {sorted(expected)}"
        )
    for key in _TEXT_FIELDS:
        if not isinstance(data[key], str) or not data[key].strip() or not data[key].isascii():
            raise ConfigError(f"scenario context {path}: '{key}' must be non-empty ASCII text")
    pool = data["arm_names"]
    if not isinstance(pool, list):
        raise ConfigError(f"scenario context {path}: 'arm_names' must be a list")
    check_arm_pool(path.stem, pool)
    return ContextSpec(name=path.stem, **{k: data[k] for k in _TEXT_FIELDS}, arm_pool=tuple(pool))


@functools.lru_cache(maxsize=8)
def _library(directories: tuple[str, ...]) -> dict[str, ContextSpec]:
    library: dict[str, ContextSpec] = {}
    for directory in directories:
        for path in sorted(Path(directory).glob("*.toml")):
            library[path.stem] = _read_context(path)
    return library


def load_library(templates_dir: str | Path | None = None) -> dict[str, ContextSpec]:
    """Every context by name: the packaged ones, plus or replaced by `<templates_dir>/scenarios`."""
    directories = [str(packaged_prompts_dir() / "scenarios")]
    if templates_dir is not None:
        extra = Path(templates_dir).expanduser() / "scenarios"
        if extra.is_dir():
            directories.append(str(extra.resolve()))
    library = _library(tuple(directories))
    if not library:
        raise ConfigError(f"no scenario contexts found in {', '.join(directories)}")
    return library


def _choose_context(
    library: dict[str, ContextSpec], allowed: list[str], *, seed: int, num_arms: int
) -> ScenarioContext:
    unknown = sorted(set(allowed) - set(library))
    if unknown:
        raise ConfigError(
            f"prompt.contexts: unknown context(s) {', '.join(unknown)}; "
            f"available: {', '.join(sorted(library))}"
        )
    names = sorted(set(allowed)) if allowed else sorted(library)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _CONTEXT_SALT]))
    spec = library[names[int(rng.integers(len(names)))]]
    if num_arms > len(spec.arm_pool):
        raise ConfigError(
            f"scenario context '{spec.name}' has {len(spec.arm_pool)} arm names; K = {num_arms}"
        )
    order = rng.permutation(len(spec.arm_pool))[:num_arms]
    return ScenarioContext(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        action_noun=spec.action_noun,
        action_plural=spec.action_plural,
        reward_description=spec.reward_description,
        arm_names=tuple(spec.arm_pool[int(i)] for i in order),
    )


def scenario_id(split: Split, index: int) -> str:
    return f"{split}-{index:04d}"


def build_scenario(
    cfg: Config, *, split: Split, index: int, run_seed: int | None = None
) -> Scenario:
    """Scenario `index` of `split`; deterministic in (cfg.env, cfg.prompt, seed, split, index)."""
    if index < 0:
        raise ConfigError(f"scenario index must be ≥ 0, got {index}")
    seed = scenario_seed(cfg.run.seed if run_seed is None else run_seed, split, index)
    library = load_library(cfg.prompt.templates_dir)
    context = _choose_context(
        library, list(cfg.prompt.contexts), seed=seed, num_arms=cfg.env.num_arms
    )
    return Scenario(
        scenario_id=scenario_id(split, index),
        index=index,
        split=split,
        seed=seed,
        env_kind=cfg.env.kind,
        instance=make_instance(cfg.env, seed),
        context=context,
    )


class ScenarioRange(Sequence[Scenario]):
    """Scenarios start .. start+count-1 of `split`, each built when it is asked for.

    A million scenarios cost nothing until played: a rollout walks the range as it starts
    episodes, so memory is bounded by the episodes in flight, not by M. The last few scenarios
    built are kept (episodes of one scenario are played and read together).
    """

    def __init__(self, cfg: Config, *, split: Split, count: int, start: int = 0) -> None:
        if count < 0 or start < 0:
            raise ConfigError(f"scenario range start {start}, count {count}: both must be ≥ 0")
        self.cfg, self.split, self.start, self.size = cfg, split, start, count
        self._recent: OrderedDict[int, Scenario] = OrderedDict()

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, i: int) -> Scenario: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Scenario]: ...

    def __getitem__(self, i: int | slice) -> Scenario | Sequence[Scenario]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.size))]
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"scenario {i} of a range of {self.size}")
        return self.by_index(self.start + i)

    def __iter__(self) -> Iterator[Scenario]:
        for index in range(self.start, self.start + self.size):
            yield self.by_index(index)

    def by_index(self, index: int) -> Scenario:
        """The scenario whose `index` (its number in the split) is `index`."""
        scenario = self._recent.get(index)
        if scenario is None:
            if not self.start <= index < self.start + self.size:
                raise IndexError(f"scenario index {index} is outside {self.start}..{self.stop}")
            scenario = build_scenario(self.cfg, split=self.split, index=index)
            self._recent[index] = scenario
            if len(self._recent) > _RECENT_SCENARIOS:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(index)
        return scenario

    @property
    def stop(self) -> int:
        return self.start + self.size - 1

    def seeds(self) -> Iterator[int]:
        """The scenarios' seeds, without building them."""
        for index in range(self.start, self.start + self.size):
            yield scenario_seed(self.cfg.run.seed, self.split, index)

    def ids(self) -> Iterator[str]:
        """The scenarios' ids, without building them."""
        for index in range(self.start, self.start + self.size):
            yield scenario_id(self.split, index)


class ScenarioChain(Iterable[Scenario]):
    """Several ScenarioRanges one after the other (every iteration's training scenarios)."""

    def __init__(self, ranges: Sequence[ScenarioRange]) -> None:
        self.ranges = list(ranges)

    def __iter__(self) -> Iterator[Scenario]:
        for r in self.ranges:
            yield from r

    def seeds(self) -> Iterator[int]:
        for r in self.ranges:
            yield from r.seeds()


def scenario_ids(scenarios: Iterable[Scenario]) -> Iterator[str]:
    """The ids of `scenarios` (a ScenarioRange gives them without building any)."""
    if isinstance(scenarios, ScenarioRange):
        return scenarios.ids()
    return (s.scenario_id for s in scenarios)


def scenario_seeds(scenarios: Iterable[Scenario]) -> Iterator[int]:
    """The seeds of `scenarios` (ranges and chains compute them without building any)."""
    if isinstance(scenarios, ScenarioRange | ScenarioChain):
        return scenarios.seeds()
    return (s.seed for s in scenarios)


def build_scenarios(cfg: Config, *, split: Split, count: int, start: int = 0) -> ScenarioRange:
    """Scenarios start .. start+count-1 of `split`, built lazily (ScenarioRange)."""
    return ScenarioRange(cfg, split=split, count=count, start=start)
