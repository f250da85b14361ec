"""Streaming CSV reader: detected dialect, header, then (line number, values) one record at a time."""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from territoire_data.errors import ValidationFailedError
from territoire_data.ingest.files.dialect import SAMPLE_BYTES, Dialect, NotTextError, detect_delimiter, sniff

# GeoJSON or WKT cells of real files go well past the csv module's 128 KiB default.
MAX_FIELD_CHARS = 16 * 1024 * 1024
csv.field_size_limit(MAX_FIELD_CHARS)

_CHUNK = 1 << 20


class CsvFormatError(ValidationFailedError):
    """The file cannot be read as CSV at all (encoding, quoting, empty)."""

    type_slug = "csv-format"


def _is_valid_utf8(path: Path) -> bool:
    """Decode the whole file incrementally (C speed, bounded memory) to confirm a UTF-8 guess."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        try:
            while chunk := handle.read(_CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def detect_file_dialect(path: Path, *, delimiter: str | None = None, encoding: str | None = None) -> Dialect:
    """Sniff a file's dialect; a UTF-8 guess is confirmed over the whole file, else cp1252 is used."""
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
        complete = len(sample) < SAMPLE_BYTES
    if not sample.strip():
        raise CsvFormatError("the file is empty")
    try:
        dialect = sniff(sample, complete=complete)
    except NotTextError as exc:
        raise CsvFormatError(f"{exc}; upload a CSV file (UTF-8, UTF-16 or Windows-1252 text)") from None
    if dialect.encoding == "utf-8" and not complete and not _is_valid_utf8(path):
        text = sample.decode("cp1252", errors="replace")
        dialect = Dialect(encoding="cp1252", delimiter=detect_delimiter(text, complete=False))
    if encoding:
        dialect = Dialect(encoding=encoding, delimiter=dialect.delimiter)
    if delimiter:
        dialect = Dialect(encoding=dialect.encoding, delimiter=delimiter)
    return dialect


@dataclass
class CsvFile:
    """An open CSV file: its dialect, its header (names as written) and a record iterator."""

    path: Path
    dialect: Dialect
    header: list[str]
    _handle: IO[str]
    _reader: Iterator[list[str]]
    _line: int = 1

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """Yield (first physical line of the record, values), skipping blank lines."""
        reader = self._reader
        previous_end = self._line
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise CsvFormatError(f"line {previous_end + 1}: the CSV cannot be parsed ({exc})") from None
            except UnicodeDecodeError:
                raise CsvFormatError(
                    f"line {previous_end + 1}: bytes that are not {self.dialect.encoding} (the file mixes encodings)"
                ) from None
            start = previous_end + 1
            previous_end = reader.line_num  # type: ignore[attr-defined]
            if row:
                yield start, row

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_csv(path: str | Path, *, delimiter: str | None = None, encoding: str | None = None) -> CsvFile:
    """Open a CSV file with its detected dialect and read its header line."""
    path = Path(path)
    dialect = detect_file_dialect(path, delimiter=delimiter, encoding=encoding)
    handle = path.open("r", encoding=dialect.encoding, newline="")
    reader = csv.reader(handle, delimiter=dialect.delimiter, quotechar=dialect.quotechar, strict=True)
    try:
        header: list[str] | None = None
        while header is None:
            row = next(reader)
            if row:
                header = [name.strip() for name in row]
    except StopIteration:
        handle.close()
        raise CsvFormatError("the file has no header line") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        handle.close()
        raise CsvFormatError(f"the header line cannot be read: {exc}") from None
    # A trailing delimiter on the header line adds an unnamed empty column: drop it.
    while len(header) > 1 and header[-1] == "":
        header.pop()
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0].removeprefix("\ufeff")
    return CsvFile(path, dialect, header, handle, reader, reader.line_num)
