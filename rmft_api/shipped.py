"""Files that ship with the package: prompt templates, scenario texts and ready-to-run configs.

In the repository they are the top-level `prompts/` and `configs/`; a built wheel carries them
inside the package as `rmft_api/prompts/` and `rmft_api/configs/` (setup.py maps them), found
here with importlib.resources. A source checkout or editable install reads them in place.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from rmft_api.errors import ConfigError

# The config `rmft-api run` uses when given none (the embedded default).
DEFAULT_CONFIG = "default.toml"


def _candidates(name: str) -> list[Path]:
    inside = Path(str(importlib.resources.files("rmft_api"))) / name  # an installed wheel
    beside = Path(__file__).resolve().parents[1] / name  # a checkout / editable install
    return [inside, beside]


def prompts_dir() -> Path:
    """The shipped prompts directory (templates/ and scenarios/ inside)."""
    candidates = _candidates("prompts")
    for candidate in candidates:
        if (candidate / "templates").is_dir():
            return candidate
    raise ConfigError(
        f"prompt templates not found at {' or '.join(map(str, candidates))} (an incomplete "
        "install?); reinstall rmft-api, or set prompt.templates_dir to a directory of templates"
    )


def configs_dir() -> Path | None:
    """The shipped configs directory, or None when this install carries none."""
    for candidate in _candidates("configs"):
        if (candidate / DEFAULT_CONFIG).is_file():
            return candidate
    return None


def shipped_configs() -> dict[str, Path]:
    """Name (file stem) → path of every shipped config."""
    directory = configs_dir()
    if directory is None:
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.toml"))}


def default_config() -> Path:
    """The embedded default config; an error (not a silently different default) if missing."""
    directory = configs_dir()
    if directory is None:
        raise ConfigError(
            f"the shipped {DEFAULT_CONFIG} is missing from this install (an incomplete wheel?); "
            "reinstall rmft-api or pass a config file"
        )
    return directory / DEFAULT_CONFIG


def find_config(path: str | Path) -> Path:
    """`path` as given when it exists, else the shipped config it names (`openai`,
    `configs/openai.toml`, `openai.toml`), so shipped configs work outside the repository too."""
    given = Path(path)
    if given.exists():
        return given
    shipped = shipped_configs().get(given.stem) if given.suffix in ("", ".toml") else None
    return shipped if shipped is not None else given
