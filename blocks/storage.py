"""The `S3Storage` block: endpoint, region and credentials for `s3://` sources and destinations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


@dataclass(frozen=True)
class StorageSettings:
    """S3 connection settings. Secrets stay `SecretStr` until handed to s3fs."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = field(default=None, repr=False)
    secret_access_key: SecretStr | None = field(default=None, repr=False)
    session_token: SecretStr | None = field(default=None, repr=False)

    def s3fs_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.access_key_id is not None:
            options["key"] = self.access_key_id.get_secret_value()
        if self.secret_access_key is not None:
            options["secret"] = self.secret_access_key.get_secret_value()
        if self.session_token is not None:
            options["token"] = self.session_token.get_secret_value()
        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return options


class S3Storage(Block):
    """S3 (or S3-compatible) settings. Unset fields fall back to the AWS environment variables."""

    _block_type_name = "S3 Storage"
    _block_type_slug = "s3-storage"
    _description = "Endpoint, region and credentials used to read sources and write datasets."

    endpoint_url: str | None = Field(
        default=None, description="e.g. https://s3.eu-west-1.amazonaws.com or a MinIO URL."
    )
    region: str | None = Field(default=None, description="e.g. eu-west-1")
    aws_access_key_id: SecretStr | None = Field(default=None)
    aws_secret_access_key: SecretStr | None = Field(default=None)
    aws_session_token: SecretStr | None = Field(default=None)

    def settings(self) -> StorageSettings:
        return StorageSettings(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.aws_access_key_id,
            secret_access_key=self.aws_secret_access_key,
            session_token=self.aws_session_token,
        )
