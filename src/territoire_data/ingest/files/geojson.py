"""Streaming GeoJSON reader: RFC 7946 FeatureCollections and newline-delimited GeoJSON (GeoJSONSeq), one
feature at a time with bounded memory, as rows of text cells plus a geometry object."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from territoire_data.errors import ValidationFailedError

_CHUNK = 1 << 20
MAX_FEATURE_CHARS = 64 * 1024 * 1024
SAMPLE_FEATURES = 1000
_DECODER = json.JSONDecoder()
_WS = re.compile(r"[\s,\x1e]*")
_FEATURES = re.compile(r'"features"\s*:\s*\[')
_LEGACY_CRS = re.compile(r'"crs"\s*:\s*\{.*?EPSG:{1,2}(\d+)', re.S)


class GeoJsonFormatError(ValidationFailedError):
    """The file is not GeoJSON we can read (not JSON, no features array, a feature too large)."""

    type_slug = "geojson-format"


def _read(handle: IO[str]) -> str:
    """The next chunk of the text; GeoJSON is UTF-8 (RFC 7946), anything else is refused as a format error."""
    try:
        text: str = handle.read(_CHUNK)
    except UnicodeDecodeError as exc:
        raise GeoJsonFormatError(f"not GeoJSON: the file is not UTF-8 text ({exc.reason})") from None
    return text


def _cell(value: Any) -> str:
    """A property value as the text cell the validators read (null → empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value).decode()


