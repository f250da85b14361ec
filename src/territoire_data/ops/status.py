"""`territoire-data status`: what a person on call reads first, on one screen.

Processes (the pid files of the run directory, and who is connected to the database), the broker, the database
(schema, size, partitions ahead), the newest observation, the last file import, the last rejections, disk use.
Each check answers on its own: a database that is down still shows the broker and the processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from territoire_data.db.migrate import head_revision
from territoire_data.errors import ConfigurationError
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.settings import Settings

TIMEOUT_S = 3.0


def processes(run_dir: Path) -> list[dict[str, Any]]:
    """The processes started with a pid file in `run_dir` (scripts/quickstart's .run/), alive or not."""
    found = []
    for pid_file in sorted(run_dir.glob("*.pid")) if run_dir.is_dir() else []:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 0)
            state = "running"
        except (ValueError, ProcessLookupError):
            pid, state = 0, "not running"
        except PermissionError:
            state = "running (another user)"
        found.append({"name": pid_file.stem, "pid": pid, "state": state})
    return found


def broker(settings: Settings) -> dict[str, Any]:
    address = parse_mqtt_url(settings.mqtt_url)
    answered = threading.Event()
    outcome: dict[str, Any] = {"status": "fail", "reason": "no answer"}

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        outcome.update({"status": "ok"} if not reason.is_failure else {"reason": f"refused: {reason}"})
        if not reason.is_failure:
            outcome.pop("reason", None)
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"territoire-status-{uuid.uuid4().hex[:8]}")
    client.on_connect = on_connect
    try:
        configure_client(
            client,
            address,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )
        client.connect(address.host, address.port, keepalive=10)
        client.loop_start()
        answered.wait(TIMEOUT_S)
        client.disconnect()
        client.loop_stop()
    except (OSError, ConfigurationError) as exc:
        return {"status": "fail", "address": repr(address), "reason": str(exc)}
    return {"address": repr(address), **outcome}


async def database(settings: Settings) -> dict[str, Any]:
    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(settings.asyncpg_dsn, server_settings={"application_name": "territoire-data-status"}),
            TIMEOUT_S,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return {"status": "fail", "reason": f"{type(exc).__name__}: {exc}"}
    try:
        revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        info: dict[str, Any] = {
            "status": "ok",
            "url": settings.redacted_database_url(),
            "schema": revision,
            "schema_expected": head_revision(settings),
            "size_bytes": await conn.fetchval("SELECT pg_database_size(current_database())"),
            "last_partition": await conn.fetchval(
                "SELECT max(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'observation'::regclass"
            ),
            "connections": [
                dict(row)
                for row in await conn.fetch(
                    "SELECT application_name AS process, count(*) AS connections FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'territoire%' GROUP BY 1 ORDER BY 1"
                )
            ],
            "newest_observation": await conn.fetchval(
                "SELECT max(phenomenon_time) FROM observation WHERE phenomenon_time > now() - interval '7 days' "
                "AND phenomenon_time <= now() + interval '1 day'"
            ),
            "last_import": _row(
                await conn.fetchrow(
                    "SELECT i.id, d.slug AS dataset, i.status, i.rows_loaded, i.rows_rejected, i.finished_at "
                    "FROM dataset_import i JOIN dataset d ON d.id = i.dataset_id ORDER BY i.id DESC LIMIT 1"
                )
            ),
            "rejections": [
                dict(row)
                for row in await conn.fetch(
                    "SELECT source AS connector, count(*) FILTER (WHERE at > now() - interval '24 hours') AS last_24h, "
                    "max(at) AS last, (array_agg(reason_code ORDER BY id DESC))[1] AS last_reason "
                    "FROM ingest_rejection GROUP BY 1 ORDER BY max(at) DESC LIMIT 20"
                )
            ],
        }
        try:
            data_directory = await conn.fetchval("SHOW data_directory")
        except asyncpg.PostgresError:  # needs pg_read_all_settings
            data_directory = None
        info["data_directory"] = data_directory
    except asyncpg.PostgresError as exc:
        return {"status": "fail", "reason": f"{type(exc).__name__}: {exc} (run `territoire-data migrate`?)"}
    finally:
        await conn.close()
    if info["schema"] != info["schema_expected"]:
        info["status"] = "fail"
        info["reason"] = "schema not at the code's revision: run `territoire-data migrate`"
    return info


def _row(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row else None


def disk(paths: list[str | None]) -> list[dict[str, Any]]:
    seen: set[int] = set()
    found = []
    for path in paths:
        if not path or not Path(path).exists():
            continue
        device = os.stat(path).st_dev
        if device in seen:
            continue
        seen.add(device)
        usage = shutil.disk_usage(path)
        found.append({"path": path, "used_percent": round(100 * usage.used / usage.total, 1), "free_bytes": usage.free})
    return found


async def collect(settings: Settings, run_dir: Path) -> dict[str, Any]:
    broker_task = asyncio.create_task(asyncio.to_thread(broker, settings))
    db = await database(settings)
    return {
        "processes": processes(run_dir),
        "broker": await broker_task,
        "database": db,
        "disk": await asyncio.to_thread(disk, [db.get("data_directory"), str(run_dir), os.getcwd()]),
    }


def render(status: dict[str, Any]) -> str:
    """The one screen."""
    lines = []
    db = status["database"]
    lines.append(f"database   {db['status']}" + (f"  {db.get('reason')}" if db["status"] != "ok" else ""))
    if "schema" in db:
        lines.append(
            f"  {db['url']}  schema {db['schema']}  {_size(db['size_bytes'])}  partitions to {db['last_partition']}"
        )
        lines.append(f"  newest observation  {db['newest_observation'] or 'none in the last 7 days'}")
        last = db["last_import"]
        lines.append(
            "  last import  "
            + (
                f"#{last['id']} {last['dataset']} {last['status']} ({last['rows_loaded']} rows, "
                f"{last['rows_rejected']} rejected) {last['finished_at'] or 'running'}"
                if last
                else "none"
            )
        )
        lines.append("  rejections (24 h, last, last reason):" if db["rejections"] else "  rejections  none")
        for item in db["rejections"]:
            lines.append(f"    {item['connector']:<24} {item['last_24h']:>7}  {item['last']}  {item['last_reason']}")
        lines.append("  connected processes:")
        for item in db["connections"]:
            lines.append(f"    {item['process']:<48} {item['connections']} connection(s)")
    broker_status = status["broker"]
    lines.append(
        f"broker     {broker_status['status']}  {broker_status.get('address', '')} {broker_status.get('reason', '')}"
    )
    lines.append("processes" + ("" if status["processes"] else "  (no pid files)"))
    for item in status["processes"]:
        lines.append(f"  {item['name']:<24} {item['state']}" + (f" (pid {item['pid']})" if item["pid"] else ""))
    lines.append("disk")
    for item in status["disk"]:
        lines.append(f"  {item['path']:<40} {item['used_percent']} % used, {_size(item['free_bytes'])} free")
    return "\n".join(lines)


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
