"""SensorThings MQTT extension: publish every created or changed entity, and create Observations published to us.

Receiving updates: a statement-level trigger (migration 0002_sta) sends `pg_notify('sta_observation', ids)` for
every statement that stores Observations, whatever wrote them (HTTP, CSV import, the MQTT ingest worker); the
triggers of migration 0003_stagaps send `pg_notify('sta_entity', ...)` for the other entity types (created,
updated, linked) and for changed Observations. The bridge LISTENs, reads the rows and publishes each one visible
to anonymous readers, serialized as over HTTP, on the topics of section 14.2 of the standard (`events` says
which), e.g. `v1.1/Datastreams(<id>)/Observations`, `v1.1/FeaturesOfInterest(<id>)/Observations`,
`v1.1/Observations`, `v1.1/Things`, `v1.1/Things(<id>)`, `v1.1/Things(<id>)/name`, and the `$select` topics of
its `SelectRegistry`. One bridge publishes at a time (a PostgreSQL advisory lock elects it), so several
replicas never duplicate.

Creating: the bridge subscribes (shared subscription) to `v1.1/+/Observations` and `v1.1/Observations`; a
message there without `@iot.id` is a create. As over HTTP, the message needs a publisher or admin API
key (or OpenID Connect access token), as an MQTT v5 user property `Authorization: Bearer <key>`; refused messages
go to `ingest_rejection`.

It runs as its own process (`territoire-data sta-mqtt`), not inside the API: API processes are stateless and
scale with `--workers`, each would LISTEN and publish the same notification again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from territoire_data.auth.deps import key_from_authorization
from territoire_data.auth.oidc import OidcVerifier, principal_of
from territoire_data.auth.policy import ANONYMOUS
from territoire_data.errors import BadRequestError, ServiceUnavailableError, TerritoireError
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.sensorthings import read, sql
from territoire_data.sensorthings.events import (
    ENTITY_CHANNEL,
    SUBSCRIBE_LOG,
    UNSUBSCRIBE_LOG,
    EntityPublisher,
    SelectRegistry,
    collection_paths,
    parse_entity_notification,
)
from territoire_data.sensorthings.model import BY_NAME, BY_PLURAL
from territoire_data.sensorthings.service import WriteAuth, audit_write
from territoire_data.sensorthings.writes import Writer
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

CHANNEL = "sta_observation"
LOCK_KEY = 0x5354_414D  # "STAM": one publisher across replicas
MAX_RANGE = 10_000  # a bulk load notifies a range; beyond this it is not streamed message by message
MAX_PAYLOAD = 256 * 1024
SESSION_EXPIRY_SECONDS = 86_400  # a named bridge's unacknowledged creates wait a day at the broker
STOP_GRACE_SECONDS = 5.0  # on stop, the message being stored gets this long to commit (then it is rolled back)
ORIGIN = ("territoire-origin", "sta-publisher")
_TOPIC = re.compile(r"^v1\.1/(?:(Datastreams|MultiDatastreams|FeaturesOfInterest)\((\d+)\)/)?Observations$")
# the foreign key of an Observation to each parent `_TOPIC` names
_PARENT_COLUMNS = {r.target: r.column for r in BY_NAME["Observation"].relations if r.kind == "parent_fk"}


@dataclass(frozen=True)
class Incoming:
    """An MQTT message converted at the edge: topic, payload and the v5 user properties."""

    topic: str
    payload: bytes
    user_properties: tuple[tuple[str, str], ...]
    mid: int = 0  # acknowledged (QoS 1) only once handled: stored, refused into ingest_rejection, or skipped
    qos: int = 0


class BridgeMetrics:
    """The bridge's metrics, in a registry of its own (`sta-mqtt --metrics-port` serves it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.publish_lag = Histogram(
            "territoire_sta_mqtt_publish_lag_seconds",
            "From a database notification to its entities published on the broker",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0),
            registry=self.registry,
        )
        self.pending = Gauge(
            "territoire_sta_mqtt_notifications_pending", "Notifications waiting to be published", registry=self.registry
        )
        self.published = Counter(
            "territoire_sta_mqtt_observations_published", "Observations published", registry=self.registry
        )
        self.created = Counter(
            "territoire_sta_mqtt_observations_created",
            "Observations created from MQTT messages",
            registry=self.registry,
        )
        self.refused = Counter(
            "territoire_sta_mqtt_creates_refused", "MQTT creates refused (in ingest_rejection)", registry=self.registry
        )

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        start_http_server(port, addr=address, registry=self.registry)


