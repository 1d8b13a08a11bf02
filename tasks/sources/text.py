"""Text objects as documents: an `s3://bucket/prefix/` (or local folder) of .txt/.md/.json.

One document per object; its id is the object key on S3 and the path relative to the folder
locally. A `.json` object with a string field named like `text_column` is read as that field.
An object that is not UTF-8 is kept, with the reason in `READ_ERROR_COLUMN`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from tasks.sources.base import READ_ERROR_COLUMN, Source, object_id

_OBJECTS_PER_BATCH = 256


@dataclass(frozen=True)
class TextSource(Source):
    kind = "text"
    suffixes = (".txt", ".md", ".json")

    def schema(self) -> pa.Schema:
        return pa.schema([(self.id_column, pa.string()), (self.text_column, pa.string())])

    def _decode(self, path: str, data: bytes) -> tuple[str | None, str | None]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, (
                f"object {object_id(self, path)!r} is not valid UTF-8 "
                f"(byte 0x{data[exc.start]:02x} at offset {exc.start}); re-encode it as UTF-8"
            )
        if path.endswith(".json"):
            # A JSON object with the text column is read as that field; anything else as text.
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return text, None
            if isinstance(parsed, dict) and isinstance(parsed.get(self.text_column), str):
                return parsed[self.text_column], None
        return text, None

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        fs = self.filesystem
        for start in range(0, len(self.paths), _OBJECTS_PER_BATCH):
            chunk = self.paths[start : start + _OBJECTS_PER_BATCH]
            ids = [object_id(self, p) for p in chunk]
            if columns == [self.id_column]:
                yield pa.record_batch({self.id_column: pa.array(ids, pa.string())})
                continue
            contents = fs.cat(list(chunk))
            texts, errors = [], []
            for path in chunk:
                text, error = self._decode(path, contents[path])
                texts.append(text)
                errors.append(error)
            yield pa.record_batch(
                {
                    self.id_column: pa.array(ids, pa.string()),
                    self.text_column: pa.array(texts, pa.string()),
                    READ_ERROR_COLUMN: pa.array(errors, pa.string()),
                }
            )
