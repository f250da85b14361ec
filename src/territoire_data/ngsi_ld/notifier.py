"""Delivery of NGSI-LD notifications, at least once, and the bridge from every other door's writes.

One process delivers at a time (a PostgreSQL advisory lock held by its own connection; the others wait for it):
- it LISTENs to `ngsild_notification` (queued by NGSI-LD writes, in their own transaction) and to
  `sta_observation` (sent by the observation triggers whatever stored them: SensorThings, MQTT ingest, CSV
  import): for new Observations it reads the sensor entities they belong to and queues the notifications of the
  subscriptions they match (their changed attributes are the Datastreams' ones, for `watchedAttributes`);
- it delivers every due row of the outbox `ngsild_notification`: HTTP POST, or an MQTT publish (QoS 1) for
  `mqtt://` endpoints on our own broker; a row leaves the outbox only once delivered (2xx, or PUBACK), else it is
  retried with exponential backoff (1, 2, 4 ... s) up to TERRITOIRE_NGSILD_NOTIFY_RETRIES attempts, and the
  subscription shows it: `timesFailed`, `lastFailure`, `status: failed` until a delivery succeeds again.
Observations stored while no process listens are not notified afterwards (LISTEN is not durable); writes through
NGSI-LD are, since their notifications are queued with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from territoire_data.auth.policy import Principal
from territoire_data.db.engine import session_settings
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.ngsi_ld import sensors, store, subscriptions
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

LOCK_KEY = 0x6E67_7369_6C64  # "ngsild"
OBSERVATION_CHANNEL = "sta_observation"
NOTIFIER = Principal(name="ngsi-ld notifier", role="admin")
_TIMEOUT = 5.0
_BATCH = 100


@dataclass
class Delivery:
    ok: bool
    error: str | None = None


class Notifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._wake = asyncio.Event()
        self._observations: list[str] = []
        self._http: httpx.AsyncClient | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`; reconnect after a database outage; wait while another process holds the lock."""
        while not stop.is_set():
            try:
                await self._run_locked(stop)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("NGSI-LD notifier: database unavailable (%s); retrying", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    async def _run_locked(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(
            self.settings.asyncpg_dsn, server_settings=session_settings(self.settings, "ngsild-notifier")
        )
        try:
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                with contextlib.suppress(TimeoutError):  # another process delivers: take over if it stops
                    await asyncio.wait_for(stop.wait(), 5.0)
                if stop.is_set():
                    return
            await conn.add_listener(subscriptions.QUEUE_CHANNEL, self._on_notify)
            await conn.add_listener(OBSERVATION_CHANNEL, self._on_notify)
            async with httpx.AsyncClient(timeout=_TIMEOUT) as http:
                self._http = http
                while not stop.is_set():
                    await self._bridge_observations(conn)
                    await self.deliver_due(conn)
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
        finally:
            self._http = None
            with contextlib.suppress(Exception):
                await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == OBSERVATION_CHANNEL:
            self._observations.append(payload)
        self._wake.set()

    async def _bridge_observations(self, conn: asyncpg.Connection) -> None:
        if not self._observations:
            return
        payloads, self._observations = self._observations, []
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM ngsild_subscription WHERE is_active)"):
            return
        await queue_observation_changes(conn, payloads)

    async def deliver_due(self, conn: asyncpg.Connection) -> int:
        delivered = 0
        while True:
            rows = await conn.fetch(
                "SELECT n.id, n.subscription_id, n.payload, n.attempts FROM ngsild_notification n "
                "WHERE n.next_attempt_at <= now() ORDER BY n.id LIMIT $1",
                _BATCH,
            )
            if not rows:
                return delivered
            for row in rows:
                outcome = await self._deliver(row["payload"])
                await self._record(conn, row, outcome)
                delivered += outcome.ok
            if len(rows) < _BATCH:
                return delivered

    async def _deliver(self, payload: dict[str, Any]) -> Delivery:
        endpoint = str(payload["endpoint"])
        body = orjson.dumps(payload["body"])
        if endpoint.startswith(("mqtt://", "mqtts://")):
            return await asyncio.to_thread(self._publish_mqtt, endpoint, body, payload.get("headers") or {})
        assert self._http is not None
        try:
            response = await self._http.post(endpoint, content=body, headers=payload.get("headers") or {})
        except httpx.HTTPError as exc:
            return Delivery(False, f"{type(exc).__name__}: {str(exc)[:200]}")
        if 200 <= response.status_code < 300:
            return Delivery(True)
        return Delivery(False, f"HTTP {response.status_code}")

    def _publish_mqtt(self, endpoint: str, body: bytes, headers: dict[str, str]) -> Delivery:
        """Publish on our own broker only (the endpoint's host and port must be the configured broker's)."""
        ours = parse_mqtt_url(self.settings.mqtt_url)
        parts = urlsplit(endpoint)
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        if (parts.hostname, port) != (ours.host, ours.port):
            return Delivery(False, "MQTT notifications go to this platform's broker only")
        topic = parts.path.lstrip("/")
        client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        configure_client(
            client,
            ours,
            ca_file=self.settings.mqtt_ca_file,
            cert_file=self.settings.mqtt_cert_file,
            key_file=self.settings.mqtt_key_file,
        )
        try:
            client.connect(ours.host, ours.port, keepalive=10)
            client.loop_start()
            message = {"metadata": headers, "body": orjson.loads(body)}
            info = client.publish(topic, orjson.dumps(message), qos=1)
            info.wait_for_publish(_TIMEOUT)
            if not info.is_published():
                return Delivery(False, "MQTT publish not acknowledged")
            return Delivery(True)
        except (OSError, ValueError, RuntimeError) as exc:
            return Delivery(False, f"MQTT: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            client.loop_stop()
            with contextlib.suppress(Exception):
                client.disconnect()

    async def _record(self, conn: asyncpg.Connection, row: asyncpg.Record, outcome: Delivery) -> None:
        async with conn.transaction():
            if outcome.ok:
                await conn.execute("DELETE FROM ngsild_notification WHERE id = $1", row["id"])
                await conn.execute(
                    "UPDATE ngsild_subscription SET times_sent = times_sent + 1, last_success = now() WHERE id = $1",
                    row["subscription_id"],
                )
                return
            attempts = row["attempts"] + 1
            if attempts > self.settings.ngsild_notify_retries:
                await conn.execute("DELETE FROM ngsild_notification WHERE id = $1", row["id"])
            else:
                await conn.execute(
                    "UPDATE ngsild_notification SET attempts = $2, last_error = $3, "
                    "next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                    row["id"],
                    attempts,
                    outcome.error,
                    float(2 ** (attempts - 1)),
                )
            await conn.execute(
                "UPDATE ngsild_subscription SET times_failed = times_failed + 1, last_failure = now(), "
                "last_error = $2 WHERE id = $1",
                row["subscription_id"],
                outcome.error,
            )
        logger.info("NGSI-LD notification to subscription %s failed: %s", row["subscription_id"], outcome.error)


def _observation_ids(payloads: Iterable[str]) -> tuple[list[int], list[tuple[int, int]]]:
    ids: list[int] = []
    ranges: list[tuple[int, int]] = []
    for payload in payloads:
        if "-" in payload:
            lo, _, hi = payload.partition("-")
            ranges.append((int(lo), int(hi)))
        else:
            ids.extend(int(p) for p in payload.split(",") if p)
    return ids, ranges


async def queue_observation_changes(conn: asyncpg.Connection, payloads: Iterable[str]) -> int:
    """Queue the notifications of new Observations (the `sta_observation` payloads: ids or id ranges)."""
    ids, ranges = _observation_ids(payloads)
    los = [lo for lo, _ in ranges]
    his = [hi for _, hi in ranges]
    rows = await conn.fetch(
        "SELECT DISTINCT o.datastream_id FROM observation o WHERE o.id = ANY($1::bigint[]) "
        "OR EXISTS (SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) r(lo, hi) WHERE o.id BETWEEN r.lo AND r.hi)",
        ids,
        los,
        his,
    )
    streams = [r["datastream_id"] for r in rows]
    if not streams:
        return 0
    things = await conn.fetch(
        "SELECT thing_id, array_agg(id) AS streams FROM datastream WHERE id = ANY($1::bigint[]) GROUP BY thing_id",
        streams,
    )
    changes = []
    for thing in things:
        entity = await store.retrieve(conn, NOTIFIER, f"{sensors.THING_PREFIX}{thing['thing_id']}")
        if entity is None:
            continue
        from territoire_data.db.params import Params

        params = Params()
        attrs = await conn.fetch(sensors.datastreams_sql(params, NOTIFIER, int(thing["thing_id"])), *params.values)
        changed = frozenset(a["attr"] for a in attrs if a["id"] in set(thing["streams"]))
        changes.append(subscriptions.Change(entity, entity, changed))
    return await subscriptions.queue_changes(conn, changes)
