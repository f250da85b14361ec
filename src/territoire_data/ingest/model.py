"""The ingest pipeline's own small types: what a connector received, what a decoder read, why it was rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

# Every reason a message can be rejected for; a bounded set, so it can label a metric.
REASONS = (
    "too_large",
    "invalid_json",
    "unknown_format",
    "missing_time",
    "bad_time",
    "future_time",
    "non_finite",
    "wrong_type",
    "missing_device",
    "no_values",
    "unknown_device",
    "unknown_datastream",
    "store_failed",
)


@dataclass(slots=True)  # not frozen: one per message on the hot path
class InboundMessage:
    """One message from a broker, converted at the edge so nothing past it depends on paho."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received: float  # time.monotonic() when it arrived
    generation: int = 0  # which broker connection delivered it; acks only go back on that same connection


class RawMessage(NamedTuple):
    """What the storing side needs of a message: its topic and its bytes (cheap to send to another process)."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Position:
    """A device's position in WGS84."""

    longitude: float
    latitude: float
    altitude: float | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """The device a reading comes from: its stable key within the connector and what we know about it."""

    key: str
    name: str
    model: str | None = None  # device profile / brand+model: becomes the Sensor
    position: Position | None = None
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(slots=True)  # not frozen: built per value on the hot path, and frozen init costs a setattr per field
class Reading:
    """One measured value of one quantity of one device at one time: becomes one observation."""

    device: Device
    quantity: str
    time: datetime
    value: float | bool | str | dict[str, Any] | list[Any]
    unit: str | None = None
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message that carries no measurement (a join, a log, an acknowledgement)."""

    kind: str


class Rejection(Exception):
    """A message that cannot be stored, with one of REASONS and a human-readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


Decoded = list[Reading] | Ignored
