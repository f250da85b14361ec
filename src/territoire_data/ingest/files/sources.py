"""Row sources the loader reads: a CSV file, and (in geojson.py) GeoJSON features, behind one small protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from territoire_data.ingest.files.reader import CsvFile, open_csv

# (first line of the record, cells as text, geometry object of the record or None)
Record = tuple[int, list[str], Any]


class RowSource(Protocol):
    """Something with a header and records; `format` is 'csv' or 'geojson'."""

    format: str
    label: str
    header: list[str]

    def records(self) -> Iterator[Record]: ...

    def describe(self) -> dict[str, Any]: ...

    def raw_line(self, cells: list[str]) -> str: ...

    def close(self) -> None: ...


class CsvSource:
    """A CSV file as a row source (records carry no geometry object: it comes from the columns)."""

    format = "csv"

    def __init__(self, path: str | Path, *, label: str | None = None, delimiter: str | None = None,
                 encoding: str | None = None) -> None:  # fmt: skip
        self.file: CsvFile = open_csv(path, delimiter=delimiter, encoding=encoding)
        self.label = label or Path(path).name
        self.header = self.file.header

    def records(self) -> Iterator[Record]:
        for line, cells in self.file.records():
            yield line, cells, None

    def describe(self) -> dict[str, Any]:
        delimiter = self.file.dialect.delimiter
        return {"format": "csv", "encoding": self.file.dialect.encoding, "delimiter": delimiter}

    def raw_line(self, cells: list[str]) -> str:
        return self.file.dialect.delimiter.join(cells)

    def close(self) -> None:
        self.file.close()
