"""Run the emulator inside this process, on a free loopback port, for tests.

To run it in a child process (as the embedded backend does), see `batchapi.emulator.process`,
which imports none of the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import uvicorn

from batchapi.emulator.app import Emulator, create_app
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.store import Store

_STARTUP_TIMEOUT_S = 10.0


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful when it was asked for port 0)."""
    return int(server.servers[0].sockets[0].getsockname()[1])


class _QuickServer(uvicorn.Server):
    async def main_loop(self) -> None:
        # uvicorn looks for should_exit every 0.1 s; checking ten times as often makes stop()
        # (and so every test that starts an emulator) faster.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            await asyncio.sleep(0.01)


class RunningEmulator:
    """A started emulator: its address, its configuration, its counters, and `stop()`."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        app = create_app(config)
        self._emulator: Emulator = app.state.emulator
        self._server = _QuickServer(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                lifespan="on", timeout_graceful_shutdown=2,
            )
        )  # fmt: skip
        self._thread = threading.Thread(target=self._server.run, name="batch-emulator", daemon=True)
        self.base_url = ""

    def _start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the batch API emulator did not start")
            time.sleep(0.005)
        self.base_url = f"http://127.0.0.1:{bound_port(self._server)}"

    @property
    def api_key(self) -> str | None:
        return self.config.key

    def stats(self) -> dict[str, int]:
        return self._emulator.stats()

    @property
    def store(self) -> Store:
        """The emulator's database, for tests that look behind the HTTP surface."""
        return self._emulator.store

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; idempotent. Unfinished batches stay in the database for a restart."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningEmulator(base_url={self.base_url!r}, config={self.config!r})"


def _configure(config: EmulatorConfig | None, overrides: dict[str, Any]) -> EmulatorConfig:
    base = config or EmulatorConfig()
    if not overrides:
        return base
    return EmulatorConfig.model_validate({**dict(base), **overrides})


def start_emulator(config: EmulatorConfig | None = None, **overrides: Any) -> RunningEmulator:
    """Start an emulator in a daemon thread; the caller must `stop()` it."""
    running = RunningEmulator(_configure(config, overrides))
    running._start()
    return running


@contextmanager
def running_emulator(
    config: EmulatorConfig | None = None, **overrides: Any
) -> Iterator[RunningEmulator]:
    """`with running_emulator(api_key="k") as emu: httpx.get(emu.base_url + ...)`.

    Any `EmulatorConfig` field is an override: `running_emulator(revision="A",
    max_open_batches=4, latency=2, latency_jitter=0.8, seed=1)`.
    """
    running = start_emulator(config, **overrides)
    try:
        yield running
    finally:
        running.stop()
