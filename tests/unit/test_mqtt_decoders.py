"""Decoders on the real payloads in tests/fixtures/mqtt, and every kind of bad input they must reject."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from territoire_data.errors import ConfigurationError
from territoire_data.ingest.model import Ignored, Reading, Rejection
from territoire_data.ingest.mqtt.config import ConnectorConfig, load_connector, parse_connector
from territoire_data.ingest.mqtt.decoders import decode_payload, get_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mqtt"
CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LIMIT = 256 * 1024


def connector(decoder: str, **extra: Any) -> ConnectorConfig:
    data: dict[str, Any] = {
        "name": "test",
        "decoder": decoder,
        "topics": ["t/#"],
        "dataset": {"slug": "capteurs", "title": "Capteurs"},
    }
    data.update(extra)
    return parse_connector(data)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def decode(config: ConnectorConfig, payload: bytes | dict[str, Any] | list[Any], topic: str = "t/x") -> Any:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_payload(topic, raw, config, NOW, LIMIT)


def by_quantity(readings: list[Reading]) -> dict[str, Reading]:
    return {r.quantity: r for r in readings}


def reason_of(config: ConnectorConfig, payload: Any, topic: str = "t/x") -> str:
    with pytest.raises(Rejection) as info:
        decode(config, payload, topic)
    return info.value.reason


# --- ChirpStack v4 -----------------------------------------------------------------------------------------

CS_UP_TOPIC = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up"


def elsys_output() -> dict[str, Any]:
    """The Elsys ERS CO2 vendor test vector's decoded output (lorawan-devices), as a ChirpStack codec gives it."""
    vector = yaml.safe_load(fixture("lorawan-devices_elsys_ers-co2-codec.yaml"))
    return dict(vector["uplinkDecoder"]["examples"][0]["output"]["data"])


def test_chirpstack_up_with_decoded_object_gives_one_reading_per_quantity_with_units() -> None:
    config = connector("chirpstack-v4", quantities={"temperature": {"unit": "Cel"}, "co2": {"unit": "ppm"}})
    event = orjson.loads(fixture("chirpstack_v4_event_up.json"))
    event["object"] = elsys_output()
    readings = decode(config, event, CS_UP_TOPIC)
    values = by_quantity(readings)
    assert {q: r.value for q, r in values.items()} == {
        "temperature": 22.6,
        "humidity": 41.0,
        "light": 39.0,
        "motion": 6.0,
        "co2": 776.0,
    }
    assert values["temperature"].unit == "Cel"
    assert values["humidity"].unit is None
    reading = values["co2"]
    assert reading.device.key == "0101010101010101"
    assert reading.device.name == "Test device"
    assert reading.device.model == "Test device-profile"
    assert reading.time == datetime(2022, 7, 18, 9, 34, 15, 775023, tzinfo=UTC)
    assert reading.parameters == {"deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d"}


def test_chirpstack_real_up_without_object_is_rejected_unless_rx_metadata_is_kept() -> None:
    payload = fixture("chirpstack_v4_event_up.json")  # tab-indented, no decoded object
    assert reason_of(connector("chirpstack-v4"), payload, CS_UP_TOPIC) == "no_values"
    readings = decode(connector("chirpstack-v4", rx_metadata=True), payload, CS_UP_TOPIC)
    assert {r.quantity: (r.value, r.unit) for r in readings} == {"rssi": (-36.0, "dB[mW]"), "snr": (10.5, "dB")}


def test_chirpstack_join_is_handled_not_mistaken_for_a_measurement() -> None:
    topic = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/join"
    assert decode(connector("chirpstack-v4"), fixture("chirpstack_v4_event_join.json"), topic) == Ignored(
        "chirpstack-join"
    )
    for kind in ("log", "ack", "txack", "location", "integration"):
        result = decode(connector("chirpstack-v4"), {"deviceInfo": {}}, topic.replace("join", kind))
        assert result == Ignored(f"chirpstack-{kind}")


