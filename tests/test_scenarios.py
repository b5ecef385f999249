"""Scenario library, deterministic scenarios, template loading and `prompt-preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from rmft_api.cli import app
from rmft_api.config import config_from_dict
from rmft_api.envs.base import BanditInstance
from rmft_api.envs.scenarios import (
    MIN_POOL_SIZE,
    build_scenario,
    build_scenarios,
    check_arm_pool,
    load_library,
)
from rmft_api.envs.templates import TEMPLATE_VARIABLES, load_templates, packaged_prompts_dir
from rmft_api.errors import ConfigError

REQUIRED = {
    "buttons",
    "ad_placement",
    "clinical_trial",
    "restaurant",
    "news_recommendation",
    "portfolio",
    "crop_planting",
    "server_routing",
}


def cfg_of(**env: Any) -> Any:
    return config_from_dict({"env": {"kind": "mab", "num_arms": 5, "horizon": 20, **env}})


# ---------------------------------------------------------------- library


def test_library_has_required_contexts_with_clean_pools() -> None:
    library = load_library()
    assert len(library) >= 8 and set(library) >= REQUIRED
    for name, spec in library.items():
        pool = list(spec.arm_pool)
        assert len(pool) >= MIN_POOL_SIZE
        assert all(n.isascii() and 1 <= len(n.split()) <= 2 for n in pool)
        low = [n.lower() for n in pool]
        assert len(set(low)) == len(low)
        assert not any(a != b and a in b for a in low for b in low), name
        assert spec.description and spec.action_noun and spec.reward_description


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ([f"Arm{i}" for i in range(10)], "need"),
        ([f"Arm{i}" for i in range(25)] + ["Arm1x"], "inside"),  # "arm1" inside "arm1x"
        ([f"Ar{chr(97 + i)}m" for i in range(25)] + ["Caf\u00e9"], "ASCII"),
        ([f"A{chr(97 + i)}z" for i in range(25)] + ["Three Word Name"], "ASCII words"),
        ([f"A{chr(97 + i)}z" for i in range(25)] + ["Answer Key"], "marker"),
    ],
)
def test_bad_pools_are_rejected(pool: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_arm_pool("custom", pool)


# ---------------------------------------------------------------- scenarios


def test_scenarios_are_deterministic() -> None:
    cfg = cfg_of()
    a, b = build_scenario(cfg, split="train", index=7), build_scenario(cfg, split="train", index=7)
    assert a.scenario_id == "train-0007" and a.index == 7 and a.split == "train"
    assert a.seed == b.seed and a.context == b.context
    ia, ib = a.instance, b.instance
    assert isinstance(ia, BanditInstance) and isinstance(ib, BanditInstance)
    assert np.array_equal(ia.rewards, ib.rewards) and np.array_equal(ia.means, ib.means)
    other_run = build_scenario(cfg, split="train", index=7, run_seed=1)
    assert other_run.seed != a.seed
    assert build_scenario(cfg, split="train", index=7, run_seed=0).seed == a.seed


def test_train_and_heldout_seeds_are_disjoint() -> None:
    cfg = cfg_of(horizon=2)
    train = {s.seed for s in build_scenarios(cfg, split="train", count=300)}
    heldout = build_scenarios(cfg, split="heldout", count=300)
    assert len(train) == 300 and len({s.seed for s in heldout}) == 300
    assert train.isdisjoint(s.seed for s in heldout)
    assert heldout[0].scenario_id == "heldout-0000"
    tail = build_scenarios(cfg, split="train", count=3, start=298)
    assert [s.index for s in tail] == [298, 299, 300]


def test_contexts_and_names_vary_and_respect_config() -> None:
    scenarios = build_scenarios(cfg_of(horizon=2), split="train", count=200)
    assert {s.context.name for s in scenarios} == set(load_library())
    for s in scenarios:
        names = s.context.arm_names
        assert len(names) == 5 and len(set(names)) == 5
    assert len({s.context.arm_names for s in scenarios}) > 150  # drawn per seed
    only = config_from_dict({"env": {"horizon": 2}, "prompt": {"contexts": ["portfolio"]}})
    assert {s.context.name for s in build_scenarios(only, split="train", count=20)} == {"portfolio"}
    with pytest.raises(ConfigError, match="unknown context"):
        build_scenario(config_from_dict({"prompt": {"contexts": ["nope"]}}), split="train", index=0)


def test_word_choice_does_not_touch_the_instance() -> None:
    # The same seed under different allowed contexts gives a different context, same draws.
    a = build_scenario(cfg_of(), split="train", index=3)
    pinned = config_from_dict(
        {
            "env": {"kind": "mab", "num_arms": 5, "horizon": 20},
            "prompt": {"contexts": ["crop_planting"]},
        }
    )
    b = build_scenario(pinned, split="train", index=3)
    assert b.context.name == "crop_planting"
    ia, ib = a.instance, b.instance
    assert isinstance(ia, BanditInstance) and isinstance(ib, BanditInstance)
    assert np.array_equal(ia.rewards, ib.rewards)


def test_max_arms_fits_every_pool() -> None:
    for s in build_scenarios(cfg_of(num_arms=26, horizon=2), split="train", count=30):
        assert len(set(s.context.arm_names)) == 26


# ---------------------------------------------------------------- templates


def test_packaged_templates_load_and_validate() -> None:
    assert (packaged_prompts_dir() / "templates").is_dir()
    templates = load_templates()
    assert set(templates.texts) == set(TEMPLATE_VARIABLES)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("question_action", "Round $round, pick $colour", "unknown placeholder"),
        ("answer_action_direct", "Just say the name.", "marker"),
        ("system", "Cost: 5$ per round", "not followed by a name"),
        ("qeustion_action", "typo", "unknown template"),
    ],
)
def test_bad_template_overrides_are_rejected(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / f"{name}.txt").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_templates(tmp_path)


def test_override_dir_adds_scenario_contexts(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "scenarios").mkdir()
    pool = ", ".join(f'"Zz{chr(97 + i)}q"' for i in range(26))
    (tmp_path / "scenarios" / "lab_test.toml").write_text(
        'title = "Lab"\ndescription = "You test."\naction_noun = "probe"\n'
        f'action_plural = "probes"\nreward_description = "Signal."\narm_names = [{pool}]\n'
    )
    cfg = config_from_dict({"prompt": {"templates_dir": str(tmp_path), "contexts": ["lab_test"]}})
    s = build_scenario(cfg, split="train", index=0)
    assert s.context.name == "lab_test" and s.context.action_noun == "probe"
    assert "lab_test" not in load_library()


# ---------------------------------------------------------------- prompt-preview


def test_prompt_preview_prints_the_chat_of_round_t() -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["prompt-preview", "--env", "mab", "--round", "3", "--context", "buttons"]
    )
    assert r.exit_code == 0, r.output
    header = r.output.splitlines()[0]
    assert "round 3 of" in header and "scripted" in header and "buttons" in header
    assert r.output.count("----- assistant -----") == 2
    assert "Round 3 of" in r.output


def test_prompt_preview_fol_single_turn_and_errors() -> None:
    runner = CliRunner()
    args = ["prompt-preview", "--env", "fol", "--scenario", "4", "--round", "2"]
    r = runner.invoke(app, [*args, "--set", 'prompt.transcript="single_turn"'])
    assert r.exit_code == 0, r.output
    assert "uniform vectors" in r.output and '"<' in r.output
    assert r.output.count("----- user -----") == 1
    bad_round = runner.invoke(app, ["prompt-preview", "--round", "1000"])
    assert bad_round.exit_code != 0
    clash = runner.invoke(app, ["prompt-preview", "--env", "fol", "--preset", "hard"])
    assert clash.exit_code != 0
