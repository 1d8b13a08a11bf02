"""Prefect blocks of batch-enrich. Register them with `prefect block register -m blocks`."""

from blocks.batch_api import BatchApi
from blocks.storage import S3Storage

__all__ = ["BatchApi", "S3Storage"]
