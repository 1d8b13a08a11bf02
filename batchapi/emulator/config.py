"""Settings of one emulator instance."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from batchapi.models import BatchLimits, Revision

_DEFAULT_LIMITS = BatchLimits()


class EmulatorConfig(BaseModel):
    """What the emulator enforces and which faults it injects.

    Rates are shares in [0, 1]; every random decision is derived from `seed`, so a run with
    the same seed and the same requests makes the same decisions.
    """

    model_config = ConfigDict(frozen=True)

    # SecretStr keeps the key out of repr(), str() and logs; None turns authentication off.
    api_key: SecretStr | None = None
    # None: a temporary database, removed when the emulator stops.
    db_path: Path | None = None
    revision: Revision = Field(
        default=Revision.B, description="Which revision of the batch docs to speak (spec §0)."
    )
    # None: the revision's own limit. Revision B documents 50 lines; revision A names none.
    max_lines: int | None = Field(default=None, ge=1)
    max_bytes: int = Field(default=_DEFAULT_LIMITS.max_bytes, ge=1)
    # GAP: how long a batch stays in each status is undocumented; configurable, instant by default.
    latency: float = Field(
        default=0.0, ge=0.0, description="Minimum seconds from acceptance to a terminal status."
    )
    latency_jitter: float = Field(
        default=0.0,
        ge=0.0,
        description="Sigma of the lognormal factor on `latency` (0: every batch takes `latency`).",
    )
    straggler_share: float = Field(
        default=0.05, ge=0.0, le=1.0, description="With jitter: share of batches that straggle."
    )
    straggler_factor: float = Field(
        default=5.0, ge=1.0, description="With jitter: how many times longer a straggler takes."
    )
    max_open_batches: int | None = Field(
        default=None, ge=1, description="Batches not yet terminal before a submit gets 429."
    )
    # GAP: no rate limit is documented, so no Retry-After value either; 1 s is ours.
    open_cap_retry_after: int = Field(
        default=1, ge=0, description="Retry-After seconds of an open-batch cap 429."
    )
    batch_router_configured: bool = Field(
        default=True, description="False: revision A's 503 'batch router not configured'."
    )
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of failing lines.")
    http_fault_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of API requests answered 429/5xx."
    )
    batch_fail_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of batches that end `failed`."
    )
    seed: int = 0
    workers: int = Field(
        default=1, ge=1, description="Batches processed at once; above 1, in worker processes."
    )

    @model_validator(mode="after")
    def _router_is_revision_a(self) -> EmulatorConfig:
        if not self.batch_router_configured and self.revision is not Revision.A:
            raise ValueError(
                "batch_router_configured=False is revision A's 503; revision B documents no 503"
            )
        return self

    @property
    def key(self) -> str | None:
        return None if self.api_key is None else self.api_key.get_secret_value()

    @property
    def line_limit(self) -> int | None:
        """Lines accepted per batch; None: no line limit (revision A without `max_lines`)."""
        if self.max_lines is not None:
            return self.max_lines
        return _DEFAULT_LIMITS.max_lines if self.revision is Revision.B else None
