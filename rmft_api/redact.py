"""Credentials out of text: URL userinfo and secret-looking query parameters become `***`.

Used where a URL can reach a message, a file or a log: config errors, and the check that refuses
a config whose URLs carry credentials at all (keys come only from the environment).
"""

from __future__ import annotations

import re

# scheme://user:password@host or scheme://token@host
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s?#]+)@")
# ?api-key=..., &key=..., token, sig, secret, password, access_token, code ...
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[\w.-]*(?:key|token|sig|signature|secret|password|passwd|pwd|auth)"
    r"[\w.-]*))=(?P<value>[^&#\s\"']*)",
    re.IGNORECASE,
)


def redact_urls(text: str) -> str:
    """`text` with every URL's userinfo and secret query values replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}=***", text)


def check_url(value: str) -> str:
    """`value` unchanged, or ValueError (not echoing it) when it carries a credential."""
    if redact_urls(value) != value:
        raise ValueError(
            "this URL carries a credential (user:password@ or a key/token/signature query "
            f"parameter): {redact_urls(value)}; remove it and put the key in the environment "
            "variable the config names (api_key_env), never in the config"
        )
    return value
