"""Units people read: a UCUM code (what Datastreams carry, `Cel`, `ug/m3`, `{count}`) as a symbol and in words,
and values written the French way (decimal comma, narrow no-break space before the unit, oui/non, "il y a 5 min").
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

# UCUM code -> (symbol shown after a value, French words, English words). Annotations ({count}, {vehicles}) are
# counts: no symbol, the quantity's name says what is counted ("Passages de vélos").
UCUM: dict[str, tuple[str, str, str]] = {
    "Cel": ("°C", "degrés Celsius", "degrees Celsius"),
    "K": ("K", "kelvins", "kelvins"),
    "%": ("%", "pour cent", "percent"),
    "ug/m3": ("µg/m³", "microgrammes par mètre cube", "micrograms per cubic metre"),
    "mg/m3": ("mg/m³", "milligrammes par mètre cube", "milligrams per cubic metre"),
    "[ppm]": ("ppm", "parties par million", "parts per million"),
    "[ppb]": ("ppb", "parties par milliard", "parts per billion"),
    "dB": ("dB", "décibels", "decibels"),
    "dB[A]": ("dB(A)", "décibels A", "A-weighted decibels"),
    "hPa": ("hPa", "hectopascals", "hectopascals"),
    "Pa": ("Pa", "pascals", "pascals"),
    "m/s": ("m/s", "mètres par seconde", "metres per second"),
    "km/h": ("km/h", "kilomètres par heure", "kilometres per hour"),
    "mm": ("mm", "millimètres", "millimetres"),
    "cm": ("cm", "centimètres", "centimetres"),
    "m": ("m", "mètres", "metres"),
    "m3": ("m³", "mètres cubes", "cubic metres"),
    "L": ("L", "litres", "litres"),
    "W": ("W", "watts", "watts"),
    "kW": ("kW", "kilowatts", "kilowatts"),
    "kW.h": ("kWh", "kilowattheures", "kilowatt-hours"),
    "V": ("V", "volts", "volts"),
    "mV": ("mV", "millivolts", "millivolts"),
    "A": ("A", "ampères", "amperes"),
    "lx": ("lx", "lux", "lux"),
    "W/m2": ("W/m²", "watts par mètre carré", "watts per square metre"),
    "deg": ("°", "degrés", "degrees"),
    "s": ("s", "secondes", "seconds"),
    "min": ("min", "minutes", "minutes"),
    "h": ("h", "heures", "hours"),
}


def unit_of(unit: Any) -> tuple[str, str]:
    """(symbol, words) of a Datastream's unitOfMeasurement (its UCUM `symbol`, else its own name and symbol)."""
    if not isinstance(unit, dict):
        return "", ""
    code = str(unit.get("symbol") or "")
    if code in UCUM:
        return UCUM[code][0], UCUM[code][1]
    if code.startswith("{") and code.endswith("}"):  # a UCUM annotation: a count of something
        return "", str(unit.get("name") or code.strip("{}"))
    return code, str(unit.get("name") or code)


def label(quantity: str, symbol: str) -> str:
    """ "Température de l'air (°C)"; a count has no symbol: "Passages de vélos"."""
    return f"{quantity} ({symbol})" if symbol else quantity


def number_fr(value: float, digits: int = 2) -> str:
    """21.456 -> "21,46"; 1234567 -> "1 234 567" (narrow no-break spaces)."""
    if not math.isfinite(value):
        return "—"
    text = f"{value:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"
    return text.replace(",", "\u202f").replace(".", ",")


def value_fr(value: Any, symbol: str) -> str:
    """A latest value as a French reader expects it: "21,5 °C", "oui", "42"."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, int | float):
        text = number_fr(float(value))
        return f"{text}\u202f{symbol}" if symbol else text
    return str(value)


def age_fr(moment: datetime | None, now: datetime) -> str:
    """How long ago, in words: "il y a 5 min", "il y a 3 h", "il y a 2 jours"."""
    if moment is None:
        return "jamais"
    delta = now - moment
    if delta < timedelta(minutes=1):
        return "à l'instant"
    if delta < timedelta(hours=1):
        return f"il y a {int(delta.total_seconds() // 60)} min"
    if delta < timedelta(days=1):
        return f"il y a {int(delta.total_seconds() // 3600)} h"
    days = delta.days
    return f"il y a {days} jour{'s' if days > 1 else ''}"
