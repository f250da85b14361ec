"""Recurring file sources: a `connectors/*.yaml` definition (file, folder or glob to watch, schema, column
mapping, geometry, CRS, mode) run by `territoire-data ingest run`. A file already loaded unchanged (same
SHA-256) is skipped, so the command can run from cron or a systemd timer as often as wanted.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from territoire_data.catalog.datasets import DatasetMeta
from territoire_data.catalog.metadata import missing_metadata
from territoire_data.db.engine import connect_raw
from territoire_data.errors import BadRequestError, ConfigurationError
from territoire_data.ingest.files.geojson import GeoJsonSource
from territoire_data.ingest.files.geometry import GeometrySpec
from territoire_data.ingest.files.loader import ImportFailedError, ImportOptions, load_schema_file, run_import
from territoire_data.ingest.files.sources import CsvSource, RowSource
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

_GEOJSON_SUFFIXES = (".geojson", ".geojsonl", ".geojsons", ".ndjson", ".json")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetDef(_Strict):
    slug: str
    create: bool = True
    title: str | None = None
    description: str = ""
    keywords: list[str] = Field(default_factory=list)
    themes: list[str] = Field(default_factory=list)
    licence: str | None = None
    publisher: str | None = None
    contact_name: str | None = None
    contact_email: str | None = None
    update_frequency: str | None = None
    access: Literal["public", "restricted"] = "public"
    # manual: created as a draft for a person to publish; auto: created published (complete metadata required).
    publish: Literal["auto", "manual"] = "manual"

    @model_validator(mode="after")
    def _complete_for_auto(self) -> DatasetDef:
        if self.publish == "auto":
            missing = missing_metadata({**self.model_dump(), "title": self.title or ""})
            if missing:
                raise ValueError("publish: auto needs complete metadata: " + "; ".join(m.message for m in missing))
        return self


class SourceDef(_Strict):
    path: str = Field(description="a file, a folder (every .csv/.geojson in it) or a glob pattern")
    format: Literal["csv", "geojson"] | None = None
    delimiter: str | None = None
    encoding: str | None = None


class GeometryDef(_Strict):
    lon: str | None = None
    lat: str | None = None
    latlon: str | None = None
    lonlat_array: str | None = None
    wkt: str | None = None
    geojson: str | None = None
    detect: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> GeometryDef:
        if (self.lon is None) != (self.lat is None):
            raise ValueError("give both lon and lat")
        given = [x for x in (self.lon, self.latlon, self.lonlat_array, self.wkt, self.geojson) if x]
        if len(given) > 1:
            raise ValueError("give one geometry source")
        return self

    def spec(self) -> GeometrySpec | None:
        if self.lon and self.lat:
            return GeometrySpec("lonlat", (self.lon, self.lat))
        for kind, column in (("latlon", self.latlon), ("lonlat_array", self.lonlat_array), ("wkt", self.wkt),
                             ("geojson", self.geojson)):  # fmt: skip
            if column:
                return GeometrySpec(kind, (column,))  # type: ignore[arg-type]
        return None


class ConnectorDef(_Strict):
    """A recurring file source, as written in connectors/NAME.yaml."""

    kind: Literal["file"] = "file"
    name: str
    description: str = ""
    dataset: DatasetDef
    source: SourceDef
    table_schema: str | None = Field(default=None, alias="schema", description="Table Schema JSON path")
    mapping: dict[str, str] = Field(default_factory=dict, description="file column → schema field")
    geometry: GeometryDef = Field(default_factory=GeometryDef)
    crs: str | None = None
    mode: Literal["append", "upsert", "replace"] = "append"
    skip_invalid: bool = False
    invalid_geometry: Literal["reject", "repair"] = "reject"
    timezone: str = "Europe/Paris"


def load_connector(path: str | Path) -> tuple[ConnectorDef, Path]:
    """Read and check a connector definition; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read connector {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"connector {path.name} must be a YAML mapping")
    try:
        return ConnectorDef.model_validate(raw), path.resolve().parent
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"connector {path.name}: {where}: {first['msg']}") from None


