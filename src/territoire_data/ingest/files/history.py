"""An import's record (`dataset_import`): what the import door reads back, visible as its dataset is."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import Principal, dataset_visible_sql


async def get_import(conn: AsyncConnection, principal: Principal, slug: str, import_id: int) -> dict[str, Any] | None:
    """Import `import_id` of dataset `slug` (report as JSON text); None when missing or its dataset is hidden."""
    result = await conn.execute(
        text(
            f"""SELECT i.id, i.status, i.source, i.mode, i.rows_read, i.rows_loaded, i.rows_rejected,
                       i.report::text AS report, i.started_at, i.finished_at
                FROM dataset_import i JOIN dataset d ON d.id = i.dataset_id
                WHERE d.slug = :slug AND i.id = :import_id AND {dataset_visible_sql(principal, "d")}"""  # noqa: S608
        ),
        {"slug": slug, "import_id": import_id},
    )
    row = result.mappings().first()
    return None if row is None else dict(row)


async def list_imports(conn: AsyncConnection, dataset_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The latest imports of a dataset, newest first (the caller checked it may read the dataset)."""
    result = await conn.execute(
        text(
            """SELECT id, status, source, mode, rows_read, rows_loaded, rows_rejected, started_at, finished_at
                 FROM dataset_import WHERE dataset_id = :id ORDER BY id DESC LIMIT :limit"""
        ),
        {"id": dataset_id, "limit": limit},
    )
    return [dict(row) for row in result.mappings()]


async def list_rejections(conn: AsyncConnection, dataset_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The latest messages of the dataset's connectors that could not be stored (MQTT dead letters), newest first;
    the payload is cut to 500 characters for a page."""
    result = await conn.execute(
        text(
            """SELECT at, source, topic, reason, left(payload, 500) AS payload, payload_bytes
                 FROM ingest_rejection WHERE dataset_id = :id AND import_id IS NULL ORDER BY id DESC LIMIT :limit"""
        ),
        {"id": dataset_id, "limit": limit},
    )
    return [dict(row) for row in result.mappings()]
