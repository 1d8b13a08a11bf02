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
from pydantic import ValidationError

from batchapi.emulator.app import create_app
from batchapi.emulator.config import EmulatorConfig
from batchapi.emulator.runner import bound_port
from batchapi.models import Revision

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
        description="Local emulator of the Batch API (revision B or A of its docs), its realtime "
        "endpoints and the synchronous /v1/chat/completions and /v1/models.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        default=None,
        help="required x-api-key (default: $BATCH_API_KEY; none: no authentication)",
    )
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: temporary)")
    parser.add_argument(
        "--revision",
        choices=[revision.value for revision in Revision],
        default=defaults.revision.value,
        help="docs revision to speak: B (Batch object, validating/in_progress, batch_ ids, "
        "50 lines) or A (batch_id/*_count replies, queued/processing, batch- ids, no line "
        "limit, 503 without a batch router) (default: %(default)s)",
    )
    parser.add_argument(
        "--max-lines",
        type=int,
        default=None,
        help="lines per batch (default: the revision's: 50 for B, none for A)",
    )
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes)
    parser.add_argument(
        "--latency",
        type=float,
        default=defaults.latency,
        metavar="SECONDS",
        help="minimum time from a batch's acceptance to its terminal status, as a remote "
        "provider's batches take however busy this emulator is (default: %(default)s)",
    )
    parser.add_argument(
        "--latency-jitter",
        type=float,
        default=defaults.latency_jitter,
        metavar="SIGMA",
        help="spread the time in progress: batch n takes LATENCY * exp(SIGMA * z_n), z_n a "
        "standard normal seeded by --seed and n (median LATENCY), and a seeded "
        "--straggler-share of batches take --straggler-factor times that (default: 0, off)",
    )
    parser.add_argument(
        "--straggler-share",
        type=float,
        default=defaults.straggler_share,
        metavar="SHARE",
        help="with --latency-jitter: share of straggling batches (default: %(default)s)",
    )
    parser.add_argument(
        "--straggler-factor",
        type=float,
        default=defaults.straggler_factor,
        metavar="FACTOR",
        help="with --latency-jitter: times longer a straggler takes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-open-batches",
        type=int,
        default=None,
        metavar="N",
        help="answer POST /v1/batches with 429 while N batches are not terminal (default: no cap)",
    )
    parser.add_argument(
        "--open-cap-retry-after",
        type=int,
        default=defaults.open_cap_retry_after,
        metavar="SECONDS",
        help="Retry-After of those 429s (default: %(default)s)",
    )
    parser.add_argument(
        "--no-batch-router",
        action="store_true",
        help="revision A only: answer the batch endpoints 503 'batch router not configured'",
    )
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
    parser.add_argument("--http-fault-rate", type=float, default=defaults.http_fault_rate)
    parser.add_argument("--batch-fail-rate", type=float, default=defaults.batch_fail_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> EmulatorConfig:
    """The configuration the parsed flags describe; raises ValidationError when they conflict."""
    return EmulatorConfig(
        api_key=args.api_key or os.environ.get("BATCH_API_KEY") or None,
        db_path=args.db,
        revision=args.revision,
        max_lines=args.max_lines,
        max_bytes=args.max_bytes,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        straggler_share=args.straggler_share,
        straggler_factor=args.straggler_factor,
        max_open_batches=args.max_open_batches,
        open_cap_retry_after=args.open_cap_retry_after,
        batch_router_configured=not args.no_batch_router,
        fail_rate=args.fail_rate,
        http_fault_rate=args.http_fault_rate,
        batch_fail_rate=args.batch_fail_rate,
        seed=args.seed,
        workers=args.workers,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from(args)
    except ValidationError as exc:
        # Without the input: it would hold the API key.
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            field = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"python -m batchapi.emulator: {field or 'flags'}: {message}", file=sys.stderr)
        return 2
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
