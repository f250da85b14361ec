"""Encoding and CSV dialect detection for the files French services publish (cheap sniff on a sample)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
SAMPLE_BYTES = 1 << 20
DELIMITERS = (";", ",", "\t", "|")
_SAMPLE_ROWS = 50


@dataclass(frozen=True)
class Dialect:
    """How to read one file: text encoding and delimiter (quoting is always RFC 4180 double quotes)."""

    encoding: str
    delimiter: str
    quotechar: str = '"'


def detect_encoding(sample: bytes, *, complete: bool = False) -> str:
    """UTF-8 with BOM, UTF-8, else cp1252 (latin-1 when cp1252 leaves a byte undefined).

    `sample` is the first bytes of the file; unless `complete`, a multi-byte character cut at its end is
    not held against UTF-8.
    """
    if sample.startswith(BOM):
        return "utf-8-sig"
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        cut_at_end = not complete and exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data"
        if cut_at_end:
            return "utf-8"
    try:
        sample.decode("cp1252")
        return "cp1252"
    except UnicodeDecodeError:
        return "latin-1"


def _field_counts(text: str, delimiter: str) -> list[int]:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quotechar='"', strict=False)
    counts: list[int] = []
    try:
        for row in reader:
            if row:
                counts.append(len(row))
            if len(counts) >= _SAMPLE_ROWS:
                break
    except csv.Error:
        return counts
    return counts


def detect_delimiter(text: str, *, complete: bool = False) -> str:
    """The delimiter among `;` `,` tab `|` that splits the header into the most columns that rows agree with.

    `text` is the decoded beginning of the file; unless `complete`, its last line may be cut and is ignored.
    Single-column files fall back to `,`.
    """
    if not complete and "\n" in text:
        text = text[: text.rfind("\n") + 1]
    best = ","
    best_score: tuple[float, int] = (0.0, 1)
    for delimiter in DELIMITERS:
        counts = _field_counts(text, delimiter)
        if not counts or counts[0] < 2:
            continue
        header = counts[0]
        rows = counts[1:]
        agreeing = sum(1 for c in rows if c == header or c == header + 1) / len(rows) if rows else 1.0
        score = (agreeing, header)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def sniff(sample: bytes, *, complete: bool = False) -> Dialect:
    """Detect encoding then delimiter from the first bytes of a file."""
    encoding = detect_encoding(sample, complete=complete)
    text = sample.decode(encoding, errors="replace")
    if encoding == "utf-8-sig":
        text = text.removeprefix("\ufeff")
    return Dialect(encoding=encoding, delimiter=detect_delimiter(text, complete=complete))
