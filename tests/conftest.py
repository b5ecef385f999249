"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

# ------------------------------------------------------------ sandbox (OpenAI-compatible server)


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., Any]]:
    """Factory: `start_sandbox(backing=None, **settings) -> SandboxServer`, running on 127.0.0.1
    at a free port (`.base_url`), stopped after the test. backing None = `scripted/cycle`."""
    from rmft_api.sandbox.server import SandboxServer
    from rmft_api.sandbox.state import SandboxSettings

    servers: list[SandboxServer] = []

    def start(backing: Any = None, **settings: Any) -> SandboxServer:
        if backing is None:
            from rmft_api.providers.registry import resolve

            backing = resolve("scripted/cycle")
        server = SandboxServer(SandboxSettings(**settings), backing)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sandbox_url(start_sandbox: Callable[..., Any]) -> str:
    """base_url of a running sandbox (backing `scripted/cycle`, no limits, no faults)."""
    return str(start_sandbox().base_url)