def test_chirpstack_status_gives_battery_and_margin() -> None:
    status = {
        "deduplicationId": "x",
        "time": "2022-07-18T09:34:15Z",
        "deviceInfo": {"devEui": "0101010101010101", "deviceName": "d"},
        "margin": 20,
        "externalPowerSource": False,
        "batteryLevel": 75.5,
    }
    readings = decode(connector("chirpstack-v4"), status, CS_UP_TOPIC.replace("/up", "/status"))
    assert {r.quantity: (r.value, r.unit) for r in readings} == {
        "battery_level": (75.5, "%"),
        "link_margin": (20.0, "dB"),
    }


def test_chirpstack_device_position_comes_from_tags() -> None:
    event = orjson.loads(fixture("chirpstack_v4_event_up.json"))
    event["object"] = {"occupied": True}
    event["deviceInfo"]["tags"] = {"latitude": "47.2184", "longitude": "-1.5536"}
    (reading,) = decode(connector("chirpstack-v4"), event, CS_UP_TOPIC)
    assert reading.value is True
    assert reading.device.position is not None
    assert (reading.device.position.latitude, reading.device.position.longitude) == (47.2184, -1.5536)


def test_chirpstack_unknown_event_and_missing_time_are_rejected() -> None:
    event = orjson.loads(fixture("chirpstack_v4_event_up.json"))
    event["object"] = {"t": 1}
    assert reason_of(connector("chirpstack-v4"), event, CS_UP_TOPIC.replace("/up", "/weird")) == "unknown_format"
    del event["time"]
    assert reason_of(connector("chirpstack-v4"), event, CS_UP_TOPIC) == "missing_time"


# --- The Things Stack v3 -----------------------------------------------------------------------------------


def test_ttn_uplink_gives_decoded_payload_with_received_at_and_user_location() -> None:
    readings = decode(connector("ttn-v3"), fixture("ttn_v3_uplink_message.json"), "v3/app1@tenant1/devices/dev1/up")
    values = by_quantity(readings)
    assert {q: r.value for q, r in values.items()} == {"temperature": 1.0, "luminosity": 0.64}
    device = values["temperature"].device
    assert device.key == "0004a30b001c0530"
    assert device.name == "dev1"
    assert device.model == "the-things-products/the-things-uno"
    assert device.position is not None
    assert (device.position.latitude, device.position.longitude, device.position.altitude) == (
        37.97155556731436,
        23.72678801175413,
        10.0,
    )
    assert values["temperature"].time == datetime(2020, 2, 12, 15, 15, 46, 14773, tzinfo=UTC)
    assert values["temperature"].parameters == {"f_cnt": 1}


def test_ttn_messages_without_uplink_are_ignored_and_non_ttn_rejected() -> None:
    join = {"end_device_ids": {"device_id": "dev1"}, "join_accept": {"session_key_id": "x"}}
    assert decode(connector("ttn-v3"), join) == Ignored("ttn-join_accept")
    assert reason_of(connector("ttn-v3"), {"hello": 1}) == "unknown_format"


# --- SenML -------------------------------------------------------------------------------------------------


def test_senml_base_name_gives_the_device_and_name_the_quantity() -> None:
    readings = decode(connector("senml", missing_time="receive_time"), fixture("senml_rfc8428_ex2.json"))
    assert [(r.device.key, r.quantity, r.value, r.unit, r.time) for r in readings] == [
        ("urn:dev:ow:10e2073a01080063", "voltage", 120.1, "V", NOW),
        ("urn:dev:ow:10e2073a01080063", "current", 1.2, "A", NOW),
    ]


def test_senml_without_time_is_rejected_by_default_because_a_redelivery_could_not_be_recognised() -> None:
    assert reason_of(connector("senml"), fixture("senml_rfc8428_ex2.json")) == "missing_time"


