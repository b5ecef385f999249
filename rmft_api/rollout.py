"""The rollout engine: M scenarios × L rollouts of a provider, each finished episode on disk.

Two schedules, one episode logic:
- API providers (anything without `batch_size`): every episode is its own task asking one
  request at a time (rounds are sequential within an episode). The provider's own limiter bounds
  requests in flight; the engine only keeps `live` episodes started (default 2 × the policy's
  concurrency) so that episodes finish steadily and a kill loses little.
- Local providers (`batch_size`: hf, agent, scripted): lock-step. The next prompt of every live
  episode goes into one `generate` call (the provider chunks it by its batch size); a finished
  episode's slot is refilled from the queue, so the batch stays full.

Durability and resume. Each finished episode is appended to `episodes.jsonl` as one JSON line and
flushed (fsync at the end). On start, episodes already on disk with status complete or aborted
are skipped. An episode ended by a request that failed for good is written with status `error`
(its cost and partial transcript are kept) and played again on the next resume: the file may
then hold several records of one id, and the last one counts (`read_episodes`). Unfinished
episodes are not written; with the response cache on, replaying them on resume is free up to the
first turn that was never answered.

Stopping. A fatal provider error (auth, unknown model, quota exhausted), a parse abort, or the
budget cap stops new requests at once; requests in flight finish (their replies are cached),
everything finished is flushed, then the error is raised.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rmft_api.config import Config
from rmft_api.credentials import scrub
from rmft_api.envs.base import child_rng
from rmft_api.envs.scenarios import Scenario, ScenarioRange, scenario_ids
from rmft_api.envs.templates import TemplateSet, load_templates
from rmft_api.envs.text import TextEpisode
from rmft_api.errors import ParseAbortError, StateError
from rmft_api.ledger import Ledger
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.providers.limiter import estimate_request_tokens
from rmft_api.rollout_budget import BudgetGuard
from rmft_api.rollout_cache import ResponseCache, cache_key
from rmft_api.rollout_progress import ProgressCallback, RolloutProgress, RolloutSummary
from rmft_api.schema import Completion, Episode, EpisodeStatus, Message, Usage
from rmft_api.store import JsonlWriter, read_jsonl

log = logging.getLogger(__name__)

FINISHED_STATUSES = frozenset({"complete", "aborted"})
_PROGRESS_EVERY_S = 0.1


@runtime_checkable
class LockstepProvider(Protocol):
    """A provider that answers a whole batch at once, in-process (local models, agents)."""

    spec: str
    batch_size: int


def episode_id(iteration: int, scenario_id: str, rollout: int) -> str:
    return f"it{iteration:03d}-{scenario_id}-r{rollout:03d}"


def read_episodes(path: str | Path) -> list[Episode]:
    """The episodes of a file, the last record of each id only (a re-run supersedes an error),
    in (iteration, split, scenario, rollout) order: the file's order is completion order, which
    concurrency makes arbitrary, and nothing downstream may depend on it."""
    latest: dict[str, Episode] = {}
    for episode in read_jsonl(path, Episode, missing_ok=True):
        latest[episode.episode_id] = episode
    return sorted(
        latest.values(), key=lambda e: (e.iteration, e.split, e.scenario_index, e.rollout)
    )


@dataclass
class _Job:
    scenario: Scenario
    rollout: int
    episode_id: str


@dataclass
class _Play:
    """One episode being played: its text episode, usage so far and request ids."""

    job: _Job
    text: TextEpisode
    usage: Usage = field(default_factory=Usage)

    def request(self) -> tuple[list[Message], str]:
        rid = f"{self.job.episode_id}/{self.text.round_index}/{self.text.attempt_index}"
        return self.text.next_messages(), rid


class _Engine:
    def __init__(
        self,
        provider: Provider,
        *,
        cfg: Config,
        iteration: int,
        sampling: SamplingParams,
        writer: JsonlWriter,
        cache: ResponseCache | None,
        budget_usd: float | None,
        ledger: Ledger | None,
        progress: ProgressCallback | None,
        total: int,
        skipped: int,
    ) -> None:
        self.provider = provider
        self.cfg = cfg
        self.iteration = iteration
        self.sampling = sampling
        self.writer = writer
        self.cache = cache
        self.progress = progress
        self.templates: TemplateSet = load_templates(cfg.prompt.templates_dir)
        self.base_url: str | None = cfg.policy.base_url
        self.total, self.skipped = total, skipped
        self.started = time.monotonic()
        self.last_report = 0.0
        # Counters of this call.
        self.written = self.errors = self.aborted = 0
        self.requests = self.cached = self.parse_failures = 0
        self.usage = Usage()
        self.ledger = ledger
        self.budget = BudgetGuard(budget_usd, ledger=ledger)
        # Paid requests handed to the provider at once: the rest wait here, not in the
        # provider's queue, so a stop (or a failure) is seen before each one is sent.
        self.sending = asyncio.Semaphore(max(1, cfg.policy.concurrency))
        self.regret_sum, self.complete = 0.0, 0  # complete episodes, resumed ones included
        self.failure: BaseException | None = None

    # ------------------------------------------------------------ shared episode logic

    def start(self, job: _Job) -> _Play:
        rng = child_rng(self.cfg.run.seed, self.iteration, job.scenario.index, job.rollout)
        text = TextEpisode(
            job.scenario,
            prompt=self.cfg.prompt,
            parse=self.cfg.parse,
            rng=rng,
            templates=self.templates,
        )
        return _Play(job=job, text=text)

    @property
    def stopping(self) -> bool:
        return self.failure is not None

    def fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error

    def feed(self, play: _Play, completion: Completion) -> bool:
        """Give the reply to its episode; True when the episode is over (and written)."""
        self.requests += 1
        if completion.error is not None:
            self.finish(play, status="error", error=completion.error)
            return True
        play.usage = play.usage + completion.usage
        try:
            play.text.submit(completion.text, truncated=completion.finish_reason == "length")
        except ParseAbortError as e:
            self.finish(play, status="aborted", error=str(e))
            self.fail(e)
            return True
        if play.text.done:
            self.finish(play, status="complete", error=None)
            return True
        return False

    def finish(self, play: _Play, *, status: EpisodeStatus, error: str | None) -> None:
        episode = play.text.to_episode(
            episode_id=play.job.episode_id,
            iteration=self.iteration,
            rollout=play.job.rollout,
            policy_spec=self.provider.spec,
            usage=play.usage,
            status=status,
            error=None if error is None else scrub(error),  # no key reaches episodes.jsonl
        )
        self.writer.write(episode)
        self.written += 1
        self.errors += episode.status == "error"
        self.aborted += episode.status == "aborted"
        self.parse_failures += sum(
            1 for step in episode.steps for a in step.attempts if a.parse_error is not None
        )
        if episode.status == "complete":
            self.regret_sum += episode.regret
            self.complete += 1
        self.report(force=True)

    # ------------------------------------------------------------ requests (cache, budget)

    async def ask(self, requests: Sequence[tuple[list[Message], str]]) -> list[Completion]:
        """Replies in order: cached ones free, the rest from the provider in one call."""
        keys: list[str | None] = [None] * len(requests)
        out: list[Completion | None] = [None] * len(requests)
        if self.cache is not None:
            for i, (messages, rid) in enumerate(requests):
                keys[i] = cache_key(
                    spec=self.provider.spec,
                    base_url=self.base_url,
                    messages=messages,
                    sampling=self.sampling,
                    request_id=rid,
                )
                out[i] = self.cache.get(keys[i] or "")
        missing = [i for i, c in enumerate(out) if c is None]
        self.cached += len(requests) - len(missing)
        if not missing:
            return [c for c in out if c is not None]
        sizes = [
            estimate_request_tokens(
                (m.content for m in requests[i][0]), max_tokens=self.sampling.max_tokens
            )
            for i in missing
        ]
        async with self.sending:
            replies = await self.send([requests[i] for i in missing], sizes)
        for i, reply in zip(missing, replies, strict=True):
            out[i] = reply
            if reply.error is None:
                self.usage = self.usage + reply.usage
            key = keys[i]
            if self.cache is not None and key is not None:
                self.cache.put(key, reply)
        return [c for c in out if c is not None]

    async def send(
        self, requests: Sequence[tuple[list[Message], str]], sizes: Sequence[int]
    ) -> list[Completion]:
        """Paid requests: admitted (stop request, earlier failure, budget), each recorded in the
        ledger before it is sent and settled after."""
        if self.failure is not None:
            raise self.failure  # another episode's request ended the call
        if self.ledger is not None:
            self.ledger.admit()
        await self.budget.reserve(sizes)
        estimates = [self.budget.estimate_usd(size) for size in sizes]
        entries = [
            self.ledger.open(estimate_usd=est, tokens=size) if self.ledger is not None else ""
            for est, size in zip(estimates, sizes, strict=True)
        ]
        replies: list[Completion] = []
        try:
            replies = await self.provider.generate(
                [messages for messages, _ in requests],
                self.sampling,
                request_ids=[rid for _, rid in requests],
            )
        finally:
            for j, size in enumerate(sizes):
                paid = j < len(replies) and replies[j].error is None
                cost = replies[j].usage.cost_usd if paid else None
                self.budget.settle(size, cost_usd=cost, failed_estimate_usd=estimates[j])
                if self.ledger is not None:
                    self.ledger.settle(entries[j], cost)
        return replies

    # ------------------------------------------------------------ the two schedules

    async def fan_out(self, jobs: Iterator[_Job], *, live: int) -> None:
        # `live` workers take the next job when their episode ends: the jobs (and the scenarios
        # they are built from) are made as they are started, never all up front.
        async def worker() -> None:
            for job in jobs:  # one shared iterator; next() never awaits, so no job is taken twice
                if self.stopping:
                    return
                play = self.start(job)
                while not self.stopping:
                    try:
                        [reply] = await self.ask([play.request()])
                    except Exception as e:  # recorded, raised after everything is flushed
                        self.fail(e)
                        return
                    if self.feed(play, reply):
                        break
                    self.report()

        results = await asyncio.gather(*(worker() for _ in range(live)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.fail(result)

    async def lockstep(self, jobs: Iterator[_Job], *, batch_size: int | None) -> None:
        live: list[_Play] = []
        more = True
        while (more or live) and not self.stopping:
            # Read each tick: a local model halves its batch size after running out of memory.
            pool: int = batch_size or int(getattr(self.provider, "batch_size", 1) or 1)
            while more and len(live) < max(1, pool):
                job = next(jobs, None)
                if job is None:
                    more = False
                else:
                    live.append(self.start(job))
            if not live:
                break
            try:
                replies = await self.ask([p.request() for p in live])
            except Exception as e:  # recorded, raised after everything is flushed
                self.fail(e)
                return
            live = [p for p, r in zip(live, replies, strict=True) if not self.feed(p, r)]
            self.report()

    # ------------------------------------------------------------ progress

    def snapshot(self) -> RolloutProgress:
        stats: Any = getattr(self.provider, "stats", None)
        return RolloutProgress(
            episodes_total=self.total,
            episodes_done=self.skipped + self.written,
            episodes_skipped=self.skipped,
            requests=self.requests,
            cached=self.cached,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            cost_usd=self.usage.cost_usd,
            parse_failures=self.parse_failures,
            rate_limited=int(getattr(stats, "rate_limited", 0) or 0),
            errors=self.errors,
            elapsed_s=time.monotonic() - self.started,
        )

    def report(self, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self.last_report >= _PROGRESS_EVERY_S:
            self.last_report = now
            self.progress(self.snapshot())


_GC_GEN0_FACTOR = 10
_gc_depth = 0  # rollouts running in this process (they may overlap on one event loop)
_gc_saved: tuple[int, ...] = gc.get_threshold()  # the thresholds to restore after the last


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Raise the collector's generation-0 threshold while rollouts run, then restore it.

    Each request allocates thousands of short-lived objects (HTTP, JSON, pydantic) while the
    live episodes hold their transcripts; at the default threshold (700) collections took ~20%
    of the client's CPU at 256 live episodes, at ten times it ~8%.
    """
    global _gc_depth, _gc_saved
    if _gc_depth == 0:
        _gc_saved = gc.get_threshold()
        if _gc_saved[0] > 0:  # 0: collection disabled by the caller, leave it so
            gc.set_threshold(_gc_saved[0] * _GC_GEN0_FACTOR, *_gc_saved[1:])
    _gc_depth += 1
    try:
        yield
    finally:
        _gc_depth -= 1
        if _gc_depth == 0 and _gc_saved[0] > 0:
            gc.set_threshold(*_gc_saved)


