"""Connector definitions (connectors/*.yaml): broker, topics, decoder, quantities and the target dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from territoire_data.catalog.metadata import missing_metadata
from territoire_data.errors import ConfigurationError

DecoderName = Literal["chirpstack-v4", "ttn-v3", "senml", "json"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantitySpec(Strict):
    """What we know of one measured quantity: its ObservedProperty and its unit (UCUM)."""

    name: str | None = None  # ObservedProperty name (e.g. "Température de l'air"); default: the quantity key
    definition: str = ""
    description: str = ""
    unit: str | None = None  # UCUM code, e.g. "Cel", "ug/m3", "dB", "{count}"
    unit_name: str | None = None
    type: Literal["number", "boolean", "string", "json", "any"] = "any"


class JsonValueSpec(Strict):
    path: str
    unit: str | None = None


class JsonMapping(Strict):
    """Where the generic JSON decoder finds a device id, a time, values and a position."""

    device: str | None = None  # a path in the payload, e.g. "device.id"
    device_topic_level: int | None = None  # else a level of the topic (-1: the last)
    device_name: str | None = None
    time: str  # path of the time
    time_format: Literal["iso8601", "epoch_s", "epoch_ms"] = "iso8601"
    values: dict[str, str | JsonValueSpec] = Field(default_factory=dict)  # quantity -> path
    values_object: str | None = None  # a path to an object whose every member is a quantity
    latitude: str | None = None
    longitude: str | None = None
    altitude: str | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _device_source(self) -> JsonMapping:
        if self.device is None and self.device_topic_level is None:
            raise ValueError("json mapping needs `device` (a path) or `device_topic_level`")
        if not self.values and self.values_object is None:
            raise ValueError("json mapping needs `values` or `values_object`")
        return self


class BrokerSpec(Strict):
    """Broker settings of a connector; anything left out comes from the TERRITOIRE_MQTT_* settings."""

    url: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    session_expiry_seconds: int = Field(default=7 * 24 * 3600, ge=0)


class DatasetSpec(Strict):
    """The dataset the connector's datastreams belong to (created with kind='sensors' if missing)."""

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    title: str = Field(min_length=1, max_length=300)
    description: str = ""
    access: Literal["public", "restricted"] = "public"
    # The catalog's vocabularies (catalog.metadata): licence id, EU data themes, EU frequency.
    licence: Literal["etalab-2.0", "odbl-1.0", "cc-by-4.0", "cc-by-sa-4.0"] | None = "etalab-2.0"
    publisher: str | None = None
    keywords: list[str] = Field(default_factory=list)
    themes: list[str] = Field(default_factory=lambda: ["ENVI", "TRAN"])
    update_frequency: str | None = "UPDATE_CONT"
    # manual: the dataset is created as a draft, published by a person (CLI, API, back-office); auto: created
    # published, for a feed whose metadata here is complete (checked when the file is read).
    publish: Literal["auto", "manual"] = "manual"

    @model_validator(mode="after")
    def _complete_for_auto(self) -> DatasetSpec:
        if self.publish == "auto":
            missing = missing_metadata(self.model_dump())
            if missing:
                raise ValueError("publish: auto needs complete metadata: " + "; ".join(m.message for m in missing))
        return self


class ConnectorConfig(Strict):
    """One connector: what to subscribe to, how to decode it and where it goes."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    decoder: DecoderName
    topics: list[str] = Field(min_length=1)
    shared_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    qos: Literal[0, 1] = 1
    broker: BrokerSpec = Field(default_factory=BrokerSpec)
    dataset: DatasetSpec
    auto_register: bool = True
    quantities: dict[str, QuantitySpec] = Field(default_factory=dict)
    only_known_quantities: bool = False  # when true, values of quantities not listed are skipped
    rx_metadata: bool = False  # LoRaWAN: also store the best gateway's rssi and snr
    missing_time: Literal["reject", "receive_time"] = "reject"
    max_payload_bytes: int | None = Field(default=None, ge=1)
    max_future_seconds: int = Field(default=600, ge=0)
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    batch_ms: int | None = Field(default=None, ge=1, le=60_000)
    writers: int = Field(default=2, ge=1, le=8)  # database connections writing batches in parallel
    # the longest silence to expect from the connector's devices: longer, and the alert ConnectorSilent fires
    expected_period_seconds: int = Field(default=3600, ge=60, le=31 * 86_400)
    json_mapping: JsonMapping | None = Field(default=None, alias="json")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, topics: list[str]) -> list[str]:
        for topic in topics:
            if not topic or "\x00" in topic or topic.startswith("$share/"):
                raise ValueError(f"invalid topic filter {topic!r} (use `shared_group` for shared subscriptions)")
            if re.search(r"#.", topic) or re.search(r"[^/]\+|\+[^/]", topic):
                raise ValueError(f"invalid wildcard in topic filter {topic!r}")
        return topics

    @model_validator(mode="after")
    def _json_needs_mapping(self) -> ConnectorConfig:
        if self.decoder == "json" and self.json_mapping is None:
            raise ValueError("decoder `json` needs a `json:` mapping")
        return self

    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to, as shared subscriptions when a group is set."""
        if self.shared_group:
            return [f"$share/{self.shared_group}/{topic}" for topic in self.topics]
        return list(self.topics)

    def quantity(self, key: str) -> QuantitySpec | None:
        return self.quantities.get(key)


def parse_connector(data: Any, source: str = "connector") -> ConnectorConfig:
    """Validate a connector definition, turning the first problem into one clear line."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: a connector file must be a YAML mapping")
    try:
        return ConnectorConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top)"
        raise ConfigurationError(f"{source}: {where}: {first['msg']}") from None


def load_connector(path: str | Path) -> ConnectorConfig:
    """Read and validate a connector YAML file."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"connector file not found: {file}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{file}: invalid YAML: {exc}") from None
    return parse_connector(data, str(file))
