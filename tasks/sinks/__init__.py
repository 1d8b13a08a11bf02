"""Output formats: each is a `Sink` (open, write, commit, abort) in a module of its own."""

from __future__ import annotations

from typing import Literal

from tasks.sinks.base import Sink, SinkType
from tasks.sinks.delta import DeltaSink
from tasks.sinks.parquet import ParquetSink
from tasks.state import RunState
from tasks.storage import StorageSettings, filesystem

OutputFormat = Literal["parquet", "delta"]
SINKS: dict[str, SinkType] = {"parquet": ParquetSink, "delta": DeltaSink}


def sink_type(output_format: str) -> SinkType:
    try:
        return SINKS[output_format]
    except KeyError:
        raise ValueError(
            f"output_format {output_format!r} is not one of {', '.join(map(repr, SINKS))}"
        ) from None


def make_sink(
    output_format: str, destination: str, state: RunState, settings: StorageSettings | None
) -> Sink:
    """The run's sink, not yet opened."""
    return sink_type(output_format)(destination, state, settings)


def check_destination(
    output_format: str, destination: str, settings: StorageSettings | None = None
) -> None:
    """Refuse, before anything is paid, a destination this format cannot write cleanly."""
    fs, root = filesystem(destination, settings)
    sink_type(output_format).check_destination(destination, fs, root)


__all__ = ["SINKS", "OutputFormat", "Sink", "check_destination", "make_sink", "sink_type"]
