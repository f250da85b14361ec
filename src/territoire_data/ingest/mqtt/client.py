"""The broker side of the MQTT worker: a paho-mqtt 2 client with a persistent session and manual acknowledgement.

paho's network thread converts each message to an `InboundMessage` and puts it in a bounded queue; when the queue
is full it blocks, which stops reading the socket (back-pressure: the broker keeps the rest, our shipped broker
config never drops it). With MQTT 5 the broker is also told our Receive Maximum, so it never sends more
unacknowledged messages than the queue holds. Acknowledgements go back only for messages of the current
connection: after a reconnect the broker redelivers the others, and the idempotent write absorbs the repeat.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from territoire_data.ingest.model import InboundMessage
from territoire_data.ingest.mqtt.config import ConnectorConfig
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

MAX_RECEIVE_MAXIMUM = 65_535
PUBACK_WORD = 0x4002_0000  # a PUBACK's fixed header (type 4, remaining length 2), the packet id in the low 16 bits


class MqttSource:
    """Subscribes with QoS 1 on a persistent session and hands messages over through a bounded queue."""

    def __init__(self, settings: Settings, config: ConnectorConfig, *, client_id: str, queue_size: int) -> None:
        broker = config.broker
        self.config = config
        self.client_id = client_id
        self.address = parse_mqtt_url(broker.url or settings.mqtt_url)
        self.v5 = broker.protocol == "5"
        # A deque: appends and pops are atomic without a lock; the bound is enforced by `_on_message` waiting.
        self.queue: deque[InboundMessage] = deque()
        self.queue_size = queue_size
        self._space = threading.Event()
        self._stopping = False
        self.receive_maximum = min(MAX_RECEIVE_MAXIMUM, queue_size)
        self.generation = 0
        self.received = 0
        self.acknowledged = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._want = 0  # wake the pipeline when the queue holds this many messages (0: it is not waiting)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
            manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        configure_client(
            client,
            self.address,
            ca_file=broker.ca_file or settings.mqtt_ca_file,
            cert_file=broker.cert_file or settings.mqtt_cert_file,
            key_file=broker.key_file or settings.mqtt_key_file,
            username=broker.username,
            password=broker.password,
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    # --- paho's network thread -------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            logger.error("broker refused the connection of %s: %s", self.client_id, reason)
            return
        self.generation += 1
        logger.info("connected to %r as %s (session present: %s)", self.address, self.client_id, flags.session_present)
        topics = self.config.subscriptions()
        if self.v5:
            client.subscribe([(topic, SubscribeOptions(qos=self.config.qos)) for topic in topics])
        else:
            client.subscribe([(topic, int(self.config.qos)) for topic in topics])
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError`: the exception says why (refused, TLS verification...).
        # paho retries with a doubling delay capped at 30 s, so this logs a few lines a minute at most.
        error = sys.exc_info()[1]
        logger.error("cannot connect to %r: %s; retrying with backoff", self.address, error or "connection failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        failures = [r for r in reasons if r.is_failure]
        if failures:
            logger.error("subscription refused by the broker: %s", failures[0])
            return
        logger.info("subscribed to %s", ", ".join(self.config.subscriptions()))
        self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if reason.is_failure:
            logger.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = bytes(message._topic).decode("utf-8", errors="replace")
        inbound = InboundMessage(
            topic=topic,
            payload=bytes(message.payload),
            mid=message.mid,
            qos=message.qos,
            received=time.monotonic(),
            generation=self.generation,
        )
        while len(self.queue) >= self.queue_size:
            if self._stopping:
                # Stopping with a full queue: leave the message unacknowledged; the persistent session has the
                # broker deliver it again to the next worker, so nothing is lost (and loop_stop can join us).
                return
            # Full: stop reading the socket until the pipeline takes a batch (back-pressure onto the broker).
            self._space.clear()
            self._space.wait(0.1)
        self.queue.append(inbound)
        self.received += 1
        # Wake the pipeline only once enough messages wait for it (a whole batch, or the first of one): one
        # wake-up per message would cost more than the message itself (a self-pipe write and a GIL hand-over).
        if self._want and len(self.queue) >= self._want and self._loop is not None and self._wakeup is not None:
            self._want = 0
            self._loop.call_soon_threadsafe(self._wakeup.set)

    # --- the pipeline's side ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (paho retries with backoff until the broker answers)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.config.broker.session_expiry_seconds
            properties.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=self.config.broker.keepalive,
            clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.client.loop_start()

    def take(self, limit: int) -> list[InboundMessage]:
        """Up to `limit` queued messages, oldest first (none if the queue is empty)."""
        queue = self.queue
        count = min(limit, len(queue))
        popleft = queue.popleft
        taken = [popleft() for _ in range(count)]
        if taken and not self._space.is_set() and len(queue) < self.queue_size:
            self._space.set()
        return taken

    async def wait(self, seconds: float, count: int = 1) -> None:
        """Wait until at least `count` messages are queued or `seconds` pass."""
        assert self._wakeup is not None
        self._wakeup.clear()
        self._want = max(count, 1)
        try:
            if len(self.queue) >= count:
                return
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            self._want = 0

    def pending(self) -> int:
        return len(self.queue)

    def oldest(self) -> float | None:
        try:
            return self.queue[0].received
        except IndexError:
            return None

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """Acknowledge stored messages that came on the current connection; returns how many were acked.

        The PUBACKs of a batch go out as one write: paho's public `ack()` queues one packet and wakes its network
        thread once per message, which costs more than receiving the message did.
        """
        generation = self.generation
        mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
        done = sum(1 for m in messages if m.qos == 0) + len(mids)
        others = [m for m in messages if m.qos == 2 and m.generation == generation]
        if mids and not self._queue_pubacks(mids):
            done -= sum(self.client.ack(mid, 1) != 0 for mid in mids)
        for message in others:
            done += self.client.ack(message.mid, message.qos) == 0
        self.acknowledged += len(messages)
        return done

    def _queue_pubacks(self, mids: list[int]) -> bool:
        """Queue the PUBACKs of `mids` as a single packet write (MQTT 3.1.1 and 5: 0x40, length 2, packet id)."""
        queue_packet = getattr(self.client, "_packet_queue", None)
        if queue_packet is None or not self.client.is_connected():
            return False
        pubacks = struct.pack(f">{len(mids)}I", *[PUBACK_WORD | mid for mid in mids])
        try:
            return bool(queue_packet(mqtt.PUBACK, pubacks, 0, 1) == mqtt.MQTT_ERR_SUCCESS)
        except TypeError:  # a paho version whose internal queue takes other arguments: one public ack() each
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (after the acknowledgements already queued) and stop the network thread."""
        self._stopping = True
        self._space.set()  # a network thread waiting for room in a full queue must not block loop_stop's join
        try:
            self.client.disconnect()
        finally:
            deadline = time.monotonic() + timeout
            while self.client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.client.loop_stop()
