"""The observation types of SensorThings 1.1 (table 12) and which results each accepts, for every write door.

A Datastream says what kind of result its Observations carry; a result of another kind (`900` or `"n/a"` for an
`OM_TruthObservation`) is refused with its reason, whether it comes over HTTP, `$batch`, `CreateObservations`,
SensorThings MQTT or an ingest connector. Shared by `sensorthings` and `ingest`, so it imports nothing of either.
"""

from __future__ import annotations

import math
from typing import Any

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
CATEGORY = OM + "OM_CategoryObservation"
COUNT = OM + "OM_CountObservation"
MEASUREMENT = OM + "OM_Measurement"
OBSERVATION = OM + "OM_Observation"
TRUTH = OM + "OM_TruthObservation"
COMPLEX = OM + "OM_ComplexObservation"

# The types a Datastream (or each member of a MultiDatastream's multiObservationDataTypes) may declare.
DATASTREAM_TYPES = (CATEGORY, COUNT, MEASUREMENT, OBSERVATION, TRUTH)

# What each type accepts, in words (error messages) and as a predicate on the stored columns (checks on rows
# already stored, when a Datastream's type changes or an Observation moves to another Datastream).
_EXPECTED = {
    MEASUREMENT: "a number",
    COUNT: "an integer",
    TRUTH: "a boolean",
    CATEGORY: "a string (a term or a URI)",
    OBSERVATION: "any JSON value",
}
_STORED_PREDICATE = {
    MEASUREMENT: "{a}result_number IS NOT NULL",
    COUNT: "{a}result_number IS NOT NULL AND {a}result_number = trunc({a}result_number)",
    TRUTH: "{a}result_boolean IS NOT NULL",
    CATEGORY: "{a}result_string IS NOT NULL",
    OBSERVATION: "TRUE",
}


def short_name(observation_type: str) -> str:
    """`OM_Measurement` for the full URI (messages stay readable)."""
    return observation_type.removeprefix(OM)


def check_declared(observation_type: object, where: str) -> str | None:
    """Why a declared observationType is not one of the standard's, or None when it is."""
    if observation_type in DATASTREAM_TYPES:
        return None
    shown = repr(observation_type)[:80]
    return f"{where} {shown} is not a SensorThings observation type; use one of {', '.join(DATASTREAM_TYPES)}"


def result_problem(observation_type: str, value: Any) -> str | None:
    """Why `value` cannot be the result of an Observation of this type, or None when it can.

    Numbers are JSON numbers: `3.0` is an integer for an `OM_CountObservation`, `true` is no number, and a
    numeric string (`"21.5"`) is a string. Types outside the standard's list accept anything (older rows).
    """
    expected = _EXPECTED.get(observation_type)
    if expected is None or observation_type == OBSERVATION:
        return None
    ok: bool
    if observation_type == TRUTH:
        ok = isinstance(value, bool)
    elif observation_type == CATEGORY:
        ok = isinstance(value, str)
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        ok = False
    else:
        ok = observation_type == MEASUREMENT or isinstance(value, int) or float(value).is_integer()
    if ok:
        return None
    return f"an {short_name(observation_type)} result must be {expected}, not {_describe(value)}"


def stored_predicate(observation_type: str, alias: str = "") -> str:
    """SQL true for a stored Observation row whose result fits `observation_type` (our constants, no input)."""
    template = _STORED_PREDICATE.get(observation_type, "TRUE")
    return template.format(a=f"{alias}." if alias else "")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"
