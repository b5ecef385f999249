"""The status table: readable in a terminal and when piped into a log."""

from __future__ import annotations

import io

from rich.console import Console

from rmft_api.console import render_status, short_policy, table_console
from rmft_api.run_status import IterationStatus, StatusReport

BASE = "hf//home/user/.cache/rmft-api/bootstrap-0c8929daffc016ec"


def _row(index: int, policy: str, regret: float) -> IterationStatus:
    return IterationStatus(
        index=index,
        phase="done",
        policy=policy,
        eval_mean_regret=regret,
        eval_ci_low=regret - 0.5,
        eval_ci_high=regret + 0.5,
        eval_episodes=200,
        baselines={"ucb1": 3.82, "thompson": 3.57},
        kept=64,
        total=512,
        tokens=186_062,
        usd=0.0,
        usd_estimated=None,
        job_id=f"ftjob-{index:024d}",
        job_status="succeeded",
    )


def test_policies_are_named_relative_to_the_first() -> None:
    assert short_policy(BASE, BASE) == "P_0"
    assert short_policy(f"{BASE}+runs/demo-1/iter-002/adapter", BASE) == "+iter-002/adapter"
    assert short_policy("openai/ft:gpt-4o-mini:org::abc", "openai/gpt-4o-mini") == (
        "openai/ft:gpt-4o-mini:org::abc"
    )
    assert short_policy("hf//models/qwen+/runs/x/iter-000/adapter") == (
        "hf/…/qwen+iter-000/adapter"
    )


def test_a_piped_table_keeps_every_figure_whole() -> None:
    console = table_console()  # pytest captures stdout: not a terminal
    assert console.width >= 200
    out = io.StringIO()
    wide = Console(file=out, width=console.width)
    long_ft = "openai/ft:gpt-4o-mini-2024-07-18:my-org:rmft-iter-003:AbCdEf12"
    report = StatusReport(
        run="demo",
        run_dir="runs/demo",
        status="completed",
        iteration=2,
        phase="done",
        message=None,
        config_hash="0" * 16,
        iterations=[_row(0, BASE, 7.38), _row(1, long_ft, 6.68)],
        final=_row(2, f"{BASE}+runs/demo/iter-001/adapter", 4.30),
    )
    render_status(report, wide)
    text = out.getvalue()
    for figure in ("7.38", "[6.88, 7.88]", "[3.80, 4.80]", "3.82", "3.57", "64/512", "186,062"):
        assert figure in text
    assert "succeeded" in text and "rmft-iter-003:AbCdEf12" in text
    assert f"P_0 = {BASE}" in text


def test_names_that_look_like_markup_are_printed_as_they_are() -> None:
    # A job id or a message is the service's text, not markup: `[/x]` used to end the print.
    import pytest
    from rich.errors import MarkupError

    from rmft_api.console import RichReporter
    from rmft_api.schema import JobRef

    out = io.StringIO()
    row = _row(0, BASE, 7.38).model_copy(update={"job_id": "ftjob-[/x]-[bold]1"})
    report = StatusReport(
        run="demo",
        run_dir="runs/demo",
        status="failed",
        iteration=0,
        phase="train",
        message="job ftjob-[/x] failed: [red]quota[/red]",
        config_hash="0" * 16,
        iterations=[row],
        final=None,
    )
    render_status(report, Console(file=out, width=250))
    text = out.getvalue()
    assert "ftjob-[/x]-[bold]1" in text and "failed: [red]quota[/red]" in text

    reporter = RichReporter()
    reporter.console = Console(file=(lines := io.StringIO()), width=250)
    try:
        ref = JobRef(
            backend="openai",
            job_id="ftjob-[/x]",
            status="running",
            iteration=0,
            base_policy="openai/gpt-4o-mini",
            train_file="iter-000/train.jsonl",
        )
        reporter.job(ref)
        reporter.note("resume with [/x] in the name")
        reporter.phase(0, "train", "openai/ft:gpt-4o-mini:[/x]")
    except MarkupError as e:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"markup in a name broke the display: {e}")
    printed = lines.getvalue()
    assert "job ftjob-[/x]: running" in printed and "resume with [/x]" in printed
    assert "openai/ft:gpt-4o-mini:[/x]" in printed
