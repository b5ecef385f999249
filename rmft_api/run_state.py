"""run.json and state.json: what a run is (resolved config, hash, versions) and where it stands."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rmft_api import __version__
from rmft_api.config import Config, config_from_dict
from rmft_api.credentials import scrub
from rmft_api.errors import StateError
from rmft_api.providers.pricing import ModelPrice
from rmft_api.schema import SCHEMA_VERSION, Episode, JobRef, Record
from rmft_api.store import RunLock, RunPaths, read_json, read_jsonl, write_json_atomic

Phase = Literal["evaluate", "rollout", "select", "export", "validate", "train", "done"]
# interrupted: Ctrl-C or SIGTERM; `run --resume` continues where it was.
RunStatus = Literal["running", "completed", "failed", "stopped", "interrupted"]


class RunInfo(Record):
    """run.json: written once when the run is created. Holds no secrets (none are config)."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    created_at: float
    config: dict[str, Any]  # the resolved config tree
    config_hash: str
    config_source: str | None
    package_version: str
    git_sha: str | None


class RunState(Record):
    """state.json: replaced atomically after every phase."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    iteration: int = 0
    phase: Phase = "evaluate"
    policy: str  # P_iteration, the policy this iteration plays
    policies: list[str]  # P_0 … P_iteration
    status: RunStatus = "running"
    message: str | None = None
    updated_at: float = Field(default_factory=time.time)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def init_run(
    run: RunPaths, cfg: Config, *, source: str | None, policy: str | None = None
) -> RunState:
    """Write run.json and the first state.json of a new run directory.

    `policy`: P_0's spec when it differs from cfg.policy.spec (a resolved placeholder).
    """
    info = RunInfo(
        run_id=run.run_id,
        created_at=time.time(),
        config=cfg.model_dump(mode="json"),
        config_hash=cfg.hash(),
        config_source=source,
        package_version=__version__,
        git_sha=_git_sha(),
    )
    write_json_atomic(run.run_json, info)
    first = policy or cfg.policy.spec
    state = RunState(run_id=run.run_id, policy=first, policies=[first])
    save_state(run, state)
    return state


def load_info(run: RunPaths) -> RunInfo:
    if not run.run_json.is_file():
        raise StateError(f"{run.root} is not a run directory (no run.json)")
    return read_json(run.run_json, RunInfo)


def load_config_of(run: RunPaths) -> Config:
    return config_from_dict(load_info(run).config, source=str(run.run_json))


def load_state(run: RunPaths) -> RunState:
    if not run.state_json.is_file():
        raise StateError(
            f"{run.root} has no state.json (never started, or moved aside): "
            f"`rmft-api run --resume {run.root}` starts it from what is on disk"
        )
    try:
        return read_json(run.state_json, RunState)
    except StateError as e:
        raise StateError(
            f"{e}. Move it aside (`mv {run.state_json} {run.state_json}.corrupt`) and "
            f"`rmft-api run --resume {run.root}`: the run starts again from iteration 0 and "
            "re-uses every phase finished on disk (cached replies, episodes, job.json), so "
            "nothing is paid or trained twice"
        ) from e


def state_for_resume(run: RunPaths) -> RunState:
    """state.json, or — when it is missing (a kill before the first one, or moved aside after
    corruption) — the first state of the run, from run.json: every phase re-finds its outputs."""
    if run.state_json.is_file():
        return load_state(run)
    from rmft_api.bootstrap import resolve_bootstrap_spec
    from rmft_api.fetch_model import resolve_fetched_spec

    spec = load_config_of(run).policy.spec
    first = resolve_fetched_spec(resolve_bootstrap_spec(spec))
    state = RunState(run_id=run.run_id, policy=first, policies=[first])
    save_state(run, state)
    return state


def save_state(run: RunPaths, state: RunState) -> None:
    update: dict[str, Any] = {"updated_at": time.time()}
    if state.message is not None:  # error messages quote servers and URLs: no key gets in
        update["message"] = scrub(state.message)
    write_json_atomic(run.state_json, state.model_copy(update=update))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ, e.g. ["env.horizon: 100 → 200"]."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return [
        f"{key}: {a.get(key)!r} → {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def requests_spent_usd(run: RunPaths) -> float:
    """What the episodes of the training rollouts and main evaluations cost (their usage):
    read once, to carry an older run's spending into its new ledger (pipeline.py)."""
    total = 0.0
    for i in run.iterations():
        paths = run.iteration(i)
        for path in (paths.episodes, paths.eval_episodes):
            if path.is_file():
                total += sum(e.usage.cost_usd for e in read_jsonl(path, Episode))
    return total


