"""Session-wide settings that make the suite hermetic and reliable (see README, Development)."""

from __future__ import annotations

import os
import tempfile

# Set before Prefect is imported anywhere: its settings are read at import time.
_PREFECT_HOME = tempfile.mkdtemp(prefix="batch-enrich-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
