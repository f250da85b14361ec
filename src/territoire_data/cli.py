"""The `territoire-data` command: migrate, serve, ingest, datasets, keys, simulate, demo, openapi."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import orjson
import typer

from territoire_data.errors import TerritoireError
from territoire_data.logging_setup import configure_logging
from territoire_data.settings import Settings, load_settings

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="territoire-data",
    help="Self-hosted urban data platform: ingest, store and serve a territory's data through open standards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ingest_app = typer.Typer(help="Load data: files (CSV, GeoJSON) and MQTT streams.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(func: F) -> F:
    """Turn expected failures into one line on stderr and a non-zero exit, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TerritoireError as exc:
            typer.echo(f"error: {exc.detail}", err=True)
            raise typer.Exit(2) from None
        except (OSError, ConnectionError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def settings_for_command() -> Settings:
    settings = load_settings()
    configure_logging(settings)
    return settings


@app.command()
@clear_errors
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision (default: the latest)")] = "head",
) -> None:
    """Upgrade the database schema (creates PostGIS, tables and observation partitions)."""
    from territoire_data.db import migrate as migrations
    from territoire_data.db.engine import create_engine

    settings = settings_for_command()
    try:
        migrations.upgrade(settings, revision)
    except Exception as exc:
        if isinstance(exc, TerritoireError):
            raise
        raise TerritoireError(
            f"migration failed on {settings.redacted_database_url()}: {type(exc).__name__}: {exc}"
        ) from exc

    async def partitions() -> int:
        engine = create_engine(settings, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await migrations.ensure_partitions(conn)
        finally:
            await engine.dispose()

    created = asyncio.run(partitions())
    typer.echo(f"schema at {migrations.head_revision(settings)}; {created} new observation partition(s)")


@app.command()
@clear_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes")] = 1,
) -> None:
    """Run the HTTP API and the portal."""
    import uvicorn

    settings = settings_for_command()  # fail fast, with one clear line, before forking workers
    uvicorn.run(
        "territoire_data.api.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        server_header=False,
    )


ModeOption = Annotated[str, typer.Option(help="append | upsert (needs a primaryKey) | replace")]
CrsOption = Annotated[str | None, typer.Option(help="CRS of the coordinates, e.g. EPSG:2154 (default WGS84)")]
SkipOption = Annotated[bool, typer.Option("--skip-invalid", help="Load good rows, set bad ones aside")]
TitleOption = Annotated[str | None, typer.Option(help="Title of a created dataset")]
TimezoneOption = Annotated[str, typer.Option(help="Time zone of datetimes without offset")]
SchemaOption = Annotated[str | None, typer.Option(help="Table Schema JSON (schema.data.gouv.fr format)")]
CreateOption = Annotated[bool, typer.Option("--create", help="Create the dataset if missing")]


def _file_options(
    *,
    schema: str | None,
    create: bool,
    crs: str | None,
    mode: str,
    skip_invalid: bool,
    title: str | None,
    timezone: str,
    invalid_geometry: str = "reject",
    lon: str | None = None,
    lat: str | None = None,
    latlon: str | None = None,
    wkt: str | None = None,
    geojson_column: str | None = None,
    no_geometry: bool = False,
) -> Any:
    from territoire_data.catalog.datasets import DatasetMeta
    from territoire_data.catalog.loader import MODES, ImportOptions, load_schema_file
    from territoire_data.errors import BadRequestError
    from territoire_data.ingest.csv.geometry import GeometrySpec

    if mode not in MODES:
        raise BadRequestError(f"--mode must be one of {', '.join(MODES)}")
    if invalid_geometry not in ("repair", "reject"):
        raise BadRequestError("--invalid-geometry must be repair or reject")
    spec: GeometrySpec | None = None
    if lon or lat:
        if not (lon and lat):
            raise BadRequestError("give both --lon and --lat")
        spec = GeometrySpec("lonlat", (lon, lat))
    elif latlon:
        spec = GeometrySpec("latlon", (latlon,))
    elif wkt:
        spec = GeometrySpec("wkt", (wkt,))
    elif geojson_column:
        spec = GeometrySpec("geojson", (geojson_column,))
    return ImportOptions(
        mode=mode,  # type: ignore[arg-type]
        create=create,
        schema=load_schema_file(schema) if schema else None,
        meta=DatasetMeta(title=title),
        crs=crs,
        geometry=spec,
        detect_geometry=not no_geometry,
        invalid_geometry=invalid_geometry,  # type: ignore[arg-type]
        skip_invalid=skip_invalid,
        timezone=timezone,
    )