def training_spent_usd(run: RunPaths, overrides: Mapping[str, ModelPrice] | None = None) -> float:
    """Billed training of the hosted jobs (job.json's trained tokens) at the base model's
    training rate (a fine-tuned `ft:<base>:...` is priced as its base), `[prices]` first."""
    from rmft_api.providers.pricing import PriceTable

    total = 0.0
    prices = PriceTable(overrides)
    for i in run.iterations():
        paths = run.iteration(i)
        if paths.job.is_file():
            ref = read_json(paths.job, JobRef)
            if ref.trained_tokens:
                model = ref.base_policy.split("/", 1)[-1]  # openai/<m>, azure/<deployment>
                total += prices.training_cost(model, tokens=ref.trained_tokens)
    return total


def default_config_path() -> Path:
    """The embedded default config (configs/default.toml, shipped in the package)."""
    from rmft_api.shipped import default_config

    return default_config()


def open_run(
    config_path: str | Path | None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    resume: str | Path | None = None,
    force: bool = False,
    on_bootstrap_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Config, RunPaths]:
    """A new run directory for a config, or an existing one to resume.

    `on_bootstrap_step` follows the build of the bootstrap model when the policy names one that
    is not built yet.

    Resuming with a config file or overrides compares them with run.json and refuses any
    difference (listing the keys) unless `force`. The run lock is released on return: a caller
    that goes on to drive the run uses `open_run_held` so no other process can slip in between.
    """
    cfg, run, lock = open_run_held(
        config_path,
        overrides=overrides,
        name=name,
        resume=resume,
        force=force,
        on_bootstrap_step=on_bootstrap_step,
    )
    lock.release()
    return cfg, run


def open_run_held(
    config_path: str | Path | None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    name: str | None = None,
    resume: str | Path | None = None,
    force: bool = False,
    on_bootstrap_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Config, RunPaths, RunLock]:
    """`open_run`, returning the run lock still held (hand it to `Pipeline(lock=...)`).

    Resuming takes the lock before anything is read or written; a new run takes it on its fresh
    directory before run.json exists, so a second process never sees a half-made run unlocked.
    """
    from rmft_api.config import load_config
    from rmft_api.store import create_run_dir

    if resume is not None:
        run = RunPaths(Path(resume))
        # Lock first: a run another process holds is refused before anything here is written.
        lock = RunLock(run.root)
        lock.acquire()
        try:
            cfg = _reopen_run(run, config_path, overrides=overrides, force=force)[0]
        except BaseException:
            lock.release()
            raise
        return cfg, run, lock
    from rmft_api.bootstrap import resolve_bootstrap_spec
    from rmft_api.fetch_model import resolve_fetched_spec
    from rmft_api.shipped import find_config

    path = find_config(config_path) if config_path is not None else default_config_path()
    cfg = load_config(path, overrides=overrides)
    # hf/@bootstrap → hf/<cached model dir>, built first when missing: before the run directory
    # exists, so a kill during the build leaves no half-made run.
    policy = resolve_bootstrap_spec(cfg.policy.spec, on_step=on_bootstrap_step)
    policy = resolve_fetched_spec(policy)  # hf/@smollm2 → its converted directory (fetch-model)
    run_name = name or cfg.run.name or path.stem
    run = create_run_dir(cfg.run.runs_dir, run_name)
    lock = RunLock(run.root)
    lock.acquire()
    try:
        init_run(run, cfg, source=str(path), policy=policy)
    except BaseException:
        lock.release()
        raise
    return cfg, run, lock


def _reopen_run(
    run: RunPaths,
    config_path: str | Path | None,
    *,
    overrides: list[str] | tuple[str, ...],
    force: bool,
) -> tuple[Config, RunPaths]:
    """The config to resume `run` with (its own, or a checked new one written to run.json);
    the caller holds the run lock."""
    from rmft_api.config import load_config

    stored = load_config_of(run)
    if config_path is None and not overrides:
        return stored, run
    if config_path is None:
        from rmft_api.config import apply_override, parse_override

        data = stored.model_dump(mode="json")
        for item in overrides:
            keys, value = parse_override(item)
            apply_override(data, keys, value)
        new = config_from_dict(data, source="--set")
    else:
        new = load_config(config_path, overrides=overrides)
    diff = config_differences(stored, new)
    if diff and not force:
        raise StateError(
            f"the config differs from the one {run.root} was started with: "
            + "; ".join(diff)
            + " (resume without a config to keep the original, or pass --force)"
        )
    if diff:
        info = load_info(run)
        write_json_atomic(
            run.run_json,
            info.model_copy(
                update={"config": new.model_dump(mode="json"), "config_hash": new.hash()}
            ),
        )
    return new, run
