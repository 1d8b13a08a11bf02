"""The real Prefect server these tests share with the other Prefect-server tests."""

from tests.prefect_server import prefect_api, prefect_server

__all__ = ["prefect_api", "prefect_server"]