def test_senml_base_time_base_unit_and_relative_times() -> None:
    readings = decode(connector("senml"), fixture("senml_rfc8428_ex3.json"))
    base = datetime.fromtimestamp(1.276020076001e09, UTC)
    assert readings[0].quantity == "voltage"
    assert readings[0].unit == "V"
    currents = [r for r in readings if r.quantity == "current"]
    assert [r.value for r in currents] == [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    assert [r.time for r in currents] == [base + timedelta(seconds=s) for s in (-5, -4, -3, -2, -1, 0)]
    assert {r.unit for r in currents} == {"A"}
    assert {r.device.key for r in readings} == {"urn:dev:ow:10e2073a0108006"}


def test_senml_pack_with_two_devices_and_ucum_units() -> None:
    readings = decode(connector("senml"), fixture("senml_rfc8428_ex6.json"))
    assert [(r.device.key, r.quantity, r.value, r.unit) for r in readings] == [
        ("2001:db8::2", "temperature", 25.2, "Cel"),
        ("2001:db8::2", "humidity", 30.0, "%"),
        ("2001:db8::1", "temperature", 12.3, "Cel"),
        ("2001:db8::1", "humidity", 67.0, "%"),
    ]
    assert len({r.time for r in readings}) == 1


def test_senml_string_boolean_and_data_values() -> None:
    readings = decode(connector("senml", missing_time="receive_time"), fixture("senml_rfc8428_ex7.json"))
    assert {r.quantity: r.value for r in readings} == {
        "temp": 23.1,
        "label": "Machine Room",
        "open": False,
        "nfv-reader": "aGkgCg",
    }


def test_senml_device_from_topic_when_no_base_name() -> None:
    (reading,) = decode(connector("senml"), [{"n": "noise", "u": "dB", "v": 54.2, "t": 1.7e9}], "senml/nantes/s42")
    assert (reading.device.key, reading.quantity) == ("s42", "noise")


def test_senml_bad_records_are_rejected() -> None:
    config = connector("senml")
    assert reason_of(config, {"n": 1}) == "wrong_type"
    assert reason_of(config, [{"n": "x", "v": "1", "t": 1.7e9}]) == "wrong_type"
    assert reason_of(config, [{"n": "x", "t": 1.7e9}]) == "no_values"
    assert reason_of(config, []) == "unknown_format"
    assert reason_of(config, "text") == "unknown_format"


# --- generic JSON ------------------------------------------------------------------------------------------


def json_connector(**extra: Any) -> ConnectorConfig:
    mapping = {
        "device": "meta.id",
        "time": "ts",
        "time_format": "epoch_ms",
        "values": {"temperature": {"path": "data.temp", "unit": "Cel"}, "pm10": "data.pm[0]"},
        "latitude": "meta.lat",
        "longitude": "meta.lon",
    }
    mapping.update(extra)
    return connector("json", json=mapping, quantities={"pm10": {"unit": "ug/m3", "type": "number"}})


def test_json_mapping_reads_device_time_values_units_and_position() -> None:
    payload = {
        "meta": {"id": "aq-7", "lat": 47.21, "lon": -1.55},
        "ts": 1764331200000,
        "data": {"temp": 8.5, "pm": [12]},
    }
    readings = decode(json_connector(), payload)
    assert {(r.quantity, r.value, r.unit) for r in readings} == {("temperature", 8.5, "Cel"), ("pm10", 12.0, "ug/m3")}
    assert readings[0].device.key == "aq-7"
    assert readings[0].time == datetime(2025, 11, 28, 12, 0, tzinfo=UTC)
    assert readings[0].device.position is not None


def test_json_device_from_topic_and_values_object() -> None:
    config = connector("json", json={"device_topic_level": -1, "time": "time", "values_object": "values"})
    readings = decode(config, {"time": "2026-11-28T10:00:00+01:00", "values": {"a": 1, "b": None, "c": "x"}}, "j/d9")
    assert {(r.device.key, r.quantity, r.value) for r in readings} == {("d9", "a", 1.0), ("d9", "c", "x")}
    assert readings[0].time == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def test_get_path() -> None:
    assert get_path({"a": [{"b": 3}]}, "$.a[0].b") == 3
    assert get_path({"a": [{"b": 3}]}, "a[1].b") is None
    assert get_path({"a": 1}, "a.b") is None


# --- bad input shared by every decoder ---------------------------------------------------------------------

GOOD = {"meta": {"id": "aq-7"}, "ts": 1764331200000, "data": {"temp": 8.5}}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'{"meta": {"id": "a"}, "ts": 1764331200000, "data": {"temp": NaN}}', "non_finite"),
        (b'{"meta": {"id": "a"}, "ts": 1764331200000, "data": {"temp": Infinity}}', "non_finite"),
        (b'{"meta": {"id": "a"}, "ts": 1764331200000, "data": {"temp": 1e999}}', "non_finite"),
        ({"meta": {"id": "a"}, "data": {"temp": 1}}, "missing_time"),
        ({"meta": {"id": "a"}, "ts": "soon", "data": {"temp": 1}}, "bad_time"),
        ({"meta": {"id": "a"}, "ts": 1864331200000, "data": {"temp": 1}}, "future_time"),
        ({"meta": {"id": "a"}, "ts": 1764331200000, "data": {"pm": ["high"]}}, "wrong_type"),
        ({"meta": {"id": "a"}, "ts": True, "data": {"temp": 1}}, "wrong_type"),
        ({"meta": {"id": ["a"]}, "ts": 1764331200000, "data": {"temp": 1}}, "wrong_type"),
        ({"ts": 1764331200000, "data": {"temp": 1}}, "missing_device"),
        ({"meta": {"id": "a"}, "ts": 1764331200000, "data": {}}, "no_values"),
        ([1, 2], "unknown_format"),
    ],
)
def test_bad_payloads_are_rejected_with_their_reason(payload: Any, reason: str) -> None:
    assert reason_of(json_connector(), payload) == reason


