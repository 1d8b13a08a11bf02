"""`python -m batchapi.emulator --port N ...`: serve the Batch API emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from batchapi.emulator.app import create_app
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.runner import bound_port

READY_LINE = "batch-enrich emulator listening on {url}"


class _AnnouncingServer(uvicorn.Server):
    """Prints the ready line once the socket listens, so callers can wait for it."""

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            host = self.config.host
            shown = f"[{host}]" if ":" in host else host
            print(READY_LINE.format(url=f"http://{shown}:{bound_port(self)}"), flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m batchapi.emulator",
        description="Local emulator of the Batch API (revision B) and its realtime endpoints.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        default=None,
        help="required x-api-key (default: $BATCH_API_KEY; none: no authentication)",
    )
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: temporary)")
    parser.add_argument("--max-lines", type=int, default=defaults.max_lines)
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes)
    parser.add_argument("--latency", type=float, default=defaults.latency, metavar="SECONDS")
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
    parser.add_argument("--http-fault-rate", type=float, default=defaults.http_fault_rate)
    parser.add_argument("--batch-fail-rate", type=float, default=defaults.batch_fail_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    api_key = args.api_key or os.environ.get("BATCH_API_KEY") or None
    config = EmulatorConfig(
        api_key=api_key,
        db_path=args.db,
        max_lines=args.max_lines,
        max_bytes=args.max_bytes,
        latency=args.latency,
        fail_rate=args.fail_rate,
        http_fault_rate=args.http_fault_rate,
        batch_fail_rate=args.batch_fail_rate,
        seed=args.seed,
        workers=args.workers,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    server = _AnnouncingServer(
        uvicorn.Config(
            create_app(config),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            timeout_graceful_shutdown=5,
        )
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was installed before it; a no-op one makes a clean shutdown exit with status 0.
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, lambda *_: None)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
