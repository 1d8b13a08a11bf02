"""`python -m blocks.register`: register the block types and, optionally, save a BatchApi document.

    python -m blocks.register
        registers the "Batch API" and "S3 Storage" block types with the Prefect API that
        PREFECT_API_URL points at, so the UI offers them under Blocks.

    BATCH_API_KEY=... python -m blocks.register --save-batch-api scaledown \\
        --base-url https://api.scaledown.xyz [--api-key-env BATCH_API_KEY]
        also saves (or overwrites) a BatchApi block document of that name; flows use it with
        batch_api="scaledown". `--save-emulator` is the same option.

The key is read from the environment variable, never from the command line (where `ps` and
shell history would see it), and is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pydantic import SecretStr, ValidationError

from blocks.batch_api import BatchApi
from blocks.storage import S3Storage

BLOCK_TYPES = (BatchApi, S3Storage)


def api_target() -> str:
    """Where registrations go, for messages: the API URL, or the local database."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    url = PREFECT_API_URL.value()
    return url or f"the local Prefect database under {PREFECT_HOME.value()} (no PREFECT_API_URL)"


def register_block_types() -> list[str]:
    """Register (idempotently) every block type of this project; return their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


def build_batch_api(
    base_url: str,
    api_key: str | None,
    *,
    poll_interval_seconds: float | None = None,
    max_lines_per_batch: int | None = None,
) -> BatchApi:
    fields: dict[str, object] = {"base_url": base_url}
    if api_key:
        fields["api_key"] = SecretStr(api_key)
    if poll_interval_seconds is not None:
        fields["poll_interval_seconds"] = poll_interval_seconds
    if max_lines_per_batch is not None:
        fields["max_lines_per_batch"] = max_lines_per_batch
    return BatchApi(**fields)


def save_batch_api(name: str, block: BatchApi) -> bool:
    """Save `block` under `name`, overwriting a document of that name; True if one existed."""
    existed = _exists(name)
    block.save(name, overwrite=True)
    return existed


def _exists(name: str) -> bool:
    try:
        BatchApi.load(name)
    except ValueError:
        return False
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m blocks.register",
        description="Register the Batch API and S3 Storage block types with the Prefect API "
        "(PREFECT_API_URL) and optionally save a BatchApi block document.",
    )
    parser.add_argument(
        "--save-batch-api",
        "--save-emulator",
        dest="save",
        metavar="NAME",
        help="also save a BatchApi block document under this name (overwrites)",
    )
    parser.add_argument("--base-url", help="base URL of the API for --save-batch-api")
    parser.add_argument(
        "--api-key-env",
        default="BATCH_API_KEY",
        metavar="VAR",
        help="environment variable holding the API key (default: BATCH_API_KEY)",
    )
    parser.add_argument("--poll-interval", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--max-lines", type=int, default=None, metavar="N")
    args = parser.parse_args(argv)
    if args.save and not args.base_url:
        parser.error("--save-batch-api needs --base-url")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    block: BatchApi | None = None
    api_key = os.environ.get(args.api_key_env) or None
    if args.save:
        try:
            block = build_batch_api(
                args.base_url,
                api_key,
                poll_interval_seconds=args.poll_interval,
                max_lines_per_batch=args.max_lines,
            )
        except ValidationError as exc:
            print(f"error: invalid BatchApi settings: {exc}", file=sys.stderr)
            return 2
    slugs = register_block_types()
    print(f"registered block types {', '.join(slugs)} with {api_target()}")
    if block is None:
        return 0
    existed = save_batch_api(args.save, block)
    key_note = (
        f"api key from ${args.api_key_env}"
        if api_key
        else f"no api key (${args.api_key_env} is not set)"
    )
    print(
        f"{'updated' if existed else 'saved'} BatchApi block {args.save!r}: {block.base_url}, "
        f'{key_note}; use it with batch_api="{args.save}"'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
