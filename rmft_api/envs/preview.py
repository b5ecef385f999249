"""`prompt-preview`: exactly what a model would be shown at a given round of a scenario.

Rounds before the requested one are played by a fixed script (round-robin arms, or the uniform
vector for distribution answers), not by a model; the header says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rmft_api.config import ENV_PRESETS, Config, load_config
from rmft_api.envs.base import Split, child_rng
from rmft_api.envs.scenarios import build_scenario
from rmft_api.envs.text import TextEpisode, scripted_reply
from rmft_api.errors import ConfigError
from rmft_api.schema import Message

# Salt of the preview episode's own generator (random fallbacks, arm sampling).
_PREVIEW_SALT = 0x9E1E


@dataclass(frozen=True)
class Preview:
    header: str
    messages: list[Message]
    template_hash: str


def preview_config(
    config: Path | None,
    *,
    overrides: list[str],
    env: str | None = None,
    preset: str | None = None,
    context: str | None = None,
) -> Config:
    """The config the preview uses: file + `--set`, then --env / --preset / --context."""
    extra = list(overrides)
    if preset is not None:
        kind = ENV_PRESETS.get(preset, {}).get("kind")
        if env is not None and kind is not None and kind != env:
            raise ConfigError(f"--preset {preset} is a '{kind}' preset, not --env {env}")
        extra.append(f'env.preset="{preset}"')
    if env is not None:
        extra.append(f'env.kind="{env}"')
    if context is not None:
        extra.append(f'prompt.contexts=["{context}"]')
    return load_config(config, overrides=extra)


def preview_prompt(
    cfg: Config, *, split: Split = "train", index: int = 0, round_number: int = 1
) -> Preview:
    """The chat of round `round_number` (1-based) of scenario `index`, after a scripted history."""
    scenario = build_scenario(cfg, split=split, index=index)
    horizon = scenario.instance.horizon
    if not 1 <= round_number <= horizon:
        raise ConfigError(f"--round {round_number}: must lie in 1..{horizon}")
    rng = child_rng(cfg.run.seed, _PREVIEW_SALT, index)
    episode = TextEpisode(scenario, prompt=cfg.prompt, parse=cfg.parse, rng=rng)
    for t in range(round_number - 1):
        episode.submit(scripted_reply(episode, t=t))
    script = "round-robin arms" if episode.answer_kind == "action" else "uniform vectors"
    played = (
        f"rounds 1-{round_number - 1} answered by a scripted policy ({script}), not a model"
        if round_number > 1
        else "no rounds played yet"
    )
    header = (
        f"# prompt-preview: {scenario.scenario_id} (seed {scenario.seed}), env {cfg.env.kind}, "
        f"context {scenario.context.name}, round {round_number} of {horizon}; {played}; "
        f"transcript {cfg.prompt.transcript}, history {cfg.prompt.history}, "
        f"template_hash {episode.template_hash}"
    )
    return Preview(
        header=header, messages=episode.next_messages(), template_hash=episode.template_hash
    )
