"""The texts of files of records: JSON Lines, JSON arrays, Parquet, Arrow IPC, dataset folders.

Every reader streams: JSON Lines line by line through the decompressor, JSON arrays element by
element (:mod:`data_prep.json_array`), Parquet by record batches of its row groups (the text
column only), Arrow IPC by record batches. Memory holds one record, or one batch of a table (of
Parquet, also the row group's compressed text column, which pyarrow reads at once), never a file.

A record's text is its ``--text-key`` field. A record without it counts as ``missing_key``, one
whose value is not a string (null, a number, ...) as ``not_text``, a blank one as ``empty``, each
with where it is: ``file:line`` for JSON Lines, ``file[index]`` for arrays and tables. A table
(Parquet or Arrow file, or one data file of a dataset folder) without a string column of that
name is skipped whole, once, under the same reasons; a file with no records at all is ``empty``.
"""
from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .formats import Format, dataset_files, detect, open_input
from .json_array import array_items
from .skips import SkipLog

#: Rows per record batch read from a Parquet file.
PARQUET_BATCH_ROWS = 1024
#: A JSON array cannot be resynchronised after a fault: what follows it is not read.
LOST = "the rest of the array is lost"


class Missing:
    """Stands for a record's text field that is not there, saying why."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return names[type(value)]


def _field(record: object, key: str) -> object:
    if not isinstance(record, dict):
        return Missing(f"{_json_type(record)}, not an object with {key!r}")
    return record[key] if key in record else Missing(f"no {key!r} key")


def _json_fault(exc: ValueError | RecursionError) -> str:
    """What is wrong with undecodable JSON (the decoder recurses: deep nesting exhausts the stack)."""
    return exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"


def texts(records: Iterable[tuple[str, object]], key: str, path: Path, skips: SkipLog) -> Iterator[str]:
    """The usable texts of ``(where, value)`` records, ``value`` being the text field or a
    :class:`Missing`; every other record is counted in ``skips``, and so is the file when it gave
    no record and no other reason to skip it."""
    seen, skipped = 0, skips.total
    for where, value in records:
        seen += 1
        if isinstance(value, Missing):
            skips.add("missing_key", where, value.detail)
        elif not isinstance(value, str):
            skips.add("not_text", where, f"{key!r} is {_json_type(value)}, not a string")
        elif not value.strip():
            skips.add("empty", where, f"empty {key!r}")
        else:
            yield value
    if not seen and skips.total == skipped:
        skips.add("empty", str(path), "no records")


def jsonl_records(path: Path, fmt: Format, key: str, skips: SkipLog) -> Iterator[tuple[str, object]]:
    """``(path:line, text field)`` of each non-blank line; undecodable lines go to ``skips``."""
    with open_input(path, fmt.compression) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line.decode("utf-8-sig"))  # -sig: a BOM may open the file
            except UnicodeDecodeError as exc:
                skips.add("bad_utf8", where, f"invalid UTF-8 at byte {exc.start} of the line")
            except (json.JSONDecodeError, RecursionError) as exc:
                skips.add("corrupt", where, f"undecodable JSON line ({_json_fault(exc)})")
            else:
                yield where, _field(record, key)


def array_records(path: Path, fmt: Format, key: str, skips: SkipLog) -> Iterator[tuple[str, object]]:
    """``(path[index], text field)`` of each element; a fault skips the rest of the file."""
    index = 0
    try:
        with io.TextIOWrapper(open_input(path, fmt.compression), encoding="utf-8-sig") as f:
            for record in array_items(f.read):
                yield f"{path}[{index}]", _field(record, key)
                index += 1
    except UnicodeDecodeError as exc:
        skips.add("bad_utf8", f"{path}[{index}]", f"invalid UTF-8 ({exc.reason}); {LOST}")
    except (json.JSONDecodeError, RecursionError) as exc:
        skips.add("corrupt", f"{path}[{index}]", f"malformed JSON array ({_json_fault(exc)}); {LOST}")


@contextmanager
def _table(path: Path, kind: str, key: str) -> Iterator[tuple[pa.Schema, Iterable[pa.RecordBatch]]]:
    """A table's schema and its record batches, read one at a time (of Parquet, the text column only)."""
    if kind == "parquet":
        with pq.ParquetFile(path) as table:
            yield table.schema_arrow, table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[key])
        return
    with pa.OSFile(str(path)) as source:  # read, not memory-mapped: batches leave no resident pages
        if kind == "arrow_file":
            reader = pa.ipc.open_file(source)
            yield reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            reader = pa.ipc.open_stream(source)
            yield reader.schema, reader


def _is_string(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def table_records(path: Path, fmt: Format, key: str, skips: SkipLog,
                  start: int = 0) -> Iterator[tuple[str, object]]:
    """``(path[row], value)`` of a Parquet or Arrow table's ``key`` column; rows numbered from ``start``."""
    with _table(path, fmt.kind, key) as (schema, batches):
        if key not in schema.names:
            skips.add("missing_key", str(path), f"no column {key!r} (has: {', '.join(schema.names) or 'none'})")
            return
        if not _is_string(schema.field(key).type):
            skips.add("not_text", str(path), f"column {key!r} is {schema.field(key).type}, not a string")
            return
        row = start
        for batch in batches:
            for value in batch.column(key).to_pylist():
                yield f"{path}[{row}]", value
                row += 1


def dataset_records(folder: Path, fmt: Format, key: str, skips: SkipLog) -> Iterator[tuple[str, object]]:
    """The rows of a Hugging Face ``save_to_disk`` folder's data files, as one table."""
    start = 0
    for path in dataset_files(folder):
        data_format = detect(path)
        if data_format.kind not in ("arrow_stream", "arrow_file"):
            skips.add("corrupt", str(path), f"a data file of {folder.name} that is no Arrow IPC data ({data_format})")
            continue
        for where, value in table_records(path, data_format, key, skips, start):
            yield where, value
            start += 1


#: The record reader of each format, by :attr:`Format.kind`.
READERS = {"jsonl": jsonl_records, "json_array": array_records, "parquet": table_records,
           "arrow_file": table_records, "arrow_stream": table_records, "dataset": dataset_records}
