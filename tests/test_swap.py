"""Swapping backends is a config edit: policy openai (sandbox) | hf (local) × trainer openai | lora.

Every combination runs one full iteration on a small model that speaks the answer format (a
the bootstrap model), then evaluates the policy the trainer returned — so each trainer's
result is also played through the provider it implies (hf/<base>+<adapter> or openai/ft:...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rmft_api.pipeline import Pipeline
from rmft_api.providers.registry import resolve
from rmft_api.run_state import open_run
from rmft_api.sandbox.server import SandboxServer
from rmft_api.sandbox.state import SandboxSettings
from rmft_api.schema import Episode
from rmft_api.store import read_jsonl

KEY = "sk-swap-test"

BASE = """
[run]
seed = 11
runs_dir = "{runs}"
[env]
kind = "mab"
num_arms = 3
horizon = 6
gap = 0.5
[prompt]
transcript = "single_turn"
history = "summarized"
[parse]
max_reprompts = 0
fallback = "forfeit"
[policy.sampling]
max_tokens = 32
[rollout]
scenarios = 6
rollouts_per_scenario = 2
[selection]
k = 1
drop_fallback = false
[iterations]
count = 1
[eval]
scenarios = 4
baselines = ["ucb1"]
"""

POLICY = {
    "openai": '[policy]\nspec = "openai/gpt-4o-mini"\nbase_url = "{url}"\nbatch_size = 32\n',
    "hf": '[policy]\nspec = "hf/{model}"\nbase_url = "{url}"\nbatch_size = 32\n',
}
TRAINER = {
    "openai": '[trainer]\nkind = "openai"\nmodel = "gpt-4o-mini"\nn_epochs = 1\n'
    "poll_interval_s = 0.1\nmax_poll_interval_s = 0.5\n",
    "lora": '[trainer]\nkind = "lora"\nbase_model = "{model}"\nepochs = 1\nbatch_size = 4\n'
    "r = 4\nlora_alpha = 8\ncpu_threads = 1\n",
}


@pytest.fixture(scope="module")
def speaking_model() -> Path:
    from tests.bootstrap_fixture import speaking_model as build

    return build()


@pytest.fixture(scope="module")
def sandbox(speaking_model: Path) -> Iterator[SandboxServer]:
    settings = SandboxSettings(
        fine_tuning={"validating_s": 0.05, "queued_s": 0.05, "max_epochs": 1}
    )
    with SandboxServer(settings, resolve(f"hf/{speaking_model}", seed=0)) as server:
        yield server


@pytest.mark.parametrize("trainer", ["openai", "lora"])
@pytest.mark.parametrize("policy", ["openai", "hf"])
def test_every_backend_combination_completes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    speaking_model: Path,
    sandbox: SandboxServer,
    policy: str,
    trainer: str,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    fill = {"runs": tmp_path / "runs", "url": sandbox.base_url, "model": speaking_model}
    config = tmp_path / "swap.toml"
    config.write_text((BASE + POLICY[policy] + TRAINER[trainer]).format(**fill))
    cfg, run = open_run(config)
    state = Pipeline(cfg, run, poll_interval_s=0.1).run_to_end()
    assert (state.status, state.phase, state.iteration) == ("completed", "done", 1)
    trained = state.policies[1]
    expected = "openai/ft:gpt-4o-mini:" if trainer == "openai" else f"hf/{speaking_model}+"
    assert trained.startswith(expected), trained
    final = read_jsonl(run.iteration(1).eval_episodes, Episode)
    assert final and {e.policy_spec for e in final} == {trained}
    assert all(e.status == "complete" for e in final)
