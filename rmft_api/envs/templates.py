"""Prompt templates: loading, validation, rendering and the template-set hash.

Templates are plain text files `prompts/templates/<name>.txt` with `string.Template`
placeholders (`$name` / `${name}`; `$$` is a literal dollar), chosen over `str.format` so JSON
braces in the answer format need no escaping. Each template may use only the variables listed in
`TEMPLATE_VARIABLES`, checked at load time, so a typo fails before any paid request.

Where the files come from: `PromptConfig.templates_dir` (a directory holding `<name>.txt`
files, or a `templates/` folder; files there replace the packaged ones of the same name) over
the packaged set (rmft_api/shipped.py: `rmft_api/prompts` in a wheel, `<repo>/prompts` in a
checkout or editable install).
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from rmft_api.envs.parsing import MARKER
from rmft_api.errors import ConfigError
from rmft_api.shipped import prompts_dir

_CONTEXT = frozenset({"action_noun", "action_plural"})
_SETUP = _CONTEXT | {"num_actions", "arm_list", "reward_description", "horizon"}

# Every template and the variables it may use.
TEMPLATE_VARIABLES: dict[str, frozenset[str]] = {
    "system": frozenset({"description", "setup", "framing", "answer_format"}),
    "setup_bandit": _SETUP | {"reward_scale", "change_note"},
    "setup_full": _SETUP,
    "setup_full_action": _SETUP,
    "scale_bernoulli": _CONTEXT,
    "scale_gaussian": _CONTEXT,
    "note_nonstationary": _CONTEXT,
    "framing_neutral": _CONTEXT,
    "framing_suggestive": _CONTEXT,
    "answer_action_reasoning": _CONTEXT | {"arm_list"},
    "answer_action_direct": _CONTEXT | {"arm_list"},
    "answer_distribution_reasoning": _CONTEXT | {"arm_list"},
    "answer_distribution_direct": _CONTEXT | {"arm_list"},
    "question_action": _CONTEXT | {"round", "horizon", "arm_list"},
    "question_distribution": _CONTEXT | {"round", "horizon", "arm_list"},
    "feedback_action": _CONTEXT | {"round", "arm", "reward"},
    "feedback_sampled": _CONTEXT | {"round", "arm", "reward"},
    "feedback_full": _CONTEXT | {"round", "reward_list", "reward"},
    "note_fallback_random": _CONTEXT | {"round"},
    "note_fallback_repeat": _CONTEXT | {"round"},
    "note_forfeit": _CONTEXT | {"round"},
    "reminder_action": _CONTEXT | {"error", "arm_list"},
    "reminder_distribution": _CONTEXT | {"error", "arm_list"},
    "history_empty": _CONTEXT,
    "history_raw": _CONTEXT | {"count"},
    "history_window": _CONTEXT | {"count"},
    "line_action": _CONTEXT | {"round", "arm", "reward"},
    "line_forfeit": _CONTEXT | {"round"},
    "line_full": _CONTEXT | {"round", "reward_list", "reward"},
    "summary_header": _CONTEXT | {"rounds"},
    "summary_action": _CONTEXT | {"arm", "count", "mean"},
    "summary_untried": _CONTEXT | {"arm"},
    "summary_full": _CONTEXT | {"arm", "total", "mean"},
}

# Templates that tell the model the answer format must show the marker the parser looks for.
_NEEDS_MARKER = (
    "answer_action_reasoning",
    "answer_action_direct",
    "answer_distribution_reasoning",
    "answer_distribution_direct",
    "reminder_action",
    "reminder_distribution",
)


def packaged_prompts_dir() -> Path:
    """The packaged prompts/ directory (templates/ and scenarios/ inside)."""
    return prompts_dir()


def _read_dir(directory: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for path in sorted(directory.glob("*.txt")):
        try:
            # One trailing newline is the file's, not the template's.
            texts[path.stem] = path.read_text(encoding="utf-8").removesuffix("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read template {path}: {e}") from e
    return texts


def _check(name: str, text: str, origin: str) -> None:
    allowed = TEMPLATE_VARIABLES[name]
    template = string.Template(text)
    if not template.is_valid():
        raise ConfigError(f"template {origin}: a '$' not followed by a name (write $$ for '$')")
    unknown = sorted(set(template.get_identifiers()) - allowed)
    if unknown:
        raise ConfigError(
            f"template {origin}: unknown placeholder(s) {', '.join('$' + u for u in unknown)}; "
            f"allowed: {', '.join('$' + a for a in sorted(allowed))}"
        )
    if name in _NEEDS_MARKER and MARKER not in text:
        raise ConfigError(f"template {origin}: must show the answer marker '{MARKER}'")


@dataclass(frozen=True)
class TemplateSet:
    """Validated template texts by name, and where they came from."""

    texts: Mapping[str, str]
    origin: str = field(default="")

    def render(self, name: str, /, **values: object) -> str:
        """Fill template `name`; every variable it uses must be given (extra ones are ignored)."""
        try:
            return string.Template(self.texts[name]).substitute(
                {k: str(v) for k, v in values.items()}
            )
        except KeyError as e:
            raise ConfigError(f"template {name}: no value for placeholder {e}") from e

    def hash_of(self, names: Iterable[str], factors: Mapping[str, object]) -> str:
        """sha256 (16 hex) of the named templates' texts and the config factors that chose them."""
        used = sorted(set(names))
        blob = json.dumps(
            {"templates": {n: self.texts[n] for n in used}, "factors": dict(factors)},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _override_dir(templates_dir: str | Path) -> Path:
    root = Path(templates_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"prompt.templates_dir: not a directory: {root}")
    return root / "templates" if (root / "templates").is_dir() else root


def load_templates(templates_dir: str | Path | None = None) -> TemplateSet:
    """The packaged templates, with same-named files in `templates_dir` replacing them.

    Cached per directory: every episode of a run builds its TextEpisode from the same set.
    """
    key = None if templates_dir is None else str(Path(templates_dir).expanduser().resolve())
    return _load_templates(key)


@functools.lru_cache(maxsize=8)
def _load_templates(templates_dir: str | None) -> TemplateSet:
    base = packaged_prompts_dir() / "templates"
    texts = _read_dir(base)
    origins = {name: str(base / f"{name}.txt") for name in texts}
    if templates_dir is not None:
        over = _override_dir(templates_dir)
        extra = _read_dir(over)
        stray = sorted(set(extra) - set(TEMPLATE_VARIABLES))
        if stray:
            raise ConfigError(
                f"prompt.templates_dir {over}: unknown template(s) {', '.join(stray)}; "
                f"known: {', '.join(sorted(TEMPLATE_VARIABLES))}"
            )
        texts.update(extra)
        origins.update({name: str(over / f"{name}.txt") for name in extra})
    missing = sorted(set(TEMPLATE_VARIABLES) - set(texts))
    if missing:
        raise ConfigError(f"templates missing from {base}: {', '.join(missing)}")
    for name in TEMPLATE_VARIABLES:
        _check(name, texts[name], origins[name])
    origin = str(base) if templates_dir is None else f"{base} + {templates_dir}"
    known = {name: texts[name] for name in TEMPLATE_VARIABLES}
    return TemplateSet(texts=MappingProxyType(known), origin=origin)
