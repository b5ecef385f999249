"""Rollout benchmarks: API fan-out throughput, rate-limit utilisation, lock-step speed-up.

    .venv/bin/python benchmarks/rollout.py [--json] [--quick] [--only throughput,rpm,lockstep]

- throughput_ratio: the sandbox (its own process) answers every chat after a fixed 50 ms;
  512 episodes × 50 rounds at concurrency 256. Ratio = wall / (episodes·rounds·0.05 /
  min(concurrency, episodes)), the time a perfect client would need. Target ≤ 1.15.
- cpu_ms_per_request: CPU time of this (client) process per request in that run: SDK, retry
  layer, rollout engine, prompt rendering and parsing together; also the sandbox process's CPU
  per request, and the request rate one client process could reach with a core of its own
  (1000 / cpu_ms) with the ratio that would leave (`*_client_bound_ratio`).
- light_ratio: the same measure at a load two shared cores can carry (80 requests/s): 32
  episodes × 25 rounds, concurrency 4, single-turn prompts (constant size): the scheduling
  overhead of the fan-out itself.
- rpm_utilization, share_429: the sandbox enforces 3000 requests/min (as 150 per 3 s window, so
  the run spans many windows in seconds) and the client is configured with the same limit.
  Utilisation = achieved steady-state rate over whole windows after the first / the limit
  (client-side 1 ms jitter can show 1.001); share_429 =
  the sandbox's 429s / its chat requests. Targets ≥ 0.90 and ≤ 0.02.
- lockstep_speedup: a tiny local HF model, 64 episodes × 20 rounds (single-turn prompts with
  summarized history, up to 64 new tokens per reply, torch on 1 thread by default): lock-step
  batches of 64 against one request at a time (same engine, `live_episodes=1`, same provider
  settings: greedy, 64 new tokens, prefix cache on). Target ≥ 8. Also the cost of one batch
  of 64 in single-row calls (64 / that = the speed-up of generate alone). Measured for the
  fast path (`lockstep_*`) and the public path (`lockstep_public_*`: plain batched `generate`,
  what an untested transformers release gets), whose replies must be identical;
  `lockstep_fast_over_public` is the lock-step wall time of the public path over the fast one.

The last line printed with --json is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rmft_api.config import Config, config_from_dict
from rmft_api.envs.scenarios import build_scenarios
from rmft_api.providers.base import Provider, SamplingParams
from rmft_api.rollout import read_episodes, run_rollouts
from rmft_api.rollout_progress import RolloutSummary

SAMPLING = SamplingParams(temperature=0, max_tokens=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sandbox:
    url: str  # base_url for an OpenAI client
    pid: int


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sandbox(*args: str) -> Iterator[Sandbox]:
    """`rmft-api sandbox` in its own process (its CPU is not this client's)."""
    port = free_port()
    command = [sys.executable, "-m", "rmft_api.cli", "sandbox", "--port", str(port), *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the sandbox did not start")
            time.sleep(0.1)
        yield Sandbox(url=f"{root}/v1", pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def sandbox_stats(base_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(base_url.removesuffix("/v1") + "/sandbox/stats").json()
    return stats


def make_cfg(*, horizon: int, num_arms: int = 5, **sections: dict[str, Any]) -> Config:
    env = {"kind": "mab", "num_arms": num_arms, "horizon": horizon}
    return config_from_dict({"env": env, **sections})


def play(
    provider: Provider,
    cfg: Config,
    *,
    episodes: int,
    out: Path,
    live_episodes: int | None = None,
    sampling: SamplingParams = SAMPLING,
) -> RolloutSummary:
    scenarios = build_scenarios(cfg, split="train", count=episodes)

    async def run() -> RolloutSummary:
        try:
            return await run_rollouts(
                provider,
                scenarios,
                cfg=cfg,
                iteration=0,
                rollouts_per_scenario=1,
                out=out,
                sampling=sampling,
                live_episodes=live_episodes,
            )
        finally:
            await provider.aclose()  # on this loop: its connections belong to it

    return asyncio.run(run())


def bench_throughput(
    tmp: Path,
    *,
    episodes: int,
    rounds: int,
    concurrency: int,
    prefix: str = "throughput",
    transcript: str = "multi_turn",
) -> dict[str, Any]:
    from rmft_api.providers.openai import OpenAIProvider

    latency_s = 0.05
    with sandbox("--latency-ms", str(latency_s * 1000)) as server:
        client = OpenAIProvider("sandbox", base_url=server.url, concurrency=concurrency)
        server_cpu0 = process_cpu_s(server.pid)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = play(
            client,
            make_cfg(horizon=rounds, prompt={"transcript": transcript}),
            episodes=episodes,
            out=tmp / f"{prefix}.jsonl",
            live_episodes=episodes,  # every episode live: the limiter alone bounds requests
        )
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server_cpu1 = process_cpu_s(server.pid)
    ideal = episodes * rounds * latency_s / min(concurrency, episodes)
    cpu_ms = 1000 * cpu / summary.requests
    server_ms = (
        1000 * (server_cpu1 - server_cpu0) / summary.requests
        if server_cpu0 is not None and server_cpu1 is not None
        else None
    )
    return {
        f"{prefix}_episodes": episodes,
        f"{prefix}_rounds": rounds,
        f"{prefix}_concurrency": concurrency,
        f"{prefix}_transcript": transcript,
        f"{prefix}_wall_s": round(wall, 2),
        f"{prefix}_ideal_s": round(ideal, 2),
        f"{prefix}_ratio": round(wall / ideal, 3),
        f"{prefix}_requests_per_s": round(summary.requests / wall, 1),
        f"{prefix}_cpu_ms_per_request": round(cpu_ms, 3),
        f"{prefix}_server_cpu_ms_per_request": round(server_ms, 3) if server_ms else None,
        # What one client process could send with a core of its own (its CPU per request is
        # the limit), and the ratio that would leave: the floor of this machine-independent
        # part of the measure.
        f"{prefix}_client_core_ceiling_rps": round(1000 / cpu_ms, 1),
        f"{prefix}_client_bound_ratio": round(
            max(1.0, summary.requests / ideal * cpu_ms / 1000), 2
        ),
        f"{prefix}_complete": summary.complete,
    }


def bench_rpm(tmp: Path, *, requests: int) -> dict[str, Any]:
    from rmft_api.providers.openai import OpenAIProvider

    per_minute, window_s = 3000, 3.0
    limit = int(per_minute * window_s / 60)  # 150 per 3 s window
    args = ("--rpm", str(limit), "--window-s", str(window_s))
    rounds = 25
    with sandbox(*args) as server:
        url = server.url
        client = OpenAIProvider(
            "sandbox", base_url=url, concurrency=64, rpm=limit, window_s=window_s
        )
        summary = play(
            client,
            make_cfg(horizon=rounds),
            episodes=max(1, requests // rounds),
            out=tmp / "rpm.jsonl",
            live_episodes=128,
        )
        stats = sandbox_stats(url)
    arrivals = sorted(stats["chat_arrivals"])
    # From the first arrival past the first window (the opening burst) to the first arrival k
    # whole windows later: a limiter admits each window's quota as a burst when the window
    # frees, so both ends sit at the start of a burst and the span holds k windows' quotas
    # (a rate over first..last arrival would leave out the idle end of the last window).
    rate = 0.0
    start = next((t for t in arrivals if t >= arrivals[0] + window_s), None)
    if start is not None and (k := int((arrivals[-1] - start) // window_s)) >= 1:
        end = next(t for t in arrivals if t >= start + k * window_s)
        rate = sum(1 for t in arrivals if start <= t < end) / (end - start)
    chat_requests = stats["requests"].get("/v1/chat/completions", 0)
    return {
        "rpm_limit_per_min": per_minute,
        "rpm_window_s": window_s,
        "rpm_requests": summary.requests,
        "rpm_utilization": round(rate / (limit / window_s), 3),
        "share_429": round(stats["rate_limited"] / max(chat_requests, 1), 4),
    }


def bench_lockstep(tmp: Path, *, episodes: int, rounds: int, threads: int) -> dict[str, Any]:
    import torch

    from rmft_api.models.tiny import build_tiny_lm
    from rmft_api.providers.hf import HFProvider

    torch.set_num_threads(threads)
    sampling = SamplingParams(temperature=0, max_tokens=64)  # a short reasoning + answer
    model = build_tiny_lm(tmp / "tiny", seed=0)
    # Short prompts, as for any small local model: each round a fresh [system, user] chat with
    # the summarized history (a 20-round multi-turn chat of an untrained model's garbage and
    # format reminders reaches ~3k tokens, and a padded batch of 64 such prompts needs GBs).
    cfg = make_cfg(
        horizon=rounds,
        prompt={"transcript": "single_turn", "history": "summarized"},
        parse={"max_reprompts": 0},
    )
    walls: dict[str, float] = {}
    calls: dict[str, int] = {}
    hit_rate: dict[str, float | None] = {}
    replies: dict[str, list[list[str]]] = {}
    runs = [(path, live) for path in ("fast", "public") for live in (episodes, 1)]
    for fast_path, live in runs:
        name = f"{'lockstep' if live > 1 else 'sequential'}_{fast_path}"
        provider = HFProvider(
            "hf/tiny",
            model_path=model,
            batch_size=episodes,
            device="cpu",
            fast_path="on" if fast_path == "fast" else "off",
        )
        began = time.perf_counter()
        summary = play(
            provider,
            cfg,
            episodes=episodes,
            out=tmp / f"{name}.jsonl",
            live_episodes=live,
            sampling=sampling,
        )
        walls[name] = time.perf_counter() - began
        calls[name] = provider.batches
        cache = provider.prefix_cache
        hit_rate[name] = (
            round(cache.hits / max(1, cache.hits + cache.misses), 3) if cache is not None else None
        )
        assert summary.complete == episodes
        episodes_played = sorted(read_episodes(tmp / f"{name}.jsonl"), key=lambda e: e.episode_id)
        replies[name] = [[a.reply for st in e.steps for a in st.attempts] for e in episodes_played]
    # Greedy: the public path must give exactly the fast path's replies.
    assert len({json.dumps(r) for r in replies.values()}) == 1, "replies differ between paths"
    figures: dict[str, Any] = {
        "lockstep_episodes": episodes,
        "lockstep_rounds": rounds,
        "lockstep_max_tokens": sampling.max_tokens,
        "torch_threads": threads,
        "lockstep_replies_identical": True,
    }
    for path in ("fast", "public"):
        tag = "" if path == "fast" else "_public"
        lock, seq = walls[f"lockstep_{path}"], walls[f"sequential_{path}"]
        batch_ms = 1000 * lock / calls[f"lockstep_{path}"]
        single_ms = 1000 * seq / calls[f"sequential_{path}"]
        figures |= {
            f"lockstep{tag}_wall_s": round(lock, 2),
            f"sequential{tag}_wall_s": round(seq, 2),
            f"lockstep{tag}_speedup": round(seq / lock, 2),
            # Wall time per generate call (engine included): a batch of `episodes` rows costs
            # this many single-row calls.
            f"lockstep{tag}_ms_per_batch": round(batch_ms, 1),
            f"sequential{tag}_ms_per_request": round(single_ms, 1),
            f"lockstep{tag}_batch_cost_in_singles": round(batch_ms / single_ms, 2),
        }
    figures["lockstep_prefix_hit_rate"] = hit_rate["lockstep_fast"]
    # How much the fast path buys on the same machine in the same run.
    figures["lockstep_fast_over_public"] = round(
        walls["lockstep_public"] / walls["lockstep_fast"], 2
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="Print one JSON object last.")
    parser.add_argument("--quick", action="store_true", help="1/8 of the sizes (smoke run).")
    parser.add_argument(
        "--only", default="throughput,light,rpm,lockstep", help="Comma-separated parts."
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for the local model (1: no spinning on shared cores).",
    )
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    only = set(args.only.split(","))
    results: dict[str, Any] = {"cpus": os.cpu_count(), "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if "throughput" in only:
            results |= bench_throughput(tmp, episodes=512 // scale, rounds=50, concurrency=256)
            results["cpu_ms_per_request"] = results["throughput_cpu_ms_per_request"]
            print(f"throughput: {results}", file=sys.stderr)
        if "light" in only:
            # The same latency at a request rate two shared cores can carry (see the docs).
            results |= bench_throughput(
                tmp,
                episodes=32 // scale,
                rounds=25,
                concurrency=4,
                prefix="light",
                transcript="single_turn",
            )
        if "rpm" in only:
            results |= bench_rpm(tmp, requests=3000 // scale)
            print(f"rpm: {results}", file=sys.stderr)
        if "lockstep" in only:
            results |= bench_lockstep(
                tmp, episodes=64 // scale, rounds=20, threads=args.torch_threads
            )
    for key, value in results.items():
        print(f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