def test_payload_over_the_size_limit_is_rejected_before_parsing() -> None:
    big = orjson.dumps({**copy.deepcopy(GOOD), "pad": "x" * 300_000})
    assert reason_of(json_connector(), big) == "too_large"
    assert reason_of(json_connector().model_copy(update={"max_payload_bytes": 10}), orjson.dumps(GOOD)) == "too_large"


# --- connector files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chirpstack-v4", "ttn-v3", "senml", "json-example"])
def test_shipped_connectors_load(name: str) -> None:
    config = load_connector(CONNECTORS / f"{name}.yaml")
    assert config.qos == 1
    assert config.broker.url is None  # they run unchanged against TERRITOIRE_MQTT_URL


def test_connector_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="decoder"):
        parse_connector({"name": "x", "decoder": "xml", "topics": ["a"], "dataset": {"slug": "a", "title": "A"}})
    with pytest.raises(ConfigurationError, match="shared_group"):
        parse_connector(
            {"name": "x", "decoder": "senml", "topics": ["$share/g/a"], "dataset": {"slug": "a", "title": "A"}}
        )
    with pytest.raises(ConfigurationError, match="not found"):
        load_connector(tmp_path / "missing.yaml")


def test_shared_group_subscribes_to_shared_topics() -> None:
    config = connector("senml", shared_group="workers")
    assert config.subscriptions() == ["$share/workers/t/#"]


def test_senml_lat_lon_records_give_the_device_position_not_readings() -> None:
    pack = [
        {"bn": "urn:dev:nantes:sonometre-01:", "bt": 1.7e9, "n": "laeq", "u": "dB", "v": 61.5},
        {"n": "lat", "u": "lat", "v": 47.2147},
        {"n": "lon", "u": "lon", "v": -1.5531},
    ]
    (reading,) = decode(connector("senml"), pack)
    assert reading.quantity == "laeq"
    assert reading.device.position is not None
    assert (reading.device.position.latitude, reading.device.position.longitude) == (47.2147, -1.5531)


def test_simulated_traffic_is_accepted_by_the_shipped_connectors() -> None:
    from territoire_data.ingest.mqtt.simulate import traffic

    configs = {
        "application/": load_connector(CONNECTORS / "chirpstack-v4.yaml"),
        "v3/": load_connector(CONNECTORS / "ttn-v3.yaml"),
        "senml/": load_connector(CONNECTORS / "senml.yaml"),
    }
    kinds: dict[str, int] = {}
    stream = traffic(seed=1)
    for _ in range(200):
        topic, payload = next(stream)
        config = next(c for start, c in configs.items() if topic.startswith(start))
        readings = decode_payload(topic, payload, config, datetime.now(UTC), LIMIT)
        assert isinstance(readings, list)
        assert all(r.device.position is not None for r in readings)
        for reading in readings:
            kinds[reading.quantity] = kinds.get(reading.quantity, 0) + 1
            spec = config.quantity(reading.quantity)
            assert spec is not None, reading.quantity
            assert spec.unit == reading.unit or (spec.unit is None and reading.unit is None) or reading.unit == "dB"
    assert set(kinds) >= {"pm10", "pm2_5", "no2", "temperature", "humidity", "count", "occupied", "battery", "laeq"}
