"""The `BatchApi` block: where the Batch API is, its key, and its limits (as data).

It is the one settings object of an API: the run's limits and its client are built here."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from batchapi.client import AsyncBatchApiClient
from batchapi.models import BatchLimits


class BatchApi(Block):
    """Connection settings for a Batch API (the hosted service or an emulator).

    Flows name a saved document of this block in their `batch_api` parameter. The key is a
    `SecretStr`: Prefect stores it encrypted-at-rest in the block document, shows it as
    `********` in the UI and in reprs, and the client only reads it when building a request.
    """

    _block_type_name = "Batch API"
    _block_type_slug = "batch-api"
    _description = (
        "Base URL, API key and limits of a Batch API serving the extract, summarize and "
        "classify models."
    )

    base_url: str = Field(
        default="https://api.scaledown.xyz",
        description="Base URL of the API, e.g. https://api.scaledown.xyz (without /v1).",
    )
    api_key: SecretStr | None = Field(
        default=None, description="Sent as the x-api-key header; never logged."
    )
    max_lines_per_batch: int = Field(
        default=50, ge=1, description="Lines per batch (the API documents 50)."
    )
    max_bytes_per_batch: int = Field(
        default=10_000_000, ge=1_000, description="Bytes per submitted batch body."
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Per HTTP request.")
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="Default wait between status polls."
    )
    price_per_million_prompt_tokens: float | None = Field(
        default=None,
        ge=0,
        description="What the provider bills per million prompt tokens; dry runs and the "
        "cost budget use it. Empty: no cost estimate.",
    )
    max_lines_per_run: int | None = Field(
        default=None,
        ge=1,
        description="Budget: a run that would send more request lines stops before its first "
        "batch. A flow's max_lines_per_run overrides it. Empty: no limit.",
    )
    max_cost_per_run: float | None = Field(
        default=None,
        ge=0,
        description="Budget: a run whose estimated cost is higher stops before its first "
        "batch (needs the price). A flow's max_cost_per_run overrides it. Empty: no limit.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        # The client adds /v1/...; accept the versioned URL people copy from the API docs.
        return value.removesuffix("/v1")

    def limits(self, shard_size: int | None = None) -> BatchLimits:
        """The limits of one batch; `shard_size` asks for fewer lines, never for more."""
        lines = self.max_lines_per_batch
        return BatchLimits(
            max_lines=min(shard_size or lines, lines), max_bytes=self.max_bytes_per_batch
        )

    def client(self) -> AsyncBatchApiClient:
        """An async client of this API; the key stays a `SecretStr` until it is a header."""
        return AsyncBatchApiClient(
            self.base_url,
            self.api_key,
            timeout=self.request_timeout_seconds,
            limits=self.limits(),
        )
