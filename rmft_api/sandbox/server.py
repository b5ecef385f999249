"""Run the sandbox: in the foreground (the CLI) or on a background thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import uvicorn

from rmft_api.errors import ConfigError
from rmft_api.providers.base import Provider
from rmft_api.sandbox.app import build_app
from rmft_api.sandbox.state import SandboxSettings, SandboxState, check_loopback


def _uvicorn_config(app: Any, settings: SandboxSettings, *, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        # Held ("slow") requests notice the shutdown as a disconnect; do not wait long for them.
        timeout_graceful_shutdown=2,
    )


def serve(
    settings: SandboxSettings,
    backing: Provider,
    *,
    served: Mapping[str, Provider] | None = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted (Ctrl-C), in this thread. `served` answers those model names with
    their own providers (e.g. the base model by a classic agent, while jobs train `backing`)."""
    check_loopback(settings.host)
    state = SandboxState(settings, backing)
    state.backings.update(served or {})
    uvicorn.Server(_uvicorn_config(build_app(state), settings, log_level=log_level)).run()


class SandboxServer:
    """The sandbox on a background thread of this process, on a free loopback port.

    Usage: `with SandboxServer(settings, backing) as server: client(base_url=server.base_url)`.
    """

    def __init__(
        self,
        settings: SandboxSettings,
        backing: Provider,
        *,
        served: Mapping[str, Provider] | None = None,
    ) -> None:
        check_loopback(settings.host)
        self.settings = settings
        self.state = SandboxState(settings, backing)
        self.state.backings.update(served or {})
        self._server = uvicorn.Server(
            _uvicorn_config(build_app(self.state), settings, log_level="warning")
        )
        self._thread: threading.Thread | None = None
        self.port = settings.port

    @property
    def root_url(self) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"{self.root_url}/v1"

    def start(self, *, timeout_s: float = 10.0) -> str:
        """Start serving; return base_url once the socket listens."""
        self._thread = threading.Thread(target=self._server.run, name="rmft-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(
                    f"sandbox did not start on {self.settings.host}:{self.settings.port} "
                    "(port in use?)"
                )
            time.sleep(0.01)
        # With port 0 the OS picked one; read it back from the listening socket.
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self.base_url

    def stop(self, *, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
