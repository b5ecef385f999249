"""Credentials: read from the environment only, checked before use, scrubbed from every text.

Keys never are config values: a config names the environment variable (`*_env` fields), and
`check_env_name` refuses a value that is not a variable name (a key pasted there) without ever
showing it. `read_secret` reads a variable and refuses what no HTTP header can carry (a line break,
a space, a non-ASCII character), naming the variable, never the value; every value it returns is
remembered.

`scrub` is the one function every text goes through before it reaches the run directory, a log or
the terminal (episode errors, state.json messages, error.log, the CLI's error line, notes): it
masks remembered keys and the values of credential-named variables in the environment, any
`user:password@` in a URL and URL query parameters that carry secrets (`api-key=`, `key=`,
`token=`, `sig=`, ...; redact.py, which also refuses such URLs in a config), `Bearer` tokens and
key-shaped words (`sk-...`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

from rmft_api.errors import ConfigError
from rmft_api.redact import redact_urls

MASK = "***"

# Secrets shorter than this are not masked as plain substrings (they would mask ordinary words);
# the patterns below still catch the key shapes.
_MIN_SECRET_LEN = 6
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_ENV_NAME = 64
# Prefixes of real providers' keys and tokens (OpenAI, Together, Groq, xAI, Hugging Face, GitHub,
# Google, JWTs such as Entra tokens).
_KEY_PREFIXES = ("sk-", "sk_", "tgp_", "gsk_", "xai-", "hf_", "ghp_", "github_pat_", "AIza", "eyJ")
_KEY_WORD = re.compile(r"\b(?:sk|tgp_v1|gsk|xai)[-_][A-Za-z0-9_\-]{6,}")
_BEARER = re.compile(r"(Bearer\s+)[^\s'\",;]+", re.IGNORECASE)
# Environment variables whose values are credentials wherever they appear in a text.
_CREDENTIAL_SUFFIXES = ("_API_KEY", "_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_ADMIN_KEY")

_remembered: set[str] = set()


# ---------------------------------------------------------------- names of variables (config)


def looks_like_key(value: str) -> bool:
    """True for a value that is a credential rather than the name of a variable holding one."""
    if value.startswith(_KEY_PREFIXES) or len(value) > _MAX_ENV_NAME:
        return True
    if not _ENV_NAME.fullmatch(value):
        return True  # '-', '.', '/', spaces, line breaks: no variable name has them
    has_digit = any(c.isdigit() for c in value)
    mixed_case = any(c.islower() for c in value) and any(c.isupper() for c in value)
    # Names are words joined by '_'; a long run of letters and digits without one is a token.
    return len(value) >= 16 and has_digit and ("_" not in value or mixed_case)


def check_env_name(value: str) -> str:
    """`value` when it names an environment variable; ValueError otherwise, never echoing it."""
    if looks_like_key(value):
        raise ValueError(
            "must be the NAME of an environment variable holding the key (letters, digits and "
            "_, e.g. OPENAI_API_KEY), and this looks like a key itself (not shown): export the "
            "key (export OPENAI_API_KEY=...) and name that variable here"
        )
    return value


# ---------------------------------------------------------------- reading values


def read_secret(env: str) -> str | None:
    """The stripped value of `env`; None when unset or empty.

    Raises ConfigError naming `env` (never the value) when the value holds a character an HTTP
    header cannot carry: a line break or space inside it, a control or non-ASCII character.
    """
    value = os.environ.get(env, "").strip()
    if not value:
        return None
    for position, char in enumerate(value, start=1):
        if not 0x21 <= ord(char) <= 0x7E:
            what = (
                "a line break"
                if char in "\r\n"
                else "a space"
                if char.isspace()
                else "a non-ASCII character"
                if ord(char) > 0x7E
                else "a control character"
            )
            remember(value)  # whatever is later printed of it is masked
            raise ConfigError(
                f"{env} holds {what} at character {position} of {len(value)}, which an HTTP "
                f"header cannot carry: export {env} again with the key alone (value not shown)"
            )
    remember(value)
    return value


def remember(value: str) -> None:
    """Mask `value` (and each line of it) in every later `scrub`."""
    for part in (value, *value.splitlines()):
        part = part.strip()
        if len(part) >= _MIN_SECRET_LEN:
            _remembered.add(part)


def _environment_secrets() -> Iterable[str]:
    for name, value in os.environ.items():
        if name.upper().endswith(_CREDENTIAL_SUFFIXES):
            for part in (value, *value.splitlines()):
                part = part.strip()
                if len(part) >= _MIN_SECRET_LEN:
                    yield part


# ---------------------------------------------------------------- scrubbing


def scrub_url(url: str) -> str:
    """`url` without its `user:password@` and with secret query values masked."""
    return redact_urls(url)


def scrub(text: object) -> str:
    """`str(text)` with every credential masked (see the module docstring)."""
    out = str(text)
    secrets = sorted({*_remembered, *_environment_secrets()}, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
        escaped = secret.encode("unicode_escape").decode("ascii")
        if escaped != secret and escaped in out:
            out = out.replace(escaped, MASK)
    out = redact_urls(out)
    out = _BEARER.sub(lambda m: m.group(1) + MASK, out)
    return _KEY_WORD.sub(MASK, out)


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record's message (attach it to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info:  # formatted here, so the traceback is scrubbed too
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True
