"""HTTP doors of file imports: upload a CSV or GeoJSON into a dataset, read an import's report later.

Imports need a publisher or admin API key; a publisher writes the datasets it created or was granted.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile as StarletteUpload

from territoire_data.auth.audit import record
from territoire_data.auth.deps import check_dataset_write, check_publisher, client_address, get_principal
from territoire_data.auth.keys import grant_to_key
from territoire_data.auth.policy import Principal, can_read
from territoire_data.catalog.datasets import DatasetMeta, check_slug
from territoire_data.catalog.schema import parse_table_schema
from territoire_data.catalog.store import dataset_access
from territoire_data.deps import ConnDep, SettingsDep
from territoire_data.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from territoire_data.ingest.files import history
from territoire_data.ingest.files.geojson import GeoJsonSource
from territoire_data.ingest.files.loader import MODES, ImportOptions, import_with_settings
from territoire_data.ingest.files.sources import CsvSource, RowSource

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/datasets", tags=["imports"])
_CHUNK = 1 << 20


async def _check_import_writer(request: Request, slug: str) -> Principal:
    """The caller's principal when it may import into `slug`: 401/403 without a publisher key, 404 when the dataset
    exists but is hidden from it, 403 when it may see but not write it. A new dataset needs a publisher key."""
    principal = check_publisher(await get_principal(request))
    async with request.app.state.engine.connect() as conn:
        found = await dataset_access(conn, slug)
    if found is not None:
        dataset_id, access, status = found
        if not can_read(principal, dataset_id, access, status):
            raise NotFoundError(f"no dataset {slug!r}")
        check_dataset_write(principal, dataset_id)
    return principal


async def spool_upload(upload: StarletteUpload, suffix: str, limit: int) -> Path:
    """Copy the upload to a temporary file chunk by chunk: never the whole file in memory."""
    handle, name = tempfile.mkstemp(prefix="td-import-", suffix=suffix)
    size = 0
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"the file is larger than {limit} bytes")
                out.write(chunk)
    except BaseException:
        await anyio.Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def format_of(upload: StarletteUpload, declared: str | None) -> str:
    if declared:
        if declared not in ("csv", "geojson"):
            raise BadRequestError("format must be csv or geojson")
        return declared
    name = (upload.filename or "").lower()
    kind = (upload.content_type or "").lower()
    if name.endswith((".geojson", ".geojsonl", ".geojsons", ".json", ".ndjson")) or "json" in kind:
        return "geojson"
    return "csv"


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "the CSV or GeoJSON file"},
                    "schema": {"type": "string", "format": "binary", "description": "Table Schema for a new dataset"},
                    "mode": {"type": "string", "enum": list(MODES), "default": "append"},
                    "create": {"type": "boolean", "default": False},
                    "crs": {"type": "string", "description": "source CRS, e.g. EPSG:2154 (default WGS84)"},
                    "skip_invalid": {"type": "boolean", "default": False},
                    "format": {"type": "string", "enum": ["csv", "geojson"], "description": "default: by name"},
                    "title": {"type": "string", "maxLength": 300},
                    "timezone": {"type": "string", "default": "Europe/Paris"},
                    "invalid_geometry": {"type": "string", "enum": ["reject", "repair"], "default": "reject"},
                },
            }
        }
    },
}


def _flag(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on", "oui")


@router.post(
    "/{slug}/imports",
    status_code=201,
    summary="Import a CSV or GeoJSON file into a dataset (validated, all-or-nothing unless skip_invalid)",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        201: {"description": "the import report"},
        403: {"description": "writes need the admin token (temporary rule)"},
        404: {"description": "no such dataset (and create is false)"},
        422: {"description": "the file was refused; the problem's `report` lists each rejected row"},
    },
)
async def create_import(
    request: Request,
    slug: str,
    settings: SettingsDep,
) -> JSONResponse:
    # Checked before the body is read: a refused request costs no upload.
    check_slug(slug)
    principal = await _check_import_writer(request, slug)
    async with request.form(max_files=2, max_fields=20) as form:
        upload = form.get("file")
        if not isinstance(upload, StarletteUpload):
            raise BadRequestError("send the file as the multipart part 'file'")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        mode = fields.get("mode", "append")
        if mode not in MODES:
            raise BadRequestError(f"mode must be one of {', '.join(MODES)}")
        invalid_geometry = fields.get("invalid_geometry", "reject")
        if invalid_geometry not in ("reject", "repair"):
            raise BadRequestError("invalid_geometry must be reject or repair")
        table_schema = None
        schema_part = form.get("schema")
        if isinstance(schema_part, StarletteUpload):
            try:
                table_schema = parse_table_schema(orjson.loads(await schema_part.read(8 * 1024 * 1024)))
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"the schema is not valid JSON: {exc}") from None
        kind = format_of(upload, fields.get("format"))
        path = await spool_upload(upload, f".{kind}", settings.import_max_bytes)
        label = Path(upload.filename or f"upload.{kind}").name
    options = ImportOptions(
        mode=mode,  # type: ignore[arg-type]
        create=_flag(fields.get("create", "false")),
        schema=table_schema,
        meta=DatasetMeta(title=fields.get("title") or None),
        crs=fields.get("crs") or None,
        skip_invalid=_flag(fields.get("skip_invalid", "false")),
        timezone=fields.get("timezone", "Europe/Paris"),
        invalid_geometry=invalid_geometry,  # type: ignore[arg-type]
    )

    def source() -> RowSource:
        return GeoJsonSource(path, label=label) if kind == "geojson" else CsvSource(path, label=label)

    try:
        report = await import_with_settings(settings, source, slug, options)
    finally:
        await anyio.Path(path).unlink(missing_ok=True)
    async with request.app.state.engine.begin() as conn:
        found = await dataset_access(conn, slug)
        if found is not None and principal.role == "publisher" and principal.key_id is not None:
            await grant_to_key(conn, principal.key_id, found[0], "write")  # it created the dataset
        await record(
            conn,
            principal,
            "dataset.import",
            "dataset",
            slug,
            remote_addr=client_address(request),
            details={"import_id": report.get("import_id"), "status": report.get("status"), "source": label},
        )
    location = f"/api/v1/datasets/{slug}/imports/{report['import_id']}"
    return JSONResponse(report, status_code=201, headers={"Location": location})


@router.get(
    "/{slug}/imports/{import_id}",
    summary="An import's status and report",
    responses={404: {"description": "no such dataset or import"}},
)
async def get_import(
    request: Request,
    slug: str,
    import_id: int,
    settings: SettingsDep,
    conn: ConnDep,
    limit_errors: Annotated[int, Query(ge=0, le=10_000, description="errors listed at most")] = 1000,
) -> dict[str, Any]:
    principal = await get_principal(request)
    row = await history.get_import(conn, principal, slug, import_id)
    if row is None:
        raise NotFoundError(f"no import {import_id} for dataset {slug!r}")
    report = orjson.loads(row["report"])
    if isinstance(report.get("errors"), list):
        report["errors"] = report["errors"][:limit_errors]
    return {
        "id": row["id"],
        "dataset": slug,
        "status": row["status"],
        "source": row["source"],
        "mode": row["mode"],
        "rows_read": row["rows_read"],
        "rows_loaded": row["rows_loaded"],
        "rows_rejected": row["rows_rejected"],
        "started_at": row["started_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "report": report,
        "links": [{"rel": "self", "href": str(request.url_for("get_import", slug=slug, import_id=import_id))}],
    }
