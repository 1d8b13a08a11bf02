"""The emulator CLI in a child process, on a free loopback port.

This module imports none of the emulator's server or engine: a flow that runs the embedded
backend starts the child without loading them into its own interpreter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class EmulatorProcess:
    """The emulator CLI in a child process: its own interpreter, so its engine and HTTP server
    never compete with the caller's threads for one interpreter lock."""

    def __init__(
        self,
        api_key: str | None = None,
        db_path: str | None = None,
        workers: int = 1,
        extra_args: list[str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = ""
        command = [
            sys.executable, "-m", "batchapi.emulator", "--host", "127.0.0.1", "--port", "0",
            "--workers", str(workers), "--log-level", "warning", *(extra_args or []),
        ]  # fmt: skip
        if db_path:
            command += ["--db", db_path]
        env = dict(os.environ)
        env.pop("BATCH_API_KEY", None)
        if api_key:
            env["BATCH_API_KEY"] = api_key  # through the environment, never the command line
        self._process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def _start(self) -> None:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"the batch API emulator did not start (it printed {line!r})")
        self.base_url = line.strip().rsplit(" ", 1)[-1]

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(f"{self.base_url}/_emulator/stats", timeout=10).json()

    def stop(self, timeout: float = 10.0) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __repr__(self) -> str:
        return f"EmulatorProcess(base_url={self.base_url!r}, pid={self._process.pid})"


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextmanager
def emulator_process(
    api_key: str | None = None,
    db_path: str | None = None,
    workers: int = 1,
    extra_args: list[str] | None = None,
) -> Iterator[EmulatorProcess]:
    """`with emulator_process(api_key="k") as emu: ...` runs the CLI on a free loopback port."""
    process = EmulatorProcess(api_key, db_path, workers, extra_args)
    try:
        process._start()
        yield process
    finally:
        process.stop()