def _finished_on_disk(
    path: Path, wanted: Callable[[Episode], bool], spec: str
) -> dict[str, float | None]:
    """Finished episodes of this call already on disk: their regret by id (None: aborted)."""
    done: dict[str, float | None] = {}
    for episode in read_episodes(path):
        if episode.status not in FINISHED_STATUSES or not wanted(episode):
            continue
        if episode.policy_spec != spec:
            raise StateError(
                f"{path} already holds episode {episode.episode_id} of policy "
                f"{episode.policy_spec!r}, not {spec!r}; write to another directory"
            )
        done[episode.episode_id] = episode.regret if episode.status == "complete" else None
    return done


def _wanted(
    scenarios: Sequence[Scenario], *, iteration: int, rollouts: int
) -> Callable[[Episode], bool]:
    """Whether an episode on disk is one of this call's (scenarios × rollouts), decided without
    building the scenarios of a ScenarioRange."""
    if isinstance(scenarios, ScenarioRange):
        r = scenarios
        return lambda e: (
            e.iteration == iteration
            and e.split == r.split
            and r.start <= e.scenario_index < r.start + r.size
            and 0 <= e.rollout < rollouts
            and e.episode_id == episode_id(iteration, e.scenario_id, e.rollout)
        )
    ids = {episode_id(iteration, s.scenario_id, k) for s in scenarios for k in range(rollouts)}
    return lambda e: e.episode_id in ids


