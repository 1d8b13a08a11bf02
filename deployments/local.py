"""Start and stop the local processes behind `make serve` and the tests: a Prefect server and
the Batch API emulator, each in its own process group so a terminal's Ctrl-C reaches only the
parent, which then stops them in order with SIGTERM (SIGKILL after a grace period).

No Prefect import here: callers set PREFECT_* variables before Prefect reads them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
EMULATOR_READY = "batch-enrich emulator listening on "


class StartError(RuntimeError):
    """A child process did not come up; the message ends with the tail of its log."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True unless something listens there (like the server will, TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    """A started subprocess, leader of its own process group, with output in `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the child's process group, wait, then SIGKILL it; returns the exit status."""
        if self.running():
            self._signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        return self.process.wait(timeout)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def spawn(
    name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> Child:
    """Start `argv` in a new session (its own process group), output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def _prefect_cli() -> list[str]:
    script = Path(sys.executable).with_name("prefect")
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect")
    return [found] if found else [sys.executable, "-m", "prefect"]


@dataclass
class PrefectServer:
    child: Child
    api_url: str  # http://127.0.0.1:PORT/api
    ui_url: str  # http://127.0.0.1:PORT

    def stop(self) -> int | None:
        return self.child.stop()


def start_prefect_server(
    home: Path,
    port: int,
    log_path: Path,
    *,
    host: str = LOOPBACK,
    ui: bool = True,
    timeout: float = 180.0,
) -> PrefectServer:
    """`prefect server start` on host:port with its database under `home`; waits for health."""
    if not port_is_free(port, host):
        raise StartError(
            f"port {host}:{port} is already in use (another Prefect server or `make serve`?)"
        )
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(home),
        # Both, not just --port: the UI reads its API address from these (see PREFECT_NOTES).
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="true" if ui else "false",
    )
    argv = [*_prefect_cli(), "server", "start", "--host", host, "--port", str(port)]
    child = spawn("prefect server", argv, env, log_path)
    ui_url = f"http://{host}:{port}"
    server = PrefectServer(child, f"{ui_url}/api", ui_url)
    deadline = time.monotonic() + timeout
    while not _healthy(f"{ui_url}/api/health"):
        if not child.running() or time.monotonic() > deadline:
            child.stop()
            raise StartError(
                f"the Prefect server did not become healthy on {ui_url}:\n{child.log_tail()}"
            )
        time.sleep(0.25)
    return server


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Emulator:
    child: Child
    base_url: str

    def stop(self) -> int | None:
        return self.child.stop()


def start_emulator(
    api_key: str,
    log_path: Path,
    *,
    latency: float = 0.0,
    port: int = 0,
    extra_args: list[str] | None = None,
    timeout: float = 60.0,
) -> Emulator:
    """`python -m batchapi.emulator` on a loopback port; the key goes through the environment,
    not the command line, so `ps` never shows it."""
    env = dict(os.environ, BATCH_API_KEY=api_key)
    argv = [
        sys.executable, "-m", "batchapi.emulator", "--host", LOOPBACK, "--port", str(port),
        "--latency", str(latency), "--log-level", "warning", *(extra_args or []),
    ]  # fmt: skip
    child = spawn("batch api emulator", argv, env, log_path)
    deadline = time.monotonic() + timeout
    while True:
        for line in child.log_tail(50).splitlines():
            if line.startswith(EMULATOR_READY):
                return Emulator(child, line.removeprefix(EMULATOR_READY).strip())
        if not child.running() or time.monotonic() > deadline:
            child.stop()
            raise StartError(f"the emulator did not start:\n{child.log_tail()}")
        time.sleep(0.1)