def _run_file_import(settings: Settings, factory: Callable[[], Any], slug: str, options: Any) -> None:
    from territoire_data.catalog.loader import ImportFailedError, import_with_settings

    try:
        report = asyncio.run(import_with_settings(settings, factory, slug, options))
    except ImportFailedError as exc:
        typer.echo(dump_json(exc.report))
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(dump_json(report))


@ingest_app.command("csv")
@clear_errors
def ingest_csv(
    file: Annotated[str, typer.Argument(help="CSV file (any of ; , tab | separators, UTF-8 or cp1252)")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset slug")],
    schema: SchemaOption = None,
    create: CreateOption = False,
    crs: CrsOption = None,
    mode: ModeOption = "append",
    skip_invalid: SkipOption = False,
    title: TitleOption = None,
    timezone: TimezoneOption = "Europe/Paris",
    lon: Annotated[str | None, typer.Option(help="Longitude (or X) column")] = None,
    lat: Annotated[str | None, typer.Option(help="Latitude (or Y) column")] = None,
    latlon: Annotated[str | None, typer.Option(help="One 'lat,lon' column (geo_point_2d)")] = None,
    wkt: Annotated[str | None, typer.Option(help="A WKT geometry column")] = None,
    geojson_column: Annotated[str | None, typer.Option("--geojson-column", help="A GeoJSON column")] = None,
    no_geometry: Annotated[bool, typer.Option("--no-geometry", help="Do not look for geometry columns")] = False,
    delimiter: Annotated[str | None, typer.Option(help="Force the separator")] = None,
    encoding: Annotated[str | None, typer.Option(help="Force the encoding")] = None,
) -> None:
    """Load a CSV file into a dataset: validated, geolocated, all-or-nothing unless --skip-invalid."""
    from territoire_data.catalog.sources import CsvSource

    settings = settings_for_command()
    options = _file_options(
        schema=schema,
        create=create,
        crs=crs,
        mode=mode,
        skip_invalid=skip_invalid,
        title=title,
        timezone=timezone,
        lon=lon,
        lat=lat,
        latlon=latlon,
        wkt=wkt,
        geojson_column=geojson_column,
        no_geometry=no_geometry,
    )
    _run_file_import(settings, lambda: CsvSource(file, delimiter=delimiter, encoding=encoding), dataset, options)


@ingest_app.command("geojson")
@clear_errors
def ingest_geojson(
    file: Annotated[str, typer.Argument(help="GeoJSON FeatureCollection or newline-delimited GeoJSON")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset slug")],
    schema: SchemaOption = None,
    create: CreateOption = False,
    crs: CrsOption = None,
    mode: ModeOption = "append",
    skip_invalid: SkipOption = False,
    title: TitleOption = None,
    timezone: TimezoneOption = "Europe/Paris",
    invalid_geometry: Annotated[
        str, typer.Option(help="reject: refuse invalid geometries with a reason; repair: ST_MakeValid")
    ] = "reject",
) -> None:
    """Load a GeoJSON file into a dataset, with the same validation, report and all-or-nothing rule as CSV."""
    from territoire_data.ingest.geojson import GeoJsonSource

    settings = settings_for_command()
    options = _file_options(
        schema=schema,
        create=create,
        crs=crs,
        mode=mode,
        skip_invalid=skip_invalid,
        title=title,
        timezone=timezone,
        invalid_geometry=invalid_geometry,
    )
    _run_file_import(settings, lambda: GeoJsonSource(file), dataset, options)


@ingest_app.command("run")
@clear_errors
def ingest_run(
    connector: Annotated[str, typer.Argument(help="A file connector definition, e.g. connectors/irve-statique.yaml")],
    path: Annotated[str | None, typer.Option(help="Load this file or folder instead of the connector's source")] = None,
) -> None:
    """Run a recurring file source: import each file of its folder not yet loaded unchanged."""
    from territoire_data.ingest.file_connector import run_connector, summary

    settings = settings_for_command()
    results = asyncio.run(run_connector(settings, connector, override=path))
    typer.echo(summary(results))
    if any(r.get("status") == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
@clear_errors
def openapi(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write to this file")] = None,
) -> None:
    """Print the OpenAPI document of the API (what openapi/openapi.json holds)."""
    from territoire_data.api.openapi_doc import openapi_document

    text = openapi_document()
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def main() -> None:
    app()


def dump_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


if __name__ == "__main__":
    main()