class _Scanner:
    """Decode consecutive JSON values from a text stream, keeping only the undecoded tail in memory."""

    def __init__(self, handle: IO[str], prefix: str = "") -> None:
        self.handle = handle
        self.buffer = prefix
        self.pos = 0
        self.line = 1
        self.eof = False

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = _read(self.handle)
        if not chunk:
            self.eof = True
            return False
        # Drop what was consumed, counting its lines, so memory holds one feature at most.
        self.line += self.buffer.count("\n", 0, self.pos)
        self.buffer = self.buffer[self.pos :] + chunk
        self.pos = 0
        return True

    def skip(self) -> str:
        """Skip separators; return the next character ('' at the end)."""
        while True:
            match = _WS.match(self.buffer, self.pos)
            self.pos = match.end() if match else self.pos
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if not self._more():
                return ""

    def current_line(self) -> int:
        return self.line + self.buffer.count("\n", 0, self.pos)

    def value(self) -> Any:
        """The next JSON value, reading more of the file while it is incomplete."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as exc:
                if len(self.buffer) - self.pos > MAX_FEATURE_CHARS:
                    raise GeoJsonFormatError(f"line {self.current_line()}: a feature is larger than 64 MB") from None
                if not self._more():
                    raise GeoJsonFormatError(f"line {self.current_line()}: invalid JSON ({exc.msg})") from None
                continue
            self.pos = end
            return value


class GeoJsonSource:
    """A GeoJSON file as a row source: header = the properties seen in the first features.

    A property first seen later is not lost silently: `widen()` (before inferring a schema) reads the whole file
    for every property name, and otherwise each one the header lacks is kept in `unseen` with its first line,
    so the import report can name it.
    """

    format = "geojson"

    def __init__(self, path: str | Path, *, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or self.path.name
        self.legacy_crs: str | None = None
        self.unseen: dict[str, int] = {}
        self.late_rows: list[list[str]] = []
        self._start()
        names: dict[str, None] = {}
        for _, feature in self._sample:
            properties = feature.get("properties") or {}
            if isinstance(properties, dict):
                names.update(dict.fromkeys(properties))
        self.header = list(names)

    def _start(self) -> None:
        self.handle = self.path.open("r", encoding="utf-8-sig")
        self.kind = "FeatureCollection"
        self._features = self._open()
        self._sample = list(itertools.islice(self._features, SAMPLE_FEATURES))

    def include(self, names: list[str]) -> None:
        """Read these properties too (a schema's fields), wherever in the file they first appear."""
        self.header += [name for name in names if name not in self.header]

    def widen(self, values_per_property: int = SAMPLE_FEATURES) -> None:
        """Read the rest of the file once for the properties the first features lack: they join the header, and
        up to `values_per_property` of their values are kept in `late_rows` (for type inference). Bounded memory."""
        first = dict.fromkeys(self.header).keys()
        late: dict[str, int] = {}  # property → values kept
        for _, feature in self._features:
            properties = feature.get("properties")
            if not isinstance(properties, dict) or first >= properties.keys():
                continue
            for name in properties.keys() - first:
                kept = late.setdefault(name, 0)
                value = properties[name]
                if value is not None and kept < values_per_property:
                    late[name] = kept + 1
                    self.late_rows.append([name, _cell(value)])
        known = [*first, *late]
        self.close()
        self.header = known
        positions = {name: index for index, name in enumerate(self.header)}
        rows: list[list[str]] = []
        for name, cell in self.late_rows:
            row = [""] * len(self.header)
            row[positions[name]] = cell
            rows.append(row)
        self.late_rows = rows
        self._start()

    def _open(self) -> Iterator[tuple[int, dict[str, Any]]]:
        head = _read(self.handle)
        stripped = head.lstrip("\ufeff \t\r\n\x1e")
        if not stripped:
            raise GeoJsonFormatError("the file is empty")
        if not stripped.startswith("{"):
            raise GeoJsonFormatError("not GeoJSON: the file does not start with a JSON object")
        match = _FEATURES.search(head)
        first_object_end = _first_object_is_feature(stripped)
        if match and not first_object_end:
            crs = _LEGACY_CRS.search(head, 0, match.start())
            if crs:
                self.legacy_crs = f"EPSG:{crs.group(1)}"
            scanner = _Scanner(self.handle, head)
            scanner.line = 1
            scanner.pos = match.end()
            return self._collection(scanner)
        self.kind = "GeoJSONSeq"
        return self._sequence(_Scanner(self.handle, head))

    def _collection(self, scanner: _Scanner) -> Iterator[tuple[int, dict[str, Any]]]:
        while True:
            nxt = scanner.skip()
            if nxt in ("]", ""):
                return
            line = scanner.current_line()
            yield line, _feature(scanner.value(), line)

    def _sequence(self, scanner: _Scanner) -> Iterator[tuple[int, dict[str, Any]]]:
        while scanner.skip():
            line = scanner.current_line()
            yield line, _feature(scanner.value(), line)

    def records(self) -> Iterator[tuple[int, list[str], Any]]:
        header = self.header
        known = dict.fromkeys(header).keys()
        unseen = self.unseen
        for line, feature in itertools.chain(self._sample, self._features):
            properties = feature.get("properties") or {}
            if not isinstance(properties, dict):
                properties = {}
            elif not known >= properties.keys():
                for name in properties.keys() - known:
                    unseen.setdefault(name, line)
            yield line, [_cell(properties.get(name)) for name in header], feature.get("geometry")

    def describe(self) -> dict[str, Any]:
        return {"format": "geojson", "kind": self.kind, "encoding": "utf-8"}

    def raw_line(self, cells: list[str]) -> str:
        return orjson.dumps(dict(zip(self.header, cells, strict=False))).decode()

    def close(self) -> None:
        self.handle.close()


def _first_object_is_feature(text: str) -> bool:
    """True when the file is a sequence of features (its first object is a Feature, not a collection)."""
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        # Cut by the chunk: a FeatureCollection's first line names its type early.
        return bool(re.match(r'\{\s*"type"\s*:\s*"Feature"\s*[,}]', text))
    return isinstance(value, dict) and value.get("type") == "Feature"


def _feature(value: Any, line: int) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") != "Feature":
        raise GeoJsonFormatError(f"line {line}: expected a Feature object")
    return value
