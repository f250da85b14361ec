"""Encoding and CSV dialect detection for the files French services publish (cheap sniff on a sample)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
# Excel's "Texte Unicode" and many Windows tools write UTF-16 with a byte order mark.
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SAMPLE_BYTES = 1 << 20
DELIMITERS = (";", ",", "\t", "|")
_SAMPLE_ROWS = 50


@dataclass(frozen=True)
class Dialect:
    """How to read one file: text encoding and delimiter (quoting is always RFC 4180 double quotes)."""

    encoding: str
    delimiter: str
    quotechar: str = '"'


class NotTextError(ValueError):
    """The bytes are not text in any encoding we read (an image, an archive, a spreadsheet)."""


# What binary files that people upload by mistake start with, to name them in the error.
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (or an .xlsx/.ods spreadsheet: export it as CSV)",
    b"\xd0\xcf\x11\xe0": "an old Office document (.xls: export it as CSV)",
    b"\x1f\x8b": "a gzip archive",
}


def detect_encoding(sample: bytes, *, complete: bool = False) -> str:
    """A byte order mark first (UTF-8 or UTF-16), then UTF-8, else cp1252 (latin-1 when cp1252 leaves a byte
    undefined); NotTextError for binary content.

    `sample` is the first bytes of the file; unless `complete`, a multi-byte character cut at its end is
    not held against UTF-8.
    """
    if sample.startswith(BOM):
        return "utf-8-sig"
    if sample.startswith(UTF16_BOMS):
        return "utf-16"  # Python's utf-16 reads the BOM, picks the byte order and drops the mark
    for magic, what in _MAGIC.items():
        if sample.startswith(magic):
            raise NotTextError(f"the file is {what}, not a text file")
    if b"\x00" in sample:
        raise NotTextError("the file holds NUL bytes: it is binary, or UTF-16 without a byte order mark")
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
    if encoding == "utf-16" and not complete:
        sample = sample[: len(sample) - len(sample) % 2]  # a sample cut inside a code unit
    text = sample.decode(encoding, errors="replace")
    if encoding in ("utf-8-sig", "utf-16"):
        text = text.removeprefix("\ufeff")
    return Dialect(encoding=encoding, delimiter=detect_delimiter(text, complete=complete))
