"""Prefect blocks of batch-enrich.

Register both block types with the Prefect API in `PREFECT_API_URL` with
`python -m blocks.register` (see `blocks/register.py` for saving a BatchApi document too).
"""

from blocks.batch_api import BatchApi
from blocks.storage import S3Storage

__all__ = ["BatchApi", "S3Storage"]