def files_of(pattern: str, base: Path) -> list[Path]:
    """The files a source names: one file, every CSV/GeoJSON of a folder, or a glob; sorted by name."""
    target = Path(pattern) if Path(pattern).is_absolute() else base / pattern
    if target.is_file():
        return [target]
    if target.is_dir():
        suffixes = (".csv", ".txt", *_GEOJSON_SUFFIXES)
        return sorted(p for p in target.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return sorted(Path(p) for p in glob.glob(str(target)) if Path(p).is_file())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _Renamed:
    """A row source whose columns are renamed by the connector's mapping before validation."""

    def __init__(self, inner: RowSource, mapping: dict[str, str]) -> None:
        self.inner = inner
        self.format = inner.format
        self.label = inner.label
        self.header = [mapping.get(name, name) for name in inner.header]
        self.legacy_crs = getattr(inner, "legacy_crs", None)

    def records(self) -> Any:
        return self.inner.records()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def raw_line(self, cells: list[str]) -> str:
        return self.inner.raw_line(cells)

    def close(self) -> None:
        self.inner.close()


def _open(connector: ConnectorDef, path: Path) -> RowSource:
    kind = connector.source.format or ("geojson" if path.suffix.lower() in _GEOJSON_SUFFIXES else "csv")
    source: RowSource
    if kind == "geojson":
        source = GeoJsonSource(path)
    else:
        source = CsvSource(path, delimiter=connector.source.delimiter, encoding=connector.source.encoding)
    return _Renamed(source, connector.mapping) if connector.mapping else source


async def run_connector(settings: Settings, path: str | Path, *, override: str | None = None) -> list[dict[str, Any]]:
    """Import every file of a connector's source not yet loaded unchanged; one report per file."""
    connector, base = load_connector(path)
    schema_path = connector.table_schema
    schema = (
        load_schema_file(schema_path if Path(schema_path).is_absolute() else base / schema_path)
        if schema_path
        else None
    )
    files = files_of(override or connector.source.path, Path.cwd() if override else base)
    if not files:
        raise BadRequestError(f"connector {connector.name}: no file at {override or connector.source.path}")
    meta = DatasetMeta(
        **connector.dataset.model_dump(exclude={"slug", "create", "publish"}),
        status="published" if connector.dataset.publish == "auto" else "draft",
    )
    results: list[dict[str, Any]] = []
    conn = await connect_raw(settings, application_name=f"connector-{connector.name}")
    try:
        for file in files:
            digest = sha256_of(file)
            seen = await conn.fetchval(
                """SELECT i.id FROM dataset_import i JOIN dataset d ON d.id = i.dataset_id
                   WHERE d.slug = $1 AND i.status = 'succeeded' AND i.report->>'sha256' = $2 LIMIT 1""",
                connector.dataset.slug,
                digest,
            )
            if seen:
                logger.info("connector %s: %s unchanged since import %s, skipped", connector.name, file.name, seen)
                results.append({"source": file.name, "status": "skipped", "reason": f"unchanged since import {seen}"})
                continue
            options = ImportOptions(
                mode=connector.mode,
                create=connector.dataset.create,
                schema=schema,
                meta=meta,
                crs=connector.crs,
                geometry=connector.geometry.spec(),
                detect_geometry=connector.geometry.detect,
                invalid_geometry=connector.invalid_geometry,
                skip_invalid=connector.skip_invalid,
                timezone=connector.timezone,
                extra_report={"sha256": digest, "connector": connector.name},
                connect=lambda: connect_raw(settings, application_name=f"connector-{connector.name}-helper"),
            )
            try:
                results.append(await run_import(conn, _open(connector, file), connector.dataset.slug, options))
            except ImportFailedError as exc:
                logger.warning("connector %s: %s refused: %s", connector.name, file.name, exc.detail)
                results.append(exc.report)
    finally:
        await conn.close()
    return results


def summary(results: list[dict[str, Any]]) -> str:
    """One JSON document for the command's output."""
    return orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