def _jobs(
    scenarios: Sequence[Scenario], *, iteration: int, rollouts: int, done: Container[str]
) -> Iterator[_Job]:
    """The (scenario, rollout) pairs not finished yet, made as they are taken: a scenario is
    built only when one of its rollouts is about to be played."""
    for k, sid in enumerate(scenario_ids(scenarios)):
        todo = [r for r in range(rollouts) if episode_id(iteration, sid, r) not in done]
        if todo:
            scenario = scenarios[k]
            for r in todo:
                yield _Job(scenario=scenario, rollout=r, episode_id=episode_id(iteration, sid, r))


async def run_rollouts(
    provider: Provider,
    scenarios: Sequence[Scenario],
    *,
    cfg: Config,
    iteration: int,
    rollouts_per_scenario: int,
    out: Path,
    sampling: SamplingParams,
    progress: ProgressCallback | None = None,
    cache: ResponseCache | None = None,
    budget_usd: float | None = None,
    live_episodes: int | None = None,
    ledger: Ledger | None = None,
) -> RolloutSummary:
    """Play every (scenario, rollout) not yet finished in `out` (episodes.jsonl) and append it.

    Args:
        budget_usd: dollars this call may spend — with a `ledger`, the cap on the ledger's
            total, which already counts what earlier invocations paid; the call stops
            (BudgetError) before a request that could pass it (rollout_budget.py).
        ledger: the run's ledger of paid requests (ledger.py): each request is recorded in it
            before it is sent and settled after.
        live_episodes: episodes started at once: API providers default to 2 × policy.concurrency,
            local providers to their batch size.

    Raises:
        FatalProviderError / QuotaExhaustedError, ParseAbortError, BudgetError: after every
        finished episode is on disk (see the module docstring).
    """
    out = Path(out)
    wanted = _wanted(scenarios, iteration=iteration, rollouts=rollouts_per_scenario)
    done = _finished_on_disk(out, wanted, provider.spec)
    todo = _jobs(scenarios, iteration=iteration, rollouts=rollouts_per_scenario, done=done)
    total = len(scenarios) * rollouts_per_scenario
    writer = JsonlWriter(out)
    engine = _Engine(
        provider,
        cfg=cfg,
        iteration=iteration,
        sampling=sampling,
        writer=writer,
        cache=cache,
        budget_usd=budget_usd,
        ledger=ledger,
        progress=progress,
        total=total,
        skipped=len(done),
    )
    finished = [regret for regret in done.values() if regret is not None]
    engine.regret_sum, engine.complete = sum(finished), len(finished)
    try:
        with _fewer_collections():
            if isinstance(provider, LockstepProvider):
                await engine.lockstep(todo, batch_size=live_episodes)
            else:
                live = live_episodes or 2 * cfg.policy.concurrency
                await engine.fan_out(todo, live=max(1, live))
    finally:
        writer.close()  # flush + fsync whatever happened
        engine.report(force=True)
    if engine.failure is not None:
        raise engine.failure
    complete = engine.complete
    return RolloutSummary(
        out=str(out),
        policy_spec=provider.spec,
        iteration=iteration,
        episodes_total=total,
        skipped=len(done),
        written=engine.written,
        complete=complete,
        errors=engine.errors,
        aborted=engine.aborted,
        requests=engine.requests,
        cached_requests=engine.cached,
        parse_failures=engine.parse_failures,
        rate_limited=engine.snapshot().rate_limited,
        usage=engine.usage,
        wall_s=time.monotonic() - engine.started,
        mean_regret=engine.regret_sum / complete if complete else None,
    )
