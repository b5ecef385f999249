"""Reports, comparisons and the config reference, on real run directories.

The run is real but skips training: iteration 0 is evaluated with a greedy agent, then the run is
moved to its final evaluation with UCB1 as "the fine-tuned policy" and the real Pipeline plays
that phase (main held-out set + grid) and writes the report, as at the end of any run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from rmft_api.cli import app
from rmft_api.config import Config, config_from_dict
from rmft_api.config_docs import DEFAULT_PATH, render_config_docs
from rmft_api.envs.base import child_rng
from rmft_api.errors import StateError
from rmft_api.evaluate import EvalMetrics, evaluate_policy, heldout_scenarios
from rmft_api.generalization import evaluate_grid, grid_dir, grid_entries
from rmft_api.pipeline import Pipeline
from rmft_api.providers.registry import resolve_policy, sampling_params
from rmft_api.report import build_report, paired_ratio, rank_shares, suff_fail_curve, write_report
from rmft_api.report_text import render_markdown
from rmft_api.rollout import read_episodes
from rmft_api.run_state import init_run, load_state, save_state
from rmft_api.store import RunPaths, create_run_dir, read_json, write_json_atomic

HORIZON, GAP, SCENARIOS = 20, 0.2, 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_config(
    root: Path,
    *,
    env: dict[str, Any],
    p0: str,
    seed: int = 5,
    baselines: tuple[str, ...] = ("ucb1", "thompson", "uniform"),
) -> Config:
    return config_from_dict(
        {
            "run": {"seed": seed, "runs_dir": str(root)},
            "env": env,
            "prompt": {"transcript": "single_turn", "contexts": ["buttons", "restaurant"]},
            "policy": {"spec": p0},
            "iterations": {"count": 1},
            "eval": {
                "scenarios": SCENARIOS,
                "baselines": list(baselines),
                "grid": [
                    {"name": "horizon-2x", "horizon_factor": 2},
                    {"name": "unseen", "unseen_contexts": True},
                ],
            },
            "trainer": {"kind": "lora"},
        }
    )


def start_run(cfg: Config, name: str) -> RunPaths:
    """A run whose iteration 0 is evaluated (main + grid) by policy P_0."""
    run = create_run_dir(cfg.run.runs_dir, name)
    init_run(run, cfg, source=None)
    provider, paths = resolve_policy(cfg), run.iteration(0)
    sampling = sampling_params(cfg)
    metrics = asyncio.run(
        evaluate_policy(provider, cfg, iteration=0, out=paths.eval_episodes, sampling=sampling)
    )
    write_json_atomic(paths.metrics, metrics)
    asyncio.run(
        evaluate_grid(
            provider,
            grid_entries(cfg),
            iteration=0,
            out_dir=grid_dir(paths.root),
            sampling=sampling,
        )
    )
    return run


def finish_with(run: RunPaths, cfg: Config, final: str) -> None:
    """Move the run to its final evaluation with `final` as P_1; the Pipeline does the rest."""
    state = load_state(run)
    update = {"iteration": 1, "phase": "evaluate", "policy": final}
    save_state(run, state.model_copy(update={**update, "policies": [*state.policies, final]}))
    Pipeline(cfg, run).run_to_end()


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, RunPaths]:
    root = tmp_path_factory.mktemp("runs")
    cfg = make_config(
        root, env={"kind": "mab", "num_arms": 5, "gap": GAP, "horizon": HORIZON}, p0="agent/greedy"
    )
    run = start_run(cfg, "bandit")
    finish_with(run, cfg, "agent/ucb1")
    return cfg, run


def test_the_pipeline_ends_a_run_with_the_report_and_plays_the_grid(
    bandit_run: tuple[Config, RunPaths],
) -> None:
    _, run = bandit_run
    assert load_state(run).status == "completed"
    for i in (0, 1):
        for variant in ("horizon-2x", "unseen"):
            where = run.iteration(i).root / "grid" / variant
            metrics = read_json(where / "metrics.json", EvalMetrics)
            assert metrics.complete == SCENARIOS and metrics.iteration == i
    report = run.report / "report.md"
    text = report.read_text()
    for figure in ("regret_curves", "heldout_regret", "suff_fail", "action_heatmap", "grid"):
        png = run.report / f"{figure}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
        assert f"]({figure}.png)" in text
    assert "## Generalization grid" in text and "| horizon-2x | mab K=5 T=40" in text


def test_report_numbers_are_the_runs_numbers(bandit_run: tuple[Config, RunPaths]) -> None:
    _, run = bandit_run
    summary = json.loads((run.report / "summary.json").read_text())
    first = read_json(run.iteration(0).metrics, EvalMetrics)
    last = read_json(run.iteration(1).metrics, EvalMetrics)
    assert first.regret and last.regret
    assert summary["improvement"]["first_regret"] == first.regret.model_dump()
    assert summary["improvement"]["last_regret"] == last.regret.model_dump()
    ucb = summary["iterations"][1]["vs_baselines"]["ucb1"]
    # Every episode completed, so the paired ratio of sums is the ratio of the two means.
    assert ucb["ratio"] == pytest.approx(last.regret.mean / last.baselines["ucb1"].mean)
    assert ucb["ci_low"] <= ucb["ratio"] <= ucb["ci_high"] and ucb["scenarios"] == SCENARIOS
    overlap = not (
        last.regret.ci_high < first.regret.ci_low or first.regret.ci_high < last.regret.ci_low
    )
    assert summary["improvement"]["cis_overlap"] == overlap
    assert [it["label"] for it in summary["iterations"]] == ["0", "final"]
    # Policy − agent per scenario, paired, with the agents averaged over their seeds.
    diff = summary["iterations"][1]["metrics"]["differences"]["ucb1"]
    assert diff["mean"] == pytest.approx(last.regret.mean - last.baselines["ucb1"].mean)
    assert diff["scenarios"] == SCENARIOS and last.baseline_seeds == 10
    text = (run.report / "report.md").read_text()
    assert "per scenario (paired)" in text and "− ucb1 [95% CI]" in text


def test_rank_shares_and_suff_fail_agree_with_the_metrics(
    bandit_run: tuple[Config, RunPaths],
) -> None:
    cfg, run = bandit_run
    scenarios = {s.scenario_id: s for s in heldout_scenarios(cfg)}
    for i in (0, 1):
        episodes = read_episodes(run.iteration(i).eval_episodes)
        metrics = read_json(run.iteration(i).metrics, EvalMetrics)
        assert metrics.regret is not None
        shares, rows = rank_shares(episodes, scenarios)
        assert rows == ["best", "2nd", "3rd", "4th", "5th"] and shares.shape == (5, HORIZON)
        np.testing.assert_allclose(shares.sum(axis=0), 1.0)
        # Gap instances: every non-best play costs exactly the gap, so the mean best-arm share
        # is 1 − regret / (gap · T).
        expected = 1.0 - metrics.regret.mean / (GAP * HORIZON)
        assert shares[0].mean() == pytest.approx(expected)
        np.testing.assert_allclose(shares[1], shares[4])  # tied arms share their ranks
        acts = np.array([[s.action for s in e.steps] for e in episodes])
        means = [scenarios[e.scenario_id].instance.means for e in episodes]
        best = np.array([m.argmax(axis=1) for m in means])
        curve = suff_fail_curve(acts, best)
        assert curve[HORIZON // 2 - 1] == pytest.approx(metrics.suff_fail_freq)
        assert np.all(np.diff(curve) >= 0)  # a shorter suffix can only fail more often


def test_report_is_reproducible(bandit_run: tuple[Config, RunPaths]) -> None:
    _, run = bandit_run
    before = {p.name: p.read_bytes() for p in run.report.iterdir()}
    write_report(run)
    after = {p.name: p.read_bytes() for p in run.report.iterdir()}
    assert before["report.md"] == after["report.md"]
    assert before["summary.json"] == after["summary.json"]
    assert before.keys() == after.keys()


def test_the_verdict_on_improvement_follows_the_intervals(
    bandit_run: tuple[Config, RunPaths],
) -> None:
    _, run = bandit_run
    report, _ = build_report(run)
    assert report.improvement is not None
    better = report.improvement.model_copy(update={"significant": True, "cis_overlap": False})
    text = render_markdown(report.model_copy(update={"improvement": better}))
    assert "significant by this (conservative) criterion" in text
    overlap = report.improvement.model_copy(update={"significant": False, "cis_overlap": True})
    text = render_markdown(report.model_copy(update={"improvement": overlap}))
    assert "the change is **not** significant" in text
    assert "vs UCB1:" in text and "vs Thompson sampling:" in text


def test_paired_ratio() -> None:
    rng = child_rng(0)
    same = paired_ratio({"a": 2.0, "b": 4.0}, {"a": 2.0, "b": 4.0}, rng)
    assert same is not None and (same.ratio, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)
    double = paired_ratio({"a": 2.0, "b": 8.0, "c": 1.0}, {"a": 1.0, "b": 4.0, "d": 9.0}, rng)
    assert double is not None and double.ratio == 2.0 and double.scenarios == 2
    assert paired_ratio({"a": 1.0}, {"a": 0.0}, rng) is None
    assert paired_ratio({"a": 1.0}, {"b": 1.0}, rng) is None


def test_full_information_run_with_one_evaluation(tmp_path: Path) -> None:
    env = {"preset": "fol-iid", "horizon": 8}
    cfg = make_config(tmp_path, env=env, p0="agent/hedge", baselines=("hedge", "ftl"))
    run = start_run(cfg, "experts")
    written = write_report(run)
    assert written.improvement is None and "suff_fail" not in written.figures
    assert set(written.figures) >= {"regret_curves", "action_heatmap", "grid"}
    text = Path(written.report_md).read_text()
    assert "Only one policy has been evaluated so far" in text


def test_report_of_a_run_without_evaluations_is_refused(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, env={"kind": "mab", "horizon": 5}, p0="agent/ucb1")
    run = create_run_dir(tmp_path, "empty")
    init_run(run, cfg, source=None)
    with pytest.raises(StateError, match="no iteration has been evaluated"):
        write_report(run)


def test_report_and_compare_commands(bandit_run: tuple[Config, RunPaths], tmp_path: Path) -> None:
    _, run = bandit_run
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run.root), "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["report_md"] == str(run.report / "report.md") and "improvement" in last
    other_cfg = make_config(
        tmp_path,
        env={"kind": "mab", "num_arms": 5, "gap": GAP, "horizon": HORIZON},
        p0="agent/thompson",
        seed=6,
    )
    other = start_run(other_cfg, "other")
    result = runner.invoke(app, ["compare", str(run.root), str(other.root), "--json"])
    assert result.exit_code == 0, result.output
    assert (
        "CIs overlap" in result.output or "B lower" in result.output or "B higher" in result.output
    )
    cmp = json.loads(result.output.strip().splitlines()[-1])
    assert [it["label"] for it in cmp["a"]["iterations"]] == ["0", "final"]
    assert [it["label"] for it in cmp["b"]["iterations"]] == ["0"]
    assert cmp["b"]["iterations"][0]["policy"] == "agent/thompson"
    diffs = cmp["config_differences"]
    assert any(d.startswith("run.seed: 5 → 6") for d in diffs)
    assert any(d.startswith("policy.spec:") for d in diffs)
    assert cmp["a"]["iterations"][0]["grid"]["unseen"]["n"] == SCENARIOS
    assert set(cmp["a"]["iterations"][1]["differences"]) == {"ucb1", "thompson", "uniform"}
    assert "− ucb1 [95% CI]" in result.output
    status = runner.invoke(app, ["status", str(run.root), "--json"])
    assert status.exit_code == 0, status.output
    final = json.loads(status.output.strip().splitlines()[-1])["final"]
    assert final["differences"]["ucb1"]["ci_low"] <= final["differences"]["ucb1"]["mean"]
    assert "− ucb1 [95% CI]" in status.output


def test_config_reference_is_up_to_date() -> None:
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render_config_docs(), (
        "docs/config.md is stale: run `.venv/bin/python -m rmft_api.config_docs --write`"
    )
