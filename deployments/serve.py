"""`make serve`: a local Prefect server and UI, the Batch API emulator, the blocks, and both
deployments of `prefect.yaml` served from this process. Ctrl-C (or SIGTERM) stops it all.

    python -m deployments.serve [--port 4200] [--latency 8] [--api-url URL] [--param K=JSON]

The served deployments keep the names, schedules and parameters of `prefect.yaml`, with
`batch_api` set to the "local-emulator" block (and any `--param` overrides). A missing local
Parquet source is generated as a sample corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from deployments.definitions import DeploymentSpec, full_name
from deployments.local import (
    Child,
    Emulator,
    StartError,
    start_emulator,
    start_prefect_server,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BLOCK_NAME = "local-emulator"
# Polls step finely while the emulator's batches finish; a tenth or so of its latency.
POLL_INTERVAL_SECONDS = 0.5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="Prefect server host")
    parser.add_argument("--port", type=int, default=4200, help="Prefect server and UI port")
    parser.add_argument(
        "--api-url", help="use this running Prefect API (http://.../api) instead of starting one"
    )
    parser.add_argument(
        "--latency", type=float, default=8.0, metavar="SECONDS", help="emulator batch latency"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="delete same-named deployments that run on a work pool (with --api-url; a server "
        "started here always replaces them)",
    )
    parser.add_argument("--corpus-size", type=int, default=120, metavar="N")
    parser.add_argument("--block-name", default=BLOCK_NAME, help="BatchApi block to save and use")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of the served deployments (VALUE is JSON, or a plain string)",
    )
    return parser.parse_args(argv)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"batch_api": args.block_name, **parse_params(args.param)}
    # Prefect reads these when first imported, which happens only after they are set.
    home = Path(os.environ.setdefault("PREFECT_HOME", str(REPO_ROOT / ".prefect"))).resolve()
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    logs = home / "serve-logs"
    started: list[Child] = []
    # Ctrl-C raises KeyboardInterrupt even when started from a shell that ignores SIGINT in
    # background jobs; until Prefect's runner installs its own handler, SIGTERM does the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.api_url:
            api_url = args.api_url.rstrip("/")
            ui_url = api_url.removesuffix("/api")
        else:
            print(f"starting the Prefect server on {args.host}:{args.port} (PREFECT_HOME={home})")
            server = start_prefect_server(home, args.port, logs / "server.log", host=args.host)
            started.append(server.child)
            api_url, ui_url = server.api_url, server.ui_url
        os.environ["PREFECT_API_URL"] = api_url
        key = secrets.token_urlsafe(24)
        emulator = start_emulator(key, logs / "emulator.log", latency=args.latency)
        started.append(emulator.child)
        _serve(args, overrides, emulator, key, ui_url, logs)
    except KeyboardInterrupt:
        pass
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(started):
            print(f"stopping the {child.name} (pid {child.pid})", flush=True)
            child.stop()
    print("stopped", flush=True)
    return 0


def _serve(
    args: argparse.Namespace,
    overrides: dict[str, Any],
    emulator: Emulator,
    key: str,
    ui_url: str,
    logs: Path,
) -> None:
    from prefect import serve

    from blocks.register import build_batch_api, register_block_types, save_batch_api
    from deployments.definitions import full_name, load_specs, runner_deployment

    register_block_types()
    block = build_batch_api(emulator.base_url, key, poll_interval_seconds=POLL_INTERVAL_SECONDS)
    save_batch_api(args.block_name, block)
    specs = load_specs()
    deployments = [runner_deployment(spec, overrides) for spec in specs]
    _replace_worker_deployments(
        [f"{d.flow_name}/{d.name}" for d in deployments], args.replace or not args.api_url
    )
    drop_undeclared_schedules(specs)
    corpora = sorted({str(d.parameters.get("source", "")) for d in deployments})
    for source in corpora:
        _ensure_corpus(source, args.corpus_size)
    flow_names = ", ".join(full_name(spec) for spec in specs)
    print(
        f"""
batch-enrich is served
  Prefect UI    {ui_url}   (Deployments: {flow_names})
  Batch API     emulator at {emulator.base_url}, BatchApi block "{args.block_name}",
                latency {args.latency:g} s per batch (heuristic results)
  sources       {", ".join(corpora)}
  run it        in the UI: Deployments > on-demand > Run, or
                PREFECT_API_URL={ui_url}/api prefect deployment run enrich-documents/on-demand
  logs          {logs}/
Ctrl-C stops the served deployments, the emulator and the server.
""",
        flush=True,
    )
    serve(*deployments, pause_on_shutdown=False)


def _replace_worker_deployments(names: list[str], replace: bool) -> None:
    """A served deployment cannot take over one created by `prefect deploy` for a work pool
    (Prefect keeps its pull steps and storage path), so such a deployment is deleted first."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if not existing.work_pool_name:
                continue
            if not replace:
                raise StartError(
                    f"deployment {name} exists on work pool {existing.work_pool_name!r}; "
                    "pass --replace to delete it and serve it from here instead"
                )
            client.delete_deployment(existing.id)
            print(f"replaced {name} (was deployed to work pool {existing.work_pool_name!r})")


def drop_undeclared_schedules(specs: Sequence[DeploymentSpec]) -> list[str]:
    """Delete the schedules of existing deployments whose slug `prefect.yaml` no longer
    declares (a renamed slug); Prefect keeps them beside the new ones, so the flow would run
    once per slug. Returns what was deleted, as "deployment: slug"."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    dropped: list[str] = []
    with get_client(sync_client=True) as client:
        for spec in specs:
            name = full_name(spec)
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            declared = {item.get("slug") for item in spec.schedules}
            for schedule in existing.schedules or []:
                if schedule.slug and schedule.slug not in declared:
                    client.delete_deployment_schedule(existing.id, schedule.id)
                    dropped.append(f"{name}: {schedule.slug}")
                    print(f"removed schedule {schedule.slug!r} of {name}: not in prefect.yaml")
    return dropped


def _ensure_corpus(source: str, size: int) -> None:
    """Generate the sample corpus at a local `.parquet` source that does not exist yet."""
    if "://" in source or not source.endswith(".parquet"):
        return
    path = Path(source)
    if path.exists():
        return
    from flows.sample_corpus import write_corpus

    write_corpus(str(path), size)
    print(f"wrote a sample corpus of {size} documents to {path}")


if __name__ == "__main__":
    sys.exit(main())
