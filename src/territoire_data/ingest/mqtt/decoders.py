"""Payload decoders: ChirpStack v4, The Things Stack v3, SenML (RFC 8428) and mapped JSON -> readings.

Pure functions of (topic, payload, connector, now): no I/O, so every rule is unit-tested on real payloads.
Device types need no code: quantities, units and JSON paths live in the connector YAML.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from territoire_data.ingest.model import Decoded, Device, Ignored, Position, Reading, Rejection
from territoire_data.ingest.mqtt.config import ConnectorConfig, JsonValueSpec

MAX_QUANTITY_LENGTH = 100
MAX_DEVICE_LENGTH = 200
SENML_RELATIVE_LIMIT = 2**28  # RFC 8428 §4.5.3: smaller times are relative to now

# SenML units that are not UCUM codes, and their UCUM equivalents (RFC 8428 §12.1 vs UCUM).
SENML_TO_UCUM = {
    "%RH": "%",
    "%EL": "%",
    "/": "1",
    "count": "{count}",
    "lat": "deg",
    "lon": "deg",
    "beat/min": "/min",
    "beats": "{beats}",
    "Ah": "A.h",
    "kWh": "kW.h",
    "VA": "V.A",
    "VAh": "V.A.h",
    "var": "{var}",
    "m/s2": "m/s2",
    "S/m": "S/m",
    "dBW": "dB[W]",
    "dBm": "dB[mW]",
    "rpm": "{rpm}",
}


def parse_json(payload: bytes) -> Any:
    """Parse JSON, telling NaN/Infinity (which strict JSON forbids) apart from garbage."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        try:
            json.loads(payload)
        except (ValueError, RecursionError):
            raise Rejection("invalid_json", str(exc)[:200]) from None
        raise Rejection("non_finite", "NaN or Infinity in the payload") from None