def parse_notification(payload: str) -> tuple[list[int], tuple[int, int] | None]:
    """`1,2,3` -> ids; `10-20` -> a range (see the trigger)."""
    if "-" in payload:
        lo, _, hi = payload.partition("-")
        return [], (int(lo), int(hi))
    return [int(p) for p in payload.split(",") if p], None


class StaMqttBridge:
    """The SensorThings MQTT bridge between PostgreSQL notifications and the broker."""

    def __init__(self, settings: Settings, *, topic_prefix: str = "", client_id: str | None = None) -> None:
        self.settings = settings
        self.prefix = topic_prefix
        self.ctx = read.Context(base=settings.base_url + "/sta/v1.1", principal=ANONYMOUS)
        # A stable id names a persistent session: what arrives while the bridge restarts waits at the broker.
        self.persistent = client_id is not None
        self.client_id = client_id or f"territoire-sta-{uuid.uuid4().hex[:8]}"
        self.oidc = OidcVerifier(settings) if settings.oidc_issuer else None
        self.published = 0
        self.notifications_handled = 0
        self.created = 0
        self.acknowledged = 0  # messages handled, then acknowledged to the broker
        # Set when the bridge stops: paho's network thread then stops waiting for the event loop (see _on_message).
        self._stopping = threading.Event()
        self._handling = False  # the create loop is storing a message
        self._incoming: asyncio.Queue[Incoming] = asyncio.Queue(maxsize=10_000)
        self._notifications: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue(maxsize=100_000)
        self.metrics = BridgeMetrics()
        self.metrics.pending.set_function(self._notifications.qsize)
        self.registry = SelectRegistry(self.prefix, settings.sta_mqtt_select_topics)
        self.entities = EntityPublisher(self.ctx, self._publish, self.prefix, self.registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._connected = asyncio.Event()
        self.is_publisher = asyncio.Event()

    # --- MQTT edge ---------------------------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        address = parse_mqtt_url(self.settings.mqtt_url)
        # Manual acknowledgement: a message is acknowledged once handled, so one received while stopping is
        # handed back to the broker (redelivered) rather than acknowledged and dropped.
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5, manual_ack=True
        )
        configure_client(
            client,
            address,
            ca_file=self.settings.mqtt_ca_file,
            cert_file=self.settings.mqtt_cert_file,
            key_file=self.settings.mqtt_key_file,
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(1, 30)
        properties = None
        if self.persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        client.connect_async(
            address.host, address.port, keepalive=30, clean_start=not self.persistent, properties=properties
        )
        return client

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            logger.warning("MQTT connection refused: %s", reason)
            return
        options = SubscribeOptions(qos=1)
        group = "$share/territoire-sta/"
        client.subscribe(
            [
                (f"{group}{self.prefix}v1.1/+/Observations", options),
                (f"{group}{self.prefix}v1.1/Observations", options),
                # what subscribers ask for, when the broker logs it there (not shared: every replica keeps track)
                (SUBSCRIBE_LOG, options),
                (UNSUBSCRIBE_LOG, options),
            ]
        )
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)
        logger.info("SensorThings MQTT bridge connected as %s", self.client_id)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.clear)
        logger.warning("SensorThings MQTT bridge disconnected: %s", reason)

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic in (SUBSCRIBE_LOG, UNSUBSCRIBE_LOG):
            self.registry.on_broker_log(message.topic, bytes(message.payload).decode("utf-8", "replace"))
            client.ack(message.mid, message.qos)
            return
        props = getattr(message, "properties", None)
        user = tuple(getattr(props, "UserProperty", None) or ())
        incoming = Incoming(message.topic, bytes(message.payload), user, message.mid, message.qos)
        if self._loop is None or self._stopping.is_set():
            return  # not acknowledged: the broker delivers it again
        # Blocks paho's network thread while the queue is full: back-pressure instead of dropping. The wait is
        # cut in slices so that a stop ends it: the event loop may be the one waiting for this thread (loop_stop),
        # and a wait of its own would then hold SIGTERM for a minute (the deadlock of issue 15).
        future = asyncio.run_coroutine_threadsafe(self._incoming.put(incoming), self._loop)
        while not self._stopping.is_set():
            try:
                future.result(timeout=0.2)
                return
            except TimeoutError:
                continue
            except Exception:  # the loop closed under us: the message stays unacknowledged
                return
        future.cancel()

    def _ack(self, message: Incoming) -> None:
        """Acknowledge a handled message (paho's ack is safe from any thread)."""
        if self._client is not None and message.qos > 0:
            self._client.ack(message.mid, message.qos)
        self.acknowledged += 1

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [ORIGIN]
        self._client.publish(topic, payload, qos=1, properties=props)

    # --- main loop ---------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until `stop` is set: elect the publisher, publish notifications, create from messages."""
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._client.loop_start()
        try:
            # Waiting for the broker, a stop request (SIGTERM) still ends the bridge at once.
            connected = asyncio.create_task(self._connected.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({connected, stopping}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            stopping.cancel()
            if stop.is_set():
                return
            if not self._connected.is_set():
                raise ServiceUnavailableError(
                    f"no MQTT broker answered at {parse_mqtt_url(self.settings.mqtt_url)!r} within 30 s"
                )
            writes = await asyncpg.connect(
                self.settings.asyncpg_dsn, server_settings={"application_name": "territoire-data-sta-mqtt"}
            )
            tasks = [
                asyncio.create_task(self._listen(stop, ready)),
                asyncio.create_task(self._publish_loop(stop)),
                asyncio.create_task(self._create_loop(stop, writes)),
            ]
            try:
                await stop.wait()
            finally:
                self._stopping.set()
                creating = tasks.pop()
                for task in tasks:
                    task.cancel()
                # The message being stored commits (and is acknowledged) first; one waiting in the queue is not
                # acknowledged, so the broker delivers it again.
                if not self._handling:
                    creating.cancel()
                await asyncio.wait({creating}, timeout=STOP_GRACE_SECONDS)
                creating.cancel()
                await asyncio.gather(*tasks, creating, return_exceptions=True)
                await writes.close()
        finally:
            # No new message is waited for; the network thread is joined off the event loop, which stays free.
            self._stopping.set()
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    async def _listen(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        """Hold the publisher lock and the LISTEN; reconnect after a database outage."""
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.settings.asyncpg_dsn, server_settings={"application_name": "territoire-data-sta-mqtt-listen"}
                )
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    if ready is not None:
                        ready.set()
                    await asyncio.sleep(2)
                await conn.add_listener(CHANNEL, self._on_notify)
                await conn.add_listener(ENTITY_CHANNEL, self._on_notify)
                self.is_publisher.set()
                if ready is not None:
                    ready.set()
                while not conn.is_closed():
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=1)
                        break
                    except TimeoutError:
                        continue
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("SensorThings MQTT bridge lost the database (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                self.is_publisher.clear()
                if conn is not None and not conn.is_closed():
                    await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        try:
            self._notifications.put_nowait((channel, payload, time.monotonic()))
        except asyncio.QueueFull:
            logger.error("SensorThings MQTT: notification queue full, %s not published", payload[:40])

    async def _publish_loop(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection | None = None
        while not stop.is_set():
            channel, payload, notified = await self._notifications.get()
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.settings.asyncpg_dsn)
                if channel == ENTITY_CHANNEL:
                    await self.entities.handle(conn, parse_entity_notification(payload))
                else:
                    await self.publish_notification(conn, payload)
                self.notifications_handled += 1
                self.metrics.publish_lag.observe(time.monotonic() - notified)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("SensorThings MQTT: could not read notified observations: %s", type(exc).__name__)
                conn = None
        if conn is not None:
            await conn.close()

    async def publish_notification(self, conn: asyncpg.Connection, payload: str) -> int:
        ids, span = parse_notification(payload)
        observation = BY_NAME["Observation"]
        params = sql.Params()
        if span is not None:
            if span[1] - span[0] >= MAX_RANGE:
                logger.info("SensorThings MQTT: bulk load of ids %s not streamed", payload)
                return 0
            where = f"c.id BETWEEN {params.add(span[0], 'bigint')} AND {params.add(span[1], 'bigint')}"
        else:
            where = f"c.id = ANY({params.add(ids, 'bigint[]')})"
        rows = await conn.fetch(
            f"SELECT {sql.select_list(observation, 'c', 'observation')} FROM observation c WHERE {where} "  # noqa: S608
            f"AND {sql.visible_sql(observation, 'c', ANONYMOUS, 'observation')} ORDER BY c.phenomenon_time, c.id",
            *params.values,
        )
        for row in rows:
            self.entities.send_entity(observation, row, collection_paths(observation, row))
            self.published += 1
            self.metrics.published.inc()
        return len(rows)

    async def _create_loop(self, stop: asyncio.Event, conn: asyncpg.Connection) -> None:
        while not self._stopping.is_set():
            message = await self._incoming.get()
            self._handling = True
            try:
                while True:  # a lost connection: reconnect and store the same message, never skip it
                    try:
                        await self.create_from_message(conn, message)
                        self._ack(message)
                        break
                    except (OSError, asyncpg.InterfaceError) as exc:
                        logger.warning("SensorThings MQTT create failed (%s), reconnecting", type(exc).__name__)
                        with contextlib.suppress(Exception):
                            await conn.close()
                        await asyncio.sleep(1)
                        with contextlib.suppress(OSError, asyncpg.PostgresError):
                            conn = await asyncpg.connect(self.settings.asyncpg_dsn)
                        if self._stopping.is_set():
                            return
            finally:
                self._handling = False

    async def create_from_message(self, conn: asyncpg.Connection, message: Incoming) -> int | None:
        """Create the Observation a message carries; our own notifications (with @iot.id) are skipped."""
        if ORIGIN in message.user_properties:
            return None
        topic = message.topic.removeprefix(self.prefix)
        match = _TOPIC.match(topic)
        if match is None:
            return None
        try:
            if len(message.payload) > MAX_PAYLOAD:
                raise BadRequestError(f"payload larger than {MAX_PAYLOAD} bytes")
            try:
                body = orjson.loads(message.payload)
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"payload is not JSON: {exc}") from None
            if isinstance(body, dict) and ("@iot.id" in body or "@iot.selfLink" in body):
                return None  # a notification echoed back, not a create
            authorization = dict(message.user_properties).get("Authorization") or dict(message.user_properties).get(
                "authorization"
            )
            # The publisher's API key (or OIDC access token) travels as an MQTT 5 user property (Authorization: Bearer).
            key = key_from_authorization(authorization)
            principal = (await principal_of(key, conn, self.oidc) if key else None) or ANONYMOUS
            WriteAuth(principal).check()
            forced: dict[str, int] = {}
            if match.group(1):  # v1.1/<parents>(<id>)/Observations: the Observation's to-one link to it
                parent = BY_PLURAL[match.group(1)]
                column = _PARENT_COLUMNS[parent.name]
                forced[column] = await Writer(conn, principal).existing(parent, int(match.group(2)))
            async with conn.transaction():
                writer = Writer(conn, principal)
                new_id = await writer.create(BY_NAME["Observation"], body, forced=forced)
                await audit_write(
                    conn, WriteAuth(principal, via="mqtt"), writer, "POST", message.topic, ("Observation", new_id)
                )
            self.created += 1
            self.metrics.created.inc()
            return new_id
        except (TerritoireError, asyncpg.DataError) as exc:
            reason = exc.detail if isinstance(exc, TerritoireError) else str(exc)
            logger.info("SensorThings MQTT create refused on %s: %s", message.topic, reason)
            self.metrics.refused.inc()
            await conn.execute(
                "INSERT INTO ingest_rejection (source, topic, reason, payload, payload_bytes) "
                "VALUES ('sta-mqtt', $1, $2, $3, $4)",
                message.topic,
                reason[:2000],
                message.payload[:65536].decode("utf-8", "replace")[:16000],
                len(message.payload),
            )
            return None
