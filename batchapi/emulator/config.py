"""Settings of one emulator instance."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from batchapi.models import BatchLimits

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
    max_lines: int = Field(default=_DEFAULT_LIMITS.max_lines, ge=1)
    max_bytes: int = Field(default=_DEFAULT_LIMITS.max_bytes, ge=1)
    # GAP: how long a batch stays in each status is undocumented; configurable, instant by default.
    latency: float = Field(default=0.0, ge=0.0, description="Minimum seconds in_progress.")
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of failing lines.")
    http_fault_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of API requests answered 429/500/503."
    )
    batch_fail_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of batches that end `failed`."
    )
    seed: int = 0
    workers: int = Field(
        default=1, ge=1, description="Batches processed at once; above 1, in worker processes."
    )

    @property
    def key(self) -> str | None:
        return None if self.api_key is None else self.api_key.get_secret_value()
