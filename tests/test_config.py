"""Config loading: every mistake is one line naming the key, the bad value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rmft_api.config import Config, load_config, parse_override
from rmft_api.errors import ConfigError


def test_defaults_load_and_hash_is_stable() -> None:
    a, b = load_config(), load_config()
    assert a == b and a.hash() == b.hash() and len(a.hash()) == 16
    assert load_config(overrides=["env.horizon=200"]).hash() != a.hash()


def test_preset_fills_unset_keys_and_explicit_keys_win() -> None:
    cfg = load_config(overrides=['env.preset="easy"', "env.horizon=50"])
    assert (cfg.env.num_arms, cfg.env.gap, cfg.env.horizon) == (4, 0.5, 50)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        cfg.run.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "must_contain"),
    [
        ('env.kind="bandit"', ["env.kind", '"bandit"', "'mab', 'fol' or 'ns'"]),
        ("env.horizon=0", ["env.horizon", "0", "greater than or equal to 1"]),
        ("env.num_arms=1", ["env.num_arms", "1", "greater than or equal to 2"]),
        ("env.colour=3", ["unknown key 'env.colour'", "allowed keys here", "num_arms"]),
        ("bogus.x=1", ["unknown key 'bogus'", "env"]),
        ('parse.fallback="skip"', ["parse.fallback", '"skip"', "'forfeit'"]),
        ('env.preset="medium"', ["env", "unknown preset 'medium'", "hard"]),
        ('env.means_mode="fixed"', ["env", "means_mode = 'fixed' needs `means`"]),
        ('prompt.history="all"', ["prompt.history", '"all"', "'summarized'"]),
        ("agents.epsilon=1.5", ["agents.epsilon", "1.5", "less than or equal to 1"]),
        ('run.seed="abc"', ["run.seed", '"abc"', "integer"]),
        # Refused before anything is paid (issue 14): values the trainer or the evaluation would
        # reject only after rollouts and uploads, and sizes that cannot fit in memory.
        ('trainer={kind="openai", n_epochs=0}', ["trainer.n_epochs", "1–50"]),
        ('trainer={kind="azure", batch_size=0}', ["trainer.batch_size", "1–256"]),
        (
            'trainer={kind="openai", learning_rate_multiplier=-0.1}',
            ["learning_rate_multiplier", "> 0"],
        ),
        ('trainer={kind="lora", learning_rate=-1e-4}', ["trainer.learning_rate", "greater"]),
        ('eval.baselines=["ucb1","ucb2"]', ["eval.baselines", "'ucb2'", "ucb1, thompson"]),
        ("rollout.scenarios=1000000000", ["rollout.scenarios", "100000"]),
        ("rollout.rollouts_per_scenario=100000", ["rollout.rollouts_per_scenario", "1024"]),
        ("eval.scenarios=1000000000", ["eval.scenarios", "100000"]),
        ("policy.concurrency=1000000", ["policy.concurrency", "4096"]),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(override: str, must_contain: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert "\n" not in message
    for fragment in must_contain:
        assert fragment in message, (fragment, message)
    assert info.value.exit_code == 2


def test_reply_prefix_needs_a_local_policy() -> None:
    from rmft_api.config import config_from_dict

    prompt = {"reply_prefix": "ANSWER:"}
    with pytest.raises(ConfigError, match=r"prompt\.reply_prefix needs a local hf/ policy"):
        config_from_dict({"prompt": prompt, "policy": {"spec": "openai/gpt-4o-mini"}})
    with pytest.raises(ConfigError, match="agent/ucb1"):
        config_from_dict({"prompt": prompt, "policy": {"spec": "agent/ucb1"}})
    cfg = config_from_dict({"prompt": prompt, "policy": {"spec": "hf/@smollm2"}})
    assert cfg.prompt.reply_prefix == "ANSWER:"


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[env\nkind = 'mab'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[env]\nhorizon = 'long'\n")
    with pytest.raises(ConfigError, match=r"wrong\.toml: key 'env\.horizon'"):
        load_config(wrong)


def test_override_parsing() -> None:
    assert parse_override("env.horizon=200") == (["env", "horizon"], 200)
    assert parse_override("prompt.history=window") == (["prompt", "history"], "window")
    assert parse_override("prompt.contexts=['buttons']") == (["prompt", "contexts"], ["buttons"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("env.horizon")


def test_cli_config_error_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[env]\nkind = 'casino'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rmft_api.cli", "baselines", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "env.kind" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_default_baselines_that_cannot_play_the_env_are_dropped_named_ones_refused() -> None:
    experts = load_config(overrides=['env.kind="fol"'])
    assert experts.eval.baselines == ["uniform"]  # ucb1, thompson, greedy: bandit agents
    with pytest.raises(ConfigError, match=r"'ucb1' cannot play env\.kind = 'fol'"):
        load_config(overrides=['env.kind="fol"', 'eval.baselines=["ucb1"]'])


SECRET = "sk-proj-FAKE0123456789secret"


@pytest.mark.parametrize(
    ("override", "shown"),
    [
        (f'policy.base_url="https://bob:{SECRET}@api.example.com/v1"', "https://***@api.example"),
        (f'policy.base_urls=["http://127.0.0.1:8000/v1?api-key={SECRET}"]', "?api-key=***"),
        (f'trainer={{kind="openai", base_url="https://h/v1?token={SECRET}"}}', "?token=***"),
        (f'trainer={{kind="together", base_url="https://{SECRET}@api.together.ai"}}', "***@"),
        (f'azure.endpoint="https://x.openai.azure.com/?sig={SECRET}"', "?sig=***"),
    ],
)
def test_a_credential_inside_a_url_is_refused_without_being_shown(
    override: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    message = str(info.value)
    assert SECRET not in message and shown in message and "api_key_env" in message


def test_a_run_with_a_key_in_its_url_writes_nothing_and_prints_no_key(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "rmft_api.cli", "run", "sandbox"),
            *("--set", f"run.runs_dir={str(runs)!r}"),
            *("--set", f'policy.base_url="http://user:{SECRET}@127.0.0.1:9/v1"'),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "base_url" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert not runs.exists() or not any(SECRET in p.read_text() for p in runs.rglob("*.json*"))
