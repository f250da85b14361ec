"""Cell parsers for French and international files: decimal commas, FR/ISO dates, FR/EN booleans.

Each parser takes a non-empty cell (emptiness is decided before) and returns a Python value or raises
ValueError with a message fit for a person.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

TRUE_WORDS = frozenset({"true", "vrai", "oui", "yes", "o", "y", "t", "1"})
FALSE_WORDS = frozenset({"false", "faux", "non", "no", "n", "f", "0"})
# Words inference accepts as booleans (not 1/0, which are far more often counts or codes).
_INFER_TRUE = frozenset({"true", "vrai", "oui", "yes"})
_INFER_FALSE = frozenset({"false", "faux", "non", "no"})

PARIS = ZoneInfo("Europe/Paris")

_FR_DATE = re.compile(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})")
_FR_DATETIME = re.compile(
    r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})[ T](\d{1,2})[:hH](\d{2})(?::(\d{2})(?:[.,](\d{1,6}))?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?"
)
_ISO_DURATION = re.compile(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(?:[.,]\d+)?S)?)?")
_YEARMONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def parse_integer(cell: str) -> int:
    """A whole number; thousands separators and decimals are refused, leading + allowed."""
    try:
        value = int(cell)
    except ValueError:
        raise ValueError(f"'{_short(cell)}' is not an integer") from None
    if "_" in cell or not cell.isascii():
        raise ValueError(f"'{_short(cell)}' is not an integer")
    return value


def parse_number(cell: str) -> float:
    """A decimal number, with a decimal point or a decimal comma (`12,5`)."""
    # Hot path of every file: no exception on the common decimal comma, checks only on odd input.
    text = cell.replace(",", ".", 1) if "," in cell else cell
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{_short(cell)}' is not a number") from None
    if not cell.isascii() or "_" in cell or ("," in cell and "." in cell):
        raise ValueError(f"'{_short(cell)}' is not a number")
    # inf or nan: only when written as such
    if value - value != 0.0 and cell.strip().lower().lstrip("+-") not in ("nan", "inf", "infinity"):
        raise ValueError(f"'{_short(cell)}' is out of range for a number")
    return value


def parse_boolean(
    cell: str, true_values: frozenset[str] = TRUE_WORDS, false_values: frozenset[str] = FALSE_WORDS
) -> bool:
    """true/false, vrai/faux, oui/non, yes/no, 1/0, in any case."""
    word = cell.strip().lower()
    if word in true_values:
        return True
    if word in false_values:
        return False
    raise ValueError(f"'{_short(cell)}' is not a boolean (true/false, oui/non, 1/0)")


def parse_date(cell: str) -> date:
    """ISO `2024-03-31` or French `31/03/2024` (also `31-03-2024`, `31.03.2024`)."""
    try:
        return date.fromisoformat(cell)
    except ValueError:
        pass
    match = _FR_DATE.fullmatch(cell.strip())
    if match:
        day, month, year = (int(g) for g in match.groups())
        try:
            return date(year, month, day)
        except ValueError as exc:
            raise ValueError(f"'{_short(cell)}' is not a valid date ({exc})") from None
    if _ISO_DATETIME.match(cell):
        raise ValueError(f"'{_short(cell)}' is a datetime, not a date")
    raise ValueError(f"'{_short(cell)}' is not a date (YYYY-MM-DD or JJ/MM/AAAA)")


def _offset(text: str) -> tzinfo:
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_datetime(cell: str, default_tz: tzinfo = PARIS) -> datetime:
    """ISO 8601 (with `T` or a space, offset or `Z`) or French `31/03/2024 14:05[:00]`.

    A datetime without an offset is read in `default_tz` (Europe/Paris unless the source says otherwise),
    so its instant is right on both sides of a DST change.
    """
    try:
        value = datetime.fromisoformat(cell)
    except ValueError:
        match = _FR_DATETIME.fullmatch(cell.strip())
        if not match:
            if _ISO_DATE.fullmatch(cell) or _FR_DATE.fullmatch(cell.strip()):
                value = datetime.combine(parse_date(cell), time())
                return value.replace(tzinfo=default_tz)
            raise ValueError(f"'{_short(cell)}' is not a datetime (ISO 8601 or JJ/MM/AAAA HH:MM)") from None
        day, month, year, hour, minute, second, fraction, offset = match.groups()
        try:
            value = datetime(
                int(year),
                int(month),
                int(day),
                int(hour),
                int(minute),
                int(second or 0),
                int((fraction or "0").ljust(6, "0")),
                tzinfo=_offset(offset) if offset else None,
            )
        except ValueError as exc:
            raise ValueError(f"'{_short(cell)}' is not a valid datetime ({exc})") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_tz)
    return value


def parse_time(cell: str) -> time:
    """`14:05`, `14:05:30`, `14h05`."""
    text = cell.strip().replace("h", ":").replace("H", ":")
    if text.endswith(":"):
        text += "00"
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{_short(cell)}' is not a time (HH:MM[:SS])") from None


def parse_year(cell: str) -> int:
    if not re.fullmatch(r"\d{4}", cell.strip()):
        raise ValueError(f"'{_short(cell)}' is not a year (YYYY)")
    return int(cell)


def parse_yearmonth(cell: str) -> str:
    if not _YEARMONTH.fullmatch(cell.strip()):
        raise ValueError(f"'{_short(cell)}' is not a year-month (YYYY-MM)")
    return cell.strip()


def parse_duration(cell: str) -> str:
    """An ISO 8601 duration (`P1DT2H`), kept as text for PostgreSQL's interval input."""
    if not _ISO_DURATION.fullmatch(cell.strip()):
        raise ValueError(f"'{_short(cell)}' is not an ISO 8601 duration (e.g. P1DT2H)")
    return cell.strip().replace(",", ".")


def _short(cell: str, limit: int = 60) -> str:
    return cell if len(cell) <= limit else cell[: limit - 1] + "…"


# --- inference ---------------------------------------------------------------------------------------------


def _all(values: list[str], predicate: object) -> bool:
    check = predicate
    for value in values:
        try:
            check(value)  # type: ignore[operator]
        except ValueError:
            return False
    return True


def infer_type(values: list[str]) -> str:
    """The narrowest Table Schema type that every non-empty sample value of a column parses as."""
    if not values:
        return "string"
    stripped = [v.strip() for v in values]
    if all(_INTEGER.fullmatch(v) for v in stripped):
        # Codes with leading zeros (INSEE, station ids, postcodes) are identifiers, not numbers.
        if any(v.lstrip("+-").startswith("0") and len(v.lstrip("+-")) > 1 for v in stripped):
            return "string"
        if all(-(2**63) <= int(v) < 2**63 for v in stripped):
            return "integer"
        return "string"
    if all(_NUMBER.fullmatch(v) for v in stripped) and _all(stripped, parse_number):
        return "number"
    lowered = {v.lower() for v in stripped}
    if lowered <= (_INFER_TRUE | _INFER_FALSE):
        return "boolean"
    if all(_ISO_DATE.fullmatch(v) or _FR_DATE.fullmatch(v) for v in stripped) and _all(stripped, parse_date):
        return "date"
    if all(_ISO_DATETIME.match(v) or _FR_DATETIME.fullmatch(v) for v in stripped) and _all(stripped, parse_datetime):
        return "datetime"
    return "string"