def parse_time(value: Any, what: str = "time", time_format: str = "iso8601") -> datetime:
    """An aware UTC datetime from ISO 8601 text or epoch seconds/milliseconds."""
    if value is None or value == "":
        raise Rejection("missing_time", f"no {what}")
    if isinstance(value, bool):
        raise Rejection("wrong_type", f"{what} is a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise Rejection("non_finite", f"{what} is not finite")
        seconds = value / 1000 if time_format == "epoch_ms" else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejection("bad_time", f"{what} {value!r} is out of range") from None
    if not isinstance(value, str):
        raise Rejection("wrong_type", f"{what} is a {type(value).__name__}, not a string")
    if time_format != "iso8601":
        try:
            number = float(value)
        except ValueError:
            raise Rejection("bad_time", f"{what} {value[:40]!r} is not a number") from None
        return parse_time(number, what, time_format)
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise Rejection("bad_time", f"{what} {text[:40]!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise Rejection("bad_time", f"{what} {text[:40]!r} has no time zone")
    return parsed.astimezone(UTC)


def get_path(data: Any, path: str) -> Any:
    """The value at a dotted path (`a.b[0].c`, optional leading `$.`), or None when absent."""
    if path in ("$", ""):
        return data
    current = data
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path.removeprefix("$.").removeprefix("$")):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(current, list) or index >= len(current):
                return None
            current = current[index]
        else:
            if not isinstance(current, dict):
                return None
            current = current.get(part)
        if current is None:
            return None
    return current


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value


def _quantity_key(name: str) -> str:
    if not name or len(name) > MAX_QUANTITY_LENGTH:
        raise Rejection("wrong_type", f"quantity name {name[:40]!r} is empty or longer than {MAX_QUANTITY_LENGTH}")
    return name


def _value(config: ConnectorConfig, quantity: str, raw: Any) -> float | bool | str | dict[str, Any] | list[Any]:
    """Check one value against its declared type; numbers must be finite."""
    spec = config.quantities.get(quantity)
    wanted = spec.type if spec else "any"
    kind_of = type(raw)
    if kind_of is float or kind_of is int:  # the common case first
        number = float(raw)
        if number - number != 0:  # inf or nan
            raise Rejection("non_finite", f"{quantity} is not finite")
        if wanted not in ("any", "number"):
            raise Rejection("wrong_type", f"{quantity} should be a {wanted}, got a number")
        return number
    if isinstance(raw, bool):
        value: float | bool | str | dict[str, Any] | list[Any] = raw
        kind = "boolean"
    elif isinstance(raw, int | float):
        number = float(raw)
        if not math.isfinite(number):
            raise Rejection("non_finite", f"{quantity} is not finite")
        value, kind = number, "number"
    elif isinstance(raw, str):
        value, kind = raw, "string"
    elif isinstance(raw, dict | list):
        value, kind = raw, "json"
    else:
        raise Rejection("wrong_type", f"{quantity} has an unsupported type {type(raw).__name__}")
    if wanted not in ("any", kind):
        raise Rejection("wrong_type", f"{quantity} should be a {wanted}, got a {kind}")
    return value


def readings_from_object(
    config: ConnectorConfig,
    device: Device,
    time: datetime,
    values: dict[str, Any],
    units: dict[str, str | None] | None = None,
    parameters: dict[str, Any] | None = None,
) -> list[Reading]:
    """One reading per non-null member of a decoded object (nested objects give dotted quantity names)."""
    flat: dict[str, Any]
    if any(type(v) is dict for v in values.values()):
        flat = {}
        _flatten("", values, flat)
    else:
        flat = values
    readings = []
    quantities = config.quantities
    for name, raw in flat.items():
        if raw is None or raw == {}:
            continue
        quantity = _quantity_key(name)
        spec = quantities.get(quantity)
        if spec is None and config.only_known_quantities:
            continue
        unit = (units.get(quantity) if units else None) or (spec.unit if spec else None)
        readings.append(
            Reading(device, quantity, time, _value(config, quantity, raw), unit=unit, parameters=parameters)
        )
    return readings


def _device_key(value: Any, what: str) -> str:
    if value is None or value == "":
        raise Rejection("missing_device", f"no {what}")
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise Rejection("wrong_type", f"{what} is a {type(value).__name__}")
    key = str(value).strip()
    if not key or len(key) > MAX_DEVICE_LENGTH:
        raise Rejection("missing_device", f"{what} is empty or longer than {MAX_DEVICE_LENGTH}")
    return key


def _position(latitude: Any, longitude: Any, altitude: Any = None) -> Position | None:
    """A WGS84 position from numbers or numeric strings; None when absent or out of range."""
    try:
        lat, lon = float(latitude), float(longitude)
        alt = float(altitude) if altitude not in (None, "") else None
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if lat == 0 and lon == 0:  # the "no fix" position of many trackers and registries
        return None
    return Position(longitude=lon, latitude=lat, altitude=alt if alt is not None and math.isfinite(alt) else None)


def _require_object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Rejection("unknown_format", f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def _best_rx(rx: Any, rssi_key: str, snr_key: str) -> dict[str, float]:
    """rssi and snr of the gateway that heard the uplink best."""
    best: dict[str, float] = {}
    if isinstance(rx, list):
        for item in rx:
            rssi = item.get(rssi_key) if isinstance(item, dict) else None
            if isinstance(rssi, int | float) and (not best or rssi > best["rssi"]):
                best = {"rssi": float(rssi)}
                if isinstance(item.get(snr_key), int | float):
                    best["snr"] = float(item[snr_key])
    return best


RX_UNITS: dict[str, str | None] = {"rssi": "dB[mW]", "snr": "dB"}

CHIRPSTACK_EVENT = re.compile(r"(?:^|/)application/[^/]+/device/[^/]+/event/([^/]+)$")
CHIRPSTACK_IGNORED = {"join", "ack", "txack", "log", "location", "integration"}


_DEVICE_CACHE_SIZE = 100_000
_chirpstack_devices: dict[tuple[Any, ...], Device] = {}


def _chirpstack_device(info: dict[str, Any]) -> Device:
    """The Device of a ChirpStack deviceInfo, cached by what it is built from (the same few devices repeat)."""
    tags: dict[str, Any] = info["tags"] if isinstance(info.get("tags"), dict) else {}
    signature = (
        info.get("devEui"),
        info.get("deviceName"),
        info.get("deviceProfileName"),
        info.get("applicationName"),
        info.get("tenantName"),
        tags.get("latitude", tags.get("lat")),
        tags.get("longitude", tags.get("lon")),
        tags.get("altitude"),
    )
    try:
        cached = _chirpstack_devices.get(signature)
    except TypeError:  # an unhashable value (a list, an object): not cacheable, and rejected below
        cached = None
    if cached is not None:
        return cached
    eui = _device_key(info.get("devEui"), "deviceInfo.devEui").lower()
    position = _position(signature[5], signature[6], signature[7])
    properties = {
        k: info[k] for k in ("applicationName", "deviceProfileName", "tenantName") if isinstance(info.get(k), str)
    }
    properties["devEui"] = eui
    device = Device(
        key=eui,
        name=str(info.get("deviceName") or eui),
        model=info.get("deviceProfileName") if isinstance(info.get("deviceProfileName"), str) else None,
        position=position,
        properties=properties,
    )
    if len(_chirpstack_devices) >= _DEVICE_CACHE_SIZE:
        _chirpstack_devices.clear()
    _chirpstack_devices[signature] = device
    return device


def decode_chirpstack_v4(topic: str, data: Any, config: ConnectorConfig, now: datetime) -> Decoded:
    """ChirpStack v4 integration events (JSON): `up` and `status` carry measurements; others are ignored."""
    payload = _require_object(data, "a ChirpStack event")
    match = CHIRPSTACK_EVENT.search(topic)
    if match:
        event = match.group(1)
    elif "fPort" in payload or "object" in payload or "data" in payload:
        event = "up"
    elif "batteryLevel" in payload or "margin" in payload:
        event = "status"
    else:
        raise Rejection("unknown_format", "not a ChirpStack v4 event (topic and payload say nothing of its kind)")
    if event in CHIRPSTACK_IGNORED:
        return Ignored(f"chirpstack-{event}")
    if event not in ("up", "status"):
        raise Rejection("unknown_format", f"unknown ChirpStack event type {event[:40]!r}")
    info = payload.get("deviceInfo")
    if not isinstance(info, dict):
        raise Rejection("missing_device", "no deviceInfo")
    device = _chirpstack_device(info)
    time = parse_time(payload.get("time"), "time")
    if event == "status":
        values: dict[str, Any] = {}
        if not payload.get("batteryLevelUnavailable") and payload.get("batteryLevel") is not None:
            values["battery_level"] = payload["batteryLevel"]
        if payload.get("margin") is not None:
            values["link_margin"] = payload["margin"]
        if not values:
            return Ignored("chirpstack-status")
        return readings_from_object(config, device, time, values, {"battery_level": "%", "link_margin": "dB"})
    obj = payload.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise Rejection("wrong_type", f"object is a {type(obj).__name__}, not a JSON object")
    found = {"deduplicationId": payload.get("deduplicationId"), "fCnt": payload.get("fCnt")}
    parameters = {k: v for k, v in found.items() if v is not None} or None
    readings = readings_from_object(config, device, time, obj or {}, parameters=parameters)
    if config.rx_metadata:
        readings += readings_from_object(
            config, device, time, _best_rx(payload.get("rxInfo"), "rssi", "snr"), RX_UNITS, parameters
        )
    if not readings:
        raise Rejection("no_values", "uplink has no decoded `object` (is a codec set on the device profile?)")
    return readings


def decode_ttn_v3(topic: str, data: Any, config: ConnectorConfig, now: datetime) -> Decoded:
    """The Things Stack v3 uplink messages: `uplink_message.decoded_payload`, `received_at`, `locations`."""
    payload = _require_object(data, "a TTN message")
    ids = payload.get("end_device_ids")
    if not isinstance(ids, dict):
        raise Rejection("unknown_format", "no end_device_ids: not a TTN v3 message")
    uplink = payload.get("uplink_message")
    if uplink is None:
        kinds = [k for k in payload if k.endswith(("_accept", "_ack", "_nack", "_sent", "_failed", "_queued"))]
        return Ignored(f"ttn-{kinds[0] if kinds else 'other'}")
    if not isinstance(uplink, dict):
        raise Rejection("wrong_type", "uplink_message is not a JSON object")
    app = ids.get("application_ids", {}).get("application_id") if isinstance(ids.get("application_ids"), dict) else None
    device_id = _device_key(ids.get("device_id"), "end_device_ids.device_id")
    dev_eui = ids.get("dev_eui")
    key = dev_eui.lower() if isinstance(dev_eui, str) and dev_eui else f"{app or '-'}/{device_id}"
    position = None
    locations = uplink.get("locations")
    if isinstance(locations, dict) and locations:
        chosen = locations.get("user") or locations.get("frm-payload") or next(iter(locations.values()))
        if isinstance(chosen, dict):
            position = _position(chosen.get("latitude"), chosen.get("longitude"), chosen.get("altitude"))
    versions: dict[str, Any] = uplink["version_ids"] if isinstance(uplink.get("version_ids"), dict) else {}
    model = "/".join(str(versions[k]) for k in ("brand_id", "model_id") if versions.get(k)) or None
    properties: dict[str, Any] = {"device_id": device_id}
    if app:
        properties["application_id"] = app
    if isinstance(dev_eui, str):
        properties["dev_eui"] = dev_eui
    device = Device(key=key, name=device_id, model=model, position=position, properties=properties)
    time = parse_time(payload.get("received_at") or uplink.get("received_at"), "received_at")
    decoded = uplink.get("decoded_payload")
    if decoded is not None and not isinstance(decoded, dict):
        raise Rejection("wrong_type", "decoded_payload is not a JSON object")
    parameters = {"f_cnt": uplink["f_cnt"]} if isinstance(uplink.get("f_cnt"), int) else None
    readings = readings_from_object(config, device, time, decoded or {}, parameters=parameters)
    if config.rx_metadata:
        readings += readings_from_object(
            config, device, time, _best_rx(uplink.get("rx_metadata"), "rssi", "snr"), RX_UNITS, parameters
        )
    if not readings:
        raise Rejection("no_values", "uplink has no decoded_payload (is a payload formatter set?)")
    return readings


def _senml_number(record: dict[str, Any], key: str, default: float = 0.0) -> float:
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejection("wrong_type", f"SenML field {key!r} must be a number")
    if not math.isfinite(value):
        raise Rejection("non_finite", f"SenML field {key!r} is not finite")
    return float(value)


def _senml_text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise Rejection("wrong_type", f"SenML field {key!r} must be a string")
    return value


def decode_senml(topic: str, data: Any, config: ConnectorConfig, now: datetime) -> Decoded:
    """RFC 8428 SenML JSON packs: base fields carried forward, relative times, several devices per pack."""
    pack = [data] if isinstance(data, dict) else data
    if not isinstance(pack, list) or not pack:
        raise Rejection("unknown_format", "a SenML pack must be a non-empty JSON array of records")
    base_name, base_time, base_unit, base_value, base_sum = "", 0.0, None, 0.0, 0.0
    topic_device = topic.rsplit("/", 1)[-1]
    readings: list[Reading] = []
    devices: dict[str, Device] = {}
    coordinates: dict[str, dict[str, float]] = {}
    for index, record in enumerate(pack):
        if not isinstance(record, dict):
            raise Rejection("wrong_type", f"SenML record {index} is not a JSON object")
        if "bn" in record:
            base_name = _senml_text(record, "bn")
        if "bt" in record:
            base_time = _senml_number(record, "bt")
        if "bu" in record:
            base_unit = _senml_text(record, "bu")
        if "bv" in record:
            base_value = _senml_number(record, "bv")
        if "bs" in record:
            base_sum = _senml_number(record, "bs")
        name = _senml_text(record, "n") if "n" in record else ""
        present = [k for k in ("v", "vs", "vb", "vd", "s") if k in record]
        if not present and "bv" not in record and "bs" not in record:
            if any(k in record for k in ("bn", "bt", "bu", "bver")):
                continue  # a record that only sets base fields
            raise Rejection("no_values", f"SenML record {index} has no value")
        raw: float | bool | str
        if "v" in record:
            raw = base_value + _senml_number(record, "v")
        elif "vs" in record:
            raw = _senml_text(record, "vs")
        elif "vb" in record:
            if not isinstance(record["vb"], bool):
                raise Rejection("wrong_type", "SenML field 'vb' must be a boolean")
            raw = record["vb"]
        elif "vd" in record:
            raw = _senml_text(record, "vd")
        elif "s" in record:
            raw = base_sum + _senml_number(record, "s")
        else:
            raw = base_value if "bv" in record else base_sum
        if base_name:
            device_key = base_name.rstrip(":/.-_") or base_name
            quantity = name or "value"
        else:
            device_key = topic_device
            quantity = name or "value"
        device_key = _device_key(device_key, "SenML base name or topic")
        has_time = "bt" in record or "t" in record or base_time != 0
        seconds = base_time + _senml_number(record, "t")
        if not has_time or seconds < SENML_RELATIVE_LIMIT:
            if config.missing_time == "reject":
                raise Rejection("missing_time", f"SenML record {index} has no absolute time (bt/t)")
            time = now + timedelta(seconds=seconds if has_time else 0)
        else:
            time = parse_time(seconds, "SenML time")
        unit_text = record.get("u", base_unit)
        if unit_text is not None and not isinstance(unit_text, str):
            raise Rejection("wrong_type", "SenML field 'u' must be a string")
        if (quantity in ("lat", "lon") or unit_text in ("lat", "lon")) and isinstance(raw, float):
            # RFC 8428 position records: where the device is, not a measurement.
            coordinates.setdefault(device_key, {})["lat" if (unit_text or quantity) == "lat" else "lon"] = raw
            continue
        spec = config.quantity(quantity)
        if spec is None and config.only_known_quantities:
            continue
        unit = SENML_TO_UCUM.get(unit_text, unit_text) if unit_text else (spec.unit if spec else None)
        device = devices.get(device_key)
        if device is None:
            device = devices[device_key] = Device(key=device_key, name=device_key, model="senml")
        value = _value(config, _quantity_key(quantity), raw)
        parameters = {"vd": True} if "vd" in record else None
        readings.append(Reading(device, quantity, time, value, unit=unit, parameters=parameters))
    if not readings:
        raise Rejection("no_values", "SenML pack has no value")
    for key, where in coordinates.items():
        position = _position(where.get("lat"), where.get("lon"))
        if position is not None and key in devices:
            located = replace(devices[key], position=position)
            readings = [replace(r, device=located) if r.device.key == key else r for r in readings]
    return readings


def decode_json(topic: str, data: Any, config: ConnectorConfig, now: datetime) -> Decoded:
    """Plain JSON devices, read through the connector's path mapping."""
    mapping = config.json_mapping
    assert mapping is not None  # checked when the connector is loaded
    payload = _require_object(data, "the payload")
    if mapping.device is not None:
        key = _device_key(get_path(payload, mapping.device), mapping.device)
    else:
        levels = topic.split("/")
        level = mapping.device_topic_level or 0
        if not -len(levels) <= level < len(levels):
            raise Rejection("missing_device", f"topic has no level {level}")
        key = _device_key(levels[level], "topic level")
    name = get_path(payload, mapping.device_name) if mapping.device_name else None
    model = get_path(payload, mapping.model) if mapping.model else None
    position = None
    if mapping.latitude and mapping.longitude:
        position = _position(
            get_path(payload, mapping.latitude),
            get_path(payload, mapping.longitude),
            get_path(payload, mapping.altitude) if mapping.altitude else None,
        )
    device = Device(
        key=key,
        name=str(name) if isinstance(name, str | int) and not isinstance(name, bool) else key,
        model=str(model) if isinstance(model, str) else None,
        position=position,
    )
    time = parse_time(get_path(payload, mapping.time), mapping.time, mapping.time_format)
    values: dict[str, Any] = {}
    units: dict[str, str | None] = {}
    if mapping.values_object is not None:
        members = get_path(payload, mapping.values_object)
        if members is not None and not isinstance(members, dict):
            raise Rejection("wrong_type", f"{mapping.values_object} is not a JSON object")
        values.update(members or {})
    for quantity, where in mapping.values.items():
        spec = where if isinstance(where, JsonValueSpec) else JsonValueSpec(path=where)
        values[quantity] = get_path(payload, spec.path)
        units[quantity] = spec.unit
    readings = readings_from_object(config, device, time, values, units)
    if not readings:
        raise Rejection("no_values", "no mapped value in the payload")
    return readings


Decoder = Callable[[str, Any, ConnectorConfig, datetime], Decoded]

DECODERS: dict[str, Decoder] = {
    "chirpstack-v4": decode_chirpstack_v4,
    "ttn-v3": decode_ttn_v3,
    "senml": decode_senml,
    "json": decode_json,
}


def decode_payload(
    topic: str, payload: bytes, config: ConnectorConfig, now: datetime, max_payload_bytes: int
) -> Decoded:
    """Decode and validate one message; raises Rejection with a reason when it cannot be stored."""
    limit = config.max_payload_bytes or max_payload_bytes
    if len(payload) > limit:
        raise Rejection("too_large", f"payload of {len(payload)} bytes exceeds the limit of {limit}")
    result = DECODERS[config.decoder](topic, parse_json(payload), config, now)
    if isinstance(result, Ignored):
        return result
    horizon = now + timedelta(seconds=config.max_future_seconds)
    for reading in result:
        if reading.time > horizon:
            raise Rejection(
                "future_time", f"time {reading.time.isoformat()} is beyond now + {config.max_future_seconds} s"
            )
    return result
