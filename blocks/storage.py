"""The `S3Storage` block: endpoint, region and credentials for `s3://` sources and destinations."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.storage import StorageSettings


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
