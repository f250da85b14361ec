"""One small parser per query parameter (OGC API - Features Parts 1-3), free of the web framework."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime

from territoire_data.errors import BadRequestError
from territoire_data.query.collections import Collection
from territoire_data.query.cql2sql import ID_NAMES
from territoire_data.querylimits import QueryLimits, current_limits

DEFAULT_LIMIT = 10
# Larger than any projected coordinate (Web Mercator reaches 2.0e7 m): beyond it a bbox is a mistake.
BBOX_MAX_ABS = 1e8
MAX_LIMIT = 10_000

# Parameters with a meaning of their own; any other parameter must be a property name (equality filter).
RESERVED = frozenset(
    {
        "f",
        "limit",
        "offset",
        "after-id",
        "bbox",
        "bbox-crs",
        "datetime",
        "properties",
        "sortby",
        "crs",
        "filter",
        "filter-lang",
        "filter-crs",
        "skipGeometry",
    }
)


def parse_limit(value: str | None, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """`limit`: 1..maximum; larger values are clamped to the maximum, as Part 1 allows."""
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadRequestError(f"limit: {value!r} is not an integer") from None
    if limit < 1:
        raise BadRequestError("limit: must be at least 1")
    return min(limit, maximum)


def parse_offset(value: str | None) -> int:
    if value is None or value == "":
        return 0
    try:
        offset = int(value)
    except ValueError:
        raise BadRequestError(f"offset: {value!r} is not an integer") from None
    if offset < 0:
        raise BadRequestError("offset: must not be negative")
    return offset


def parse_after_id(value: str | None) -> int | None:
    """`after-id`: the id of the last feature of the previous page (our next links carry it, so that a deep page is
    found through the primary key instead of counting past every earlier feature)."""
    if value is None or value == "":
        return None
    try:
        after = int(value)
    except ValueError:
        raise BadRequestError(f"after-id: {value!r} is not an integer") from None
    return after


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    """`bbox`: 4 numbers (or 6, the heights being ignored), in the order of the `bbox-crs` axes."""
    if value is None or value == "":
        return None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise BadRequestError(f"bbox: {value!r} is not a list of numbers") from None
    if len(numbers) == 6:
        numbers = [numbers[0], numbers[1], numbers[3], numbers[4]]
    if len(numbers) != 4 or not all(math.isfinite(n) for n in numbers):
        raise BadRequestError("bbox: needs 4 (or 6) finite numbers")
    if any(abs(n) > BBOX_MAX_ABS for n in numbers):
        raise BadRequestError(f"bbox: a coordinate is beyond ±{BBOX_MAX_ABS:.0e}, in no CRS we serve")
    if numbers[1] > numbers[3]:
        raise BadRequestError("bbox: the lower corner must be below the upper corner")
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _instant(text: str) -> datetime | date | None:
    if text in ("..", ""):
        return None
    try:
        if "T" in text or "t" in text or " " in text:
            return datetime.fromisoformat(text)
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequestError(f"datetime: {text!r} is not an RFC 3339 date or date-time") from None


@dataclass(frozen=True)
class DatetimeFilter:
    """An instant (start == end, not open) or an interval with optional open ends."""

    start: datetime | date | None
    end: datetime | date | None
    instant: bool


def parse_datetime(value: str | None) -> DatetimeFilter | None:
    """`datetime`: `2020-01-01T00:00:00Z`, `2020-01-01`, `a/b`, `../b`, `a/..` or `a/`."""
    if value is None or value == "":
        return None
    if "/" in value:
        first, _, second = value.partition("/")
        start, end = _instant(first), _instant(second)
        if start is None and end is None:
            raise BadRequestError("datetime: an interval needs at least one bound")
        if start is not None and end is not None and str(start) > str(end) and type(start) is type(end):
            raise BadRequestError("datetime: the interval ends before it starts")
        return DatetimeFilter(start, end, instant=False)
    moment = _instant(value)
    if moment is None:
        raise BadRequestError("datetime: empty instant")
    return DatetimeFilter(moment, moment, instant=True)


def parse_properties(
    value: str | None, collection: Collection, *, parameter: str = "properties"
) -> tuple[str, ...] | None:
    """`properties`: the fields to return (None: all); names must be the collection's."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if collection.field(name) is None:
            raise BadRequestError(f"{parameter}: unknown property {name!r}")
    return names


def parse_sortby(
    value: str | None, collection: Collection, *, parameter: str = "sortby", limits: QueryLimits | None = None
) -> tuple[tuple[str, bool], ...]:
    """`sortby`: `a,-b,+c` -> ((sql of a, ascending), ...); only the collection's fields and the id."""
    if value is None or value.strip() == "":
        return ()
    keys: list[tuple[str, bool]] = []
    raw_keys = value.split(",")
    (limits or current_limits()).check(parameter, "sort_max_keys", "the number of sort keys", len(raw_keys))
    for raw in raw_keys:
        item = raw.strip()
        ascending = not item.startswith("-")
        name = item.lstrip("+-").strip()
        if name.upper().endswith(" DESC"):
            name, ascending = name[:-5].strip(), False
        elif name.upper().endswith(" ASC"):
            name = name[:-4].strip()
        found = collection.field(name)
        if found is not None:
            keys.append((found.sql, ascending))
        elif name in ID_NAMES:
            keys.append(("t._fid", ascending))
        else:
            raise BadRequestError(f"{parameter}: unknown property {name!r}")
    return tuple(keys)


def parse_bool(value: str | None, parameter: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadRequestError(f"{parameter}: expected true or false")


def property_filters(params: dict[str, str], collection: Collection) -> dict[str, str]:
    """Other parameters are equality filters on properties; anything else is a 400 (Part 1, unknown parameter)."""
    found: dict[str, str] = {}
    for name, value in params.items():
        if name in RESERVED:
            continue
        if collection.field(name) is None:
            raise BadRequestError(f"unknown query parameter {name!r}")
        found[name] = value
    return found
