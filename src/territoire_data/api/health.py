"""Liveness, readiness (database, schema, broker) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from territoire_data.api import metrics as api_metrics
from territoire_data.db.migrate import current_revision
from territoire_data.errors import ConfigurationError
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 3.0


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _check_database(request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    head = request.app.state.schema_head
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            revision = await current_revision(conn)
    except Exception as exc:  # any failure to reach the database means not ready
        logger.warning("readiness: database unreachable: %s", type(exc).__name__)
        return {"status": "fail", "reason": f"database unreachable ({type(exc).__name__})"}
    if revision != head:
        return {
            "status": "fail",
            "reason": f"schema at {revision or 'nothing'}, code expects {head}: run `territoire-data migrate`",
        }
    return {"status": "ok", "schema": revision}


def _probe_broker(settings: Settings) -> str | None:
    """Connect to the broker with a throwaway client; None when it accepted us, else the reason."""
    address = parse_mqtt_url(settings.mqtt_url)
    done = threading.Event()
    outcome: dict[str, str | None] = {"reason": "no answer from the broker"}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        outcome["reason"] = None if not reason.is_failure else f"broker refused: {reason}"
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"territoire-ready-{uuid.uuid4().hex[:8]}")
    client.on_connect = on_connect
    try:
        configure_client(
            client,
            address,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )
    except ConfigurationError as exc:
        return exc.detail
    try:
        client.connect(address.host, address.port, keepalive=10)
        client.loop_start()
        done.wait(CHECK_TIMEOUT_S)
        client.disconnect()
        client.loop_stop()
    except OSError as exc:
        return f"broker unreachable ({type(exc).__name__})"
    return outcome["reason"]


async def _check_broker(settings: Settings) -> dict[str, Any]:
    reason = await asyncio.to_thread(_probe_broker, settings)
    return {"status": "ok"} if reason is None else {"status": "fail", "reason": reason}


@router.get(
    "/ready",
    summary="Readiness: database reachable, schema at head, broker reachable",
    responses={
        503: {
            "description": "Not ready; the body says which check failed and why",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def ready(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    database, broker = await asyncio.gather(_check_database(request), _check_broker(settings))
    checks = {"database": database, "broker": broker}
    ok = all(check["status"] == "ok" for check in checks.values())
    return JSONResponse({"status": "ok" if ok else "fail", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(await api_metrics.render(request.app.state), media_type=CONTENT_TYPE_LATEST)
