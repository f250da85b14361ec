"""The `territoire-data` command: migrate, serve, ingest, datasets, keys, simulate, demo, openapi."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
import typer.core

from territoire_data.errors import TerritoireError
from territoire_data.logging_setup import configure_logging, configure_logging_from_env, report_unknown_variables
from territoire_data.settings import Settings, load_settings

logger = logging.getLogger(__name__)

_display_type_rich = typer.core.TyperOption.display_type_rich


def _flag_without_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """`--create`, `--help`: a flag takes no value, so --help shows no `<bool>` after it (typer 0.29 does)."""
    return None if self.is_flag else _display_type_rich(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_without_type  # type: ignore[method-assign]

app = typer.Typer(
    name="territoire-data",
    help="Self-hosted urban data platform: ingest, store and serve a territory's data through open standards.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ingest_app = typer.Typer(help="Load data: files (CSV, GeoJSON) and MQTT streams.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
datasets_app = typer.Typer(
    help="Manage the catalog: list, show, create, update, delete datasets.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")
rejections_app = typer.Typer(
    help="Rejected messages and rows: list, summary, show, replay after a fix.", no_args_is_help=True
)
app.add_typer(rejections_app, name="rejections")
indicators_app = typer.Typer(
    help="Steering indicators: load indicators/*.yaml, compute (dirty periods, or --full), list.",
    no_args_is_help=True,
)
app.add_typer(indicators_app, name="indicators")

F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(func: F) -> F:
    """Turn expected failures into one line on stderr and a non-zero exit, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TerritoireError as exc:
            missing = exc.extra.get("missing")
            if isinstance(missing, list) and missing:  # a refused publication: one line per field to fill
                typer.echo("error: the dataset cannot be published yet; fill in:", err=True)
                for item in missing:
                    typer.echo(f"  - {item['message']}", err=True)
            else:
                typer.echo(f"error: {exc.detail}", err=True)
            raise typer.Exit(2) from None
        except (OSError, ConnectionError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def settings_for_command(*, request_ids: bool = False) -> Settings:
    settings = load_settings()
    configure_logging(settings, request_ids=request_ids)
    report_unknown_variables()
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


GRACEFUL_SHUTDOWN_SECONDS = 6


@app.command()
@clear_errors
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help="Worker processes; 0 (the default): half the cores this process may use, at least one "
            "(PostgreSQL usually runs on the same machine and needs the other half)",
        ),
    ] = 0,
    health_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="With several workers: replace a worker whose event loop has not answered the supervisor's "
            "health ping for this many seconds",
        ),
    ] = 20.0,
) -> None:
    """Run the HTTP API and the portal."""
    from territoire_data.api import serving

    settings = settings_for_command(request_ids=True)  # fail fast, with one clear line, before forking workers
    serving.run(
        "territoire_data.api.main:app_factory",
        host=host,
        port=port,
        workers=workers or serving.default_workers(),
        health_timeout=health_timeout,
        log_config=None,
        log_level=settings.log_level.lower(),
        # X-Forwarded-For is the app's to believe, from TERRITOIRE_TRUSTED_PROXIES only (uvicorn's own default
        # would trust any local client's).
        proxy_headers=False,
        server_header=False,
        # SIGTERM: requests in progress get this long to finish (keep-alive connections close at once), so a
        # stop or a systemd restart ends within 10 s even with a slow export streaming.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


@app.command("sta-mqtt")
@clear_errors
def sta_mqtt(
    client_id: Annotated[
        str | None,
        typer.Option(
            help="MQTT client id; default territoire-sta-<host>. It names a persistent session: creates published "
            "while the bridge restarts wait at the broker. One per replica."
        ),
    ] = None,
    topic_prefix: Annotated[str, typer.Option(help="Prefix of every topic (tests, a shared broker)", hidden=True)] = "",
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port")] = None,
) -> None:
    """Run the SensorThings MQTT bridge: publish created and changed entities, create published Observations."""
    import signal
    import socket

    from territoire_data.sensorthings.mqtt import StaMqttBridge

    settings = settings_for_command()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bridge = StaMqttBridge(
            settings,
            topic_prefix=topic_prefix,
            client_id=client_id or f"territoire-sta-{socket.gethostname()}"[:64],
        )
        if metrics_port:
            bridge.metrics.serve(metrics_port)
            logger.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
        await bridge.run(stop)
        logger.info(
            "SensorThings MQTT bridge stopped: %d created, %d acknowledged", bridge.created, bridge.acknowledged
        )

    asyncio.run(run())


def run_interruptible(work: Any) -> Any:
    """Run a coroutine; SIGTERM (or SIGINT) cancels it, so its open transaction rolls back and nothing
    half-written stays, then the command exits with 143 (128 + SIGTERM) saying so."""
    import signal

    async def runner() -> Any:
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await task

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        typer.echo("interrupted: the file being imported was rolled back; run again to load it", err=True)
        raise typer.Exit(143) from None


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
    from territoire_data.errors import BadRequestError
    from territoire_data.ingest.files.geometry import GeometrySpec
    from territoire_data.ingest.files.loader import MODES, ImportOptions, load_schema_file

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
    from territoire_data.ingest.files.loader import ImportFailedError, import_with_settings

    try:
        report = run_interruptible(import_with_settings(settings, factory, slug, options))
    except ImportFailedError as exc:
        typer.echo(dump_json(exc.report))
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(dump_json(report))
    if report.get("dataset_status") == "draft":
        # Said on stderr so the JSON on stdout stays parseable: a draft is seen by nobody but its publishers.
        typer.echo(f"dataset {slug} is a draft: `territoire-data datasets publish {slug}` once described", err=True)
        for item in report.get("metadata_missing") or []:
            typer.echo(f"  - {item['message']}", err=True)


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
    from territoire_data.ingest.files.sources import CsvSource

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
    from territoire_data.ingest.files.geojson import GeoJsonSource

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
    from territoire_data.ingest.files.connector import run_connector, summary

    settings = settings_for_command()
    results = run_interruptible(run_connector(settings, connector, override=path))
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


def run_with_connection(settings: Settings, work: Callable[[Any], Any], *, write: bool = False) -> Any:
    """Run `work(conn)` on one connection (in a transaction when writing) and return its result."""
    from territoire_data.db.engine import create_engine

    async def runner() -> Any:
        engine = create_engine(settings, pool_size=1, application_name="cli")
        try:
            if write:
                async with engine.begin() as conn:
                    return await work(conn)
            async with engine.connect() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(runner())


ngsi_ld_app = typer.Typer(help="NGSI-LD: @contexts kept for offline use.", no_args_is_help=True)
app.add_typer(ngsi_ld_app, name="ngsi-ld")


@ngsi_ld_app.command("context-add")
@clear_errors
def ngsi_ld_context_add(
    url: Annotated[str, typer.Argument(help="the URL clients name the context by (Link header, @context)")],
    file: Annotated[Path, typer.Argument(help="a local copy of the document", exists=True, dir_okay=False)],
) -> None:
    """Keep a copy of a remote @context under its URL, so NGSI-LD requests naming it work offline."""
    import json

    import asyncpg

    from territoire_data.ngsi_ld.contexts import store_context

    settings = settings_for_command()
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise typer.BadParameter(f"{file} is not JSON: {exc}") from None

    async def run() -> str:
        conn = await asyncpg.connect(settings.asyncpg_dsn)
        try:
            return await store_context(conn, url, document, "Cached")
        finally:
            await conn.close()

    typer.echo(f"stored {url} as {asyncio.run(run())}")


@keys_app.command("create")
@clear_errors
def keys_create(
    role: Annotated[str, typer.Option(help="admin, publisher or reader")],
    name: Annotated[str, typer.Option(help="Who or what uses the key")],
    grant: Annotated[list[str] | None, typer.Option(help="DATASET:read or DATASET:write (repeatable)")] = None,
    expires: Annotated[str | None, typer.Option(help="Expiry, ISO 8601 (e.g. 2027-06-30)")] = None,
) -> None:
    """Create an API key; the key is printed once and stored only as a hash."""
    from datetime import datetime

    from territoire_data.auth import keys
    from territoire_data.auth.audit import record
    from territoire_data.errors import ValidationFailedError

    settings = settings_for_command()
    grants = []
    for item in grant or []:
        slug, sep, permission = item.rpartition(":")
        if not sep:
            raise ValidationFailedError(f"--grant {item!r}: expected DATASET:read or DATASET:write")
        grants.append((slug, permission))
    expires_at = datetime.fromisoformat(expires).astimezone() if expires else None

    async def work(conn: Any) -> Any:
        new = await keys.create_key(conn, name=name, role=role, expires_at=expires_at, grants=grants)
        await record(conn, "cli", "key.create", "api_key", new.id, details={"prefix": new.prefix, "role": role})
        return new

    new = run_with_connection(settings, work, write=True)
    typer.echo(f"created key {new.id} (prefix {new.prefix}, role {role}); it is shown only now:", err=True)
    typer.echo(new.key)


@keys_app.command("list")
@clear_errors
def keys_list() -> None:
    """List keys (prefix, role, grants, state); secrets are never shown."""
    from territoire_data.auth import keys

    settings = settings_for_command()
    rows = run_with_connection(settings, keys.list_keys)
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        grants = ",".join(row["grants"]) or "-"
        typer.echo(f"{row['id']}\t{row['prefix']}\t{row['role']}\t{state}\t{row['name']}\t{grants}")


@keys_app.command("revoke")
@clear_errors
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or prefix")]) -> None:
    """Revoke a key (it stops working at once in this process, within seconds in the API)."""
    from territoire_data.auth import keys
    from territoire_data.auth.audit import record

    settings = settings_for_command()

    async def work(conn: Any) -> int:
        key_id = await keys.revoke_key(conn, key)
        await record(conn, "cli", "key.revoke", "api_key", key_id)
        return key_id

    typer.echo(f"revoked key {run_with_connection(settings, work, write=True)}")


@ingest_app.command("mqtt")
@clear_errors
def ingest_mqtt(
    connector: Annotated[str, typer.Argument(help="Connector definition, e.g. connectors/chirpstack-v4.yaml")],
    client_id: Annotated[
        str | None, typer.Option(help="MQTT client id (stable: it names the persistent session); one per worker")
    ] = None,
    shared_group: Annotated[
        str | None, typer.Option(help="Share the subscription with other workers of this group ($share/GROUP/...)")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port")] = None,
) -> None:
    """Run a long-lived MQTT ingest worker for one connector (stops cleanly on SIGTERM)."""
    from territoire_data.ingest.mqtt.config import load_connector
    from territoire_data.ingest.mqtt.worker import run_until_signalled

    settings = settings_for_command()
    config = load_connector(connector)
    if shared_group:
        config = config.model_copy(update={"shared_group": shared_group})
    asyncio.run(run_until_signalled(settings, config, client_id=client_id, metrics_port=metrics_port))


@app.command()
@clear_errors
def simulate(
    rate: Annotated[float, typer.Option(min=0.01, help="Messages per second, all devices together")] = 5.0,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds")] = None,
    count: Annotated[int | None, typer.Option(min=0, help="Stop after this many messages")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same devices and values)")] = 44,
    prefix: Annotated[str, typer.Option(help="Prefix every topic with this (e.g. for a test)")] = "",
    mqtt_url: Annotated[
        str, typer.Option(envvar="TERRITOIRE_MQTT_URL", help="Broker (default: TERRITOIRE_MQTT_URL)")
    ] = "mqtt://127.0.0.1:1883",
    ca_file: Annotated[
        str | None, typer.Option(envvar="TERRITOIRE_MQTT_CA_FILE", help="CA of the broker's TLS certificate")
    ] = None,
    cert_file: Annotated[
        str | None, typer.Option(envvar="TERRITOIRE_MQTT_CERT_FILE", help="Client certificate (TLS)")
    ] = None,
    key_file: Annotated[str | None, typer.Option(envvar="TERRITOIRE_MQTT_KEY_FILE", help="Its private key")] = None,
) -> None:
    """Publish demo sensor traffic for Nantes (ChirpStack, TTN and SenML) until stopped, --duration or --count."""
    from territoire_data.ingest.mqtt.simulate import demo_devices, run_simulation

    configure_logging_from_env()
    report_unknown_variables()
    logger.info("simulating %d devices at %g msg/s (Ctrl-C to stop)", len(demo_devices()), rate)
    published = run_simulation(
        mqtt_url,
        rate=rate,
        duration=duration,
        count=count,
        seed=seed,
        prefix=prefix,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )
    logger.info("%d messages published", published)


# --- datasets: thin commands over territoire_data.catalog.admin ------------------------------------------

KeywordOpt = Annotated[list[str] | None, typer.Option("--keyword", "-k", help="Keyword (repeat)")]
ThemeOpt = Annotated[list[str] | None, typer.Option("--theme", help="EU data-theme code, e.g. TRAN (repeat)")]
LicenceOpt = Annotated[str | None, typer.Option(help="etalab-2.0, odbl-1.0, cc-by-4.0 or cc-by-sa-4.0")]
FrequencyOpt = Annotated[str | None, typer.Option("--frequency", help="EU frequency code, e.g. DAILY, UPDATE_CONT")]
TextOpt = Annotated[str | None, typer.Option()]


def _metadata_options(**values: Any) -> dict[str, Any]:
    """Map CLI option names to dataset fields."""
    values["keywords"] = values.pop("keyword") or None
    values["themes"] = values.pop("theme") or None
    values["update_frequency"] = values.pop("frequency")
    return values


@datasets_app.command("list")
@clear_errors
def datasets_list(
    q: Annotated[str | None, typer.Option("--search", "-q", help="Full-text search")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List datasets (restricted ones included), with their metadata warnings."""
    from territoire_data.catalog import admin, store

    items, total = asyncio.run(
        admin.list_datasets(settings_for_command(), store.SearchQuery(q=q, limit=limit, offset=offset))
    )
    if as_json:
        typer.echo(dump_json({"total": total, "items": [i.model_dump(mode="json") for i in items]}))
        return
    for item in items:
        warnings = getattr(item, "quality_warnings", [])
        flag = f"  ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
        typer.echo(f"{item.slug}\t{item.status}\t{item.access}\t{item.title}{flag}")
    typer.echo(f"{len(items)} of {total} dataset(s)", err=True)


@datasets_app.command("show")
@clear_errors
def datasets_show(slug: str) -> None:
    """Print a dataset's metadata as JSON, with its quality warnings."""
    from territoire_data.catalog import admin

    typer.echo(dump_json(asyncio.run(admin.show_dataset(settings_for_command(), slug)).model_dump(mode="json")))


@datasets_app.command("create")
@clear_errors
def datasets_create(
    slug: Annotated[str, typer.Argument(help="Permanent id in URLs: lower case, digits, hyphens")],
    title: Annotated[str, typer.Option(help="Title")],
    description: TextOpt = None,
    keyword: KeywordOpt = None,
    theme: ThemeOpt = None,
    licence: LicenceOpt = None,
    publisher: TextOpt = None,
    contact_name: TextOpt = None,
    contact_email: TextOpt = None,
    access: Annotated[str, typer.Option(help="public or restricted")] = "public",
    frequency: FrequencyOpt = None,
    kind: Annotated[str, typer.Option(help="table or sensors")] = "table",
    conforms_to: Annotated[str | None, typer.Option(help="URL of the Table Schema it follows")] = None,
    spatial_coverage: Annotated[str | None, typer.Option(help="Name of the area covered")] = None,
) -> None:
    """Create a dataset; prints it, with its quality warnings."""
    from territoire_data.catalog import admin

    values = _metadata_options(**{k: v for k, v in locals().items() if k != "admin"})
    data = admin.parse_create(values)
    created = asyncio.run(admin.create_dataset(settings_for_command(), data))
    typer.echo(dump_json(created.model_dump(mode="json")))


@datasets_app.command("update")
@clear_errors
def datasets_update(
    slug: str,
    title: TextOpt = None,
    description: TextOpt = None,
    keyword: KeywordOpt = None,
    theme: ThemeOpt = None,
    licence: LicenceOpt = None,
    publisher: TextOpt = None,
    contact_name: TextOpt = None,
    contact_email: TextOpt = None,
    access: Annotated[str | None, typer.Option(help="public or restricted")] = None,
    frequency: FrequencyOpt = None,
    conforms_to: TextOpt = None,
    spatial_coverage: TextOpt = None,
    clear: Annotated[list[str] | None, typer.Option(help="Field to empty, e.g. --clear licence (repeat)")] = None,
) -> None:
    """Change some metadata of a dataset (only the options given)."""
    from territoire_data.catalog import admin

    values = _metadata_options(**{k: v for k, v in locals().items() if k not in ("admin", "slug", "clear")})
    data = admin.parse_update(values, clear or [])
    updated = asyncio.run(admin.update_dataset(settings_for_command(), slug, data))
    typer.echo(dump_json(updated.model_dump(mode="json")))


@datasets_app.command("publish")
@clear_errors
def datasets_publish(slug: str) -> None:
    """Publish a draft: it appears in the portal, the APIs and DCAT (refused, with what is missing, when its
    metadata is incomplete)."""
    from territoire_data.catalog import admin

    published = asyncio.run(admin.publish_dataset(settings_for_command(), slug))
    typer.echo(f"published {slug}: {published.title}")


@datasets_app.command("unpublish")
@clear_errors
def datasets_unpublish(slug: str) -> None:
    """Make a dataset a draft again: hidden from the public on every door, still seen by its publishers."""
    from territoire_data.catalog import admin

    asyncio.run(admin.unpublish_dataset(settings_for_command(), slug))
    typer.echo(f"unpublished {slug}: it is a draft again")


@datasets_app.command("delete")
@clear_errors
def datasets_delete(
    slug: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Delete a dataset and its data table."""
    from territoire_data.catalog import admin

    if not yes:
        typer.confirm(f"Delete dataset {slug!r} and all its data?", abort=True)
    asyncio.run(admin.delete_dataset(settings_for_command(), slug))
    typer.echo(f"deleted {slug}")


@app.command()
@clear_errors
def demo(
    history_hours: Annotated[int, typer.Option(min=0, max=24 * 31, help="Hours of sensor history to create")] = 24,
) -> None:
    """Load the demo territory: real open datasets and a day of history for 40 sensors in Nantes (rerunnable)."""
    from territoire_data.db.migrate import current_revision, head_revision
    from territoire_data.demo import load_demo
    from territoire_data.errors import ConfigurationError

    settings = settings_for_command()
    revision = run_with_connection(settings, current_revision)
    if revision != head_revision(settings):
        raise ConfigurationError("the database schema is not up to date: run `territoire-data migrate` first")
    report = asyncio.run(load_demo(settings, history_hours=history_hours))
    for item in report.datasets:
        status = item.get("status", "loaded")
        rows = item.get("rows_inserted")
        typer.echo(f"dataset {item.get('dataset')}: {status}" + (f" ({rows} rows)" if rows is not None else ""))
    typer.echo(f"sensors: {report.sensor_messages} messages of history decoded, {report.observations} new observations")
    for item in report.indicators:
        typer.echo(
            f"indicator {item.get('indicator', item['file'])}: {item['status']}"
            + (f" ({item['error']})" if item.get("error") else "")
        )


def _with_raw(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Run `work(conn)` on one asyncpg connection (the indicators package keeps its own transactions)."""
    from territoire_data.db.raw import connect_raw

    async def runner() -> Any:
        conn = await connect_raw(settings, application_name="indicators")
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(runner())


@indicators_app.command("load")
@clear_errors
def indicators_load(
    folder: Annotated[Path | None, typer.Argument(help="Folder of *.yaml definitions (default: indicators/)")] = None,
) -> None:
    """Load the indicator definitions of a folder (new and changed ones; broken ones are reported), then compute."""
    from territoire_data.indicators.compute import process_dirty
    from territoire_data.indicators.files import load_folder
    from territoire_data.paths import shipped

    settings = settings_for_command()
    where = folder or shipped("indicators")

    async def work(conn: Any) -> tuple[list[dict[str, Any]], Any]:
        reports = await load_folder(conn, where)
        return reports, await process_dirty(conn)

    reports, computed = _with_raw(settings, work)
    for item in reports:
        typer.echo(f"{item['file']}: {item['status']}" + (f" ({item['error']})" if item.get("error") else ""))
    for done in computed.computed:
        typer.echo(f"computed {done.indicator}: {done.written} values in {done.seconds * 1000:.0f} ms")
    if any(item["status"] == "error" for item in reports):
        raise typer.Exit(2)


@indicators_app.command("compute")
@clear_errors
def indicators_compute(
    full: Annotated[bool, typer.Option("--full", help="Recompute every period of every indicator")] = False,
    slug: Annotated[list[str] | None, typer.Option("--slug", help="Only these indicators (with --full)")] = None,
) -> None:
    """Compute the periods marked dirty by new data (or everything with --full); prints what was done."""
    from territoire_data.indicators.compute import compute_all

    settings = settings_for_command()

    async def work(conn: Any) -> Any:
        return await compute_all(conn, full=full, slugs=slug or None)

    report = _with_raw(settings, work)
    for done in report.computed:
        scope = "all periods" if done.full else f"{done.periods} period(s)"
        line = f"{done.indicator}: {scope}, {done.written} values, {done.removed} removed, {done.seconds * 1000:.0f} ms"
        typer.echo(line if done.error is None else f"{done.indicator}: error: {done.error}")
    if any(done.error for done in report.computed):
        raise typer.Exit(2)


@indicators_app.command("list")
@clear_errors
def indicators_list() -> None:
    """Declared indicators with when they were last computed."""
    from territoire_data.indicators import store
    from territoire_data.indicators.compute import SYSTEM

    settings = settings_for_command()

    async def work(conn: Any) -> Any:
        return await store.list_visible(conn, SYSTEM)

    for row in _with_raw(settings, work):
        state = row.compute_error or (row.computed_at.isoformat() if row.computed_at else "never computed")
        typer.echo(f"{row.slug}\t{row.definition.period}\t{row.origin}\t{state}")


# --- operations: rejections, maintenance, status -----------------------------------------------------------

ConnectorOpt = Annotated[str | None, typer.Option("--connector", "-c", help="Connector (source) name")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", "-r", help="Reason code, e.g. unknown_device")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="At or after: ISO 8601 date/time, or 2h, 3d")]


def _since(value: str | None) -> Any:
    """`2026-12-01T08:00`, `2026-12-01`, or a duration back from now (`90m`, `6h`, `7d`)."""
    from datetime import UTC, datetime, timedelta

    from territoire_data.errors import BadRequestError

    if value is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequestError(f"--since {value!r}: expected an ISO 8601 date/time or a duration like 6h") from None
    return moment if moment.tzinfo else moment.astimezone()


def _rejection_filter(connector: str | None, reason: str | None, since: str | None, import_id: int | None) -> Any:
    from territoire_data.ops.rejections import RejectionFilter

    return RejectionFilter(connector=connector, reason=reason, since=_since(since), import_id=import_id)


@rejections_app.command("list")
@clear_errors
def rejections_list(
    connector: ConnectorOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    import_id: Annotated[int | None, typer.Option("--import", help="Rows of this file import")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List rejections, newest first."""
    from territoire_data.ops import rejections

    which = _rejection_filter(connector, reason, since, import_id)

    async def work(conn: Any) -> Any:
        return await rejections.list_rejections(conn, which, limit=limit)

    rows = run_raw(settings_for_command(), work)
    if as_json:
        typer.echo(dump_json(rows))
        return
    for row in rows:
        where = row["topic"] or (f"{row['file']}:{row['line']}" if row["file"] else "")
        replayed = "  [replayed]" if row["replayed_at"] else ""
        typer.echo(
            f"{row['id']}\t{row['at']:%Y-%m-%d %H:%M:%S}\t{row['connector']}\t{row['reason']}\t{where}{replayed}"
        )
    typer.echo(f"{len(rows)} rejection(s)", err=True)


@rejections_app.command("summary")
@clear_errors
def rejections_summary(connector: ConnectorOpt = None, reason: ReasonOpt = None, since: SinceOpt = None) -> None:
    """Count rejections by connector and reason."""
    from territoire_data.ops import rejections

    which = _rejection_filter(connector, reason, since, None)

    async def work(conn: Any) -> Any:
        return await rejections.summarize(conn, which)

    for row in run_raw(settings_for_command(), work):
        typer.echo(
            f"{row['connector']}\t{row['reason']}\t{row['count']} ({row['not_replayed']} not replayed)\t"
            f"{row['first']:%Y-%m-%d %H:%M} .. {row['last']:%Y-%m-%d %H:%M}"
        )


@rejections_app.command("show")
@clear_errors
def rejections_show(rejection_id: Annotated[int, typer.Argument(help="Rejection id")]) -> None:
    """Print one rejection with its stored payload, as JSON."""
    from territoire_data.errors import NotFoundError
    from territoire_data.ops import rejections

    async def work(conn: Any) -> Any:
        return await rejections.get_rejection(conn, rejection_id)

    found = run_raw(settings_for_command(), work)
    if found is None:
        raise NotFoundError(f"no rejection {rejection_id}")
    typer.echo(dump_json(found))


@rejections_app.command("replay")
@clear_errors
def rejections_replay(
    connector: Annotated[str, typer.Option("--connector", "-c", help="The MQTT connector whose rejections to replay")],
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    definition: Annotated[
        str | None, typer.Option(help="Its definition (default: connectors/<connector>.yaml, as shipped)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would pass, store nothing")] = False,
) -> None:
    """Decode a connector's rejected messages again with its current definition; store what now passes, once."""
    from pathlib import Path

    from territoire_data.errors import NotFoundError
    from territoire_data.ingest.mqtt.config import load_connector
    from territoire_data.ingest.replay import replay
    from territoire_data.paths import shipped

    settings = settings_for_command()
    path = Path(definition) if definition else None
    if path is None:
        for candidate in (Path("connectors") / f"{connector}.yaml", shipped("connectors") / f"{connector}.yaml"):
            if candidate.is_file():
                path = candidate
                break
    if path is None:
        raise NotFoundError(f"no definition for connector {connector!r}: give --definition FILE")
    config = load_connector(str(path))
    if config.name != connector:
        raise NotFoundError(f"{path} defines connector {config.name!r}, not {connector!r}")
    report = run_interruptible(replay(settings, config, reason=reason, since=_since(since), dry_run=dry_run))
    typer.echo(dump_json(report.as_dict()))


def run_raw(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Run `work(conn)` on one plain asyncpg connection."""
    from territoire_data.db.raw import connect_raw

    async def runner() -> Any:
        conn = await connect_raw(settings, application_name="cli")
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(runner())


@app.command()
@clear_errors
def maintain(
    step: Annotated[list[str] | None, typer.Option("--step", help="Run only this step (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done")] = False,
    list_steps: Annotated[bool, typer.Option("--list", help="List the steps and exit")] = False,
) -> None:
    """Periodic upkeep (daily): observation partitions ahead, purge of old rejections, and registered steps."""
    from territoire_data.errors import BadRequestError
    from territoire_data.ops import maintain as upkeep

    if list_steps:
        for item in upkeep.steps():
            typer.echo(f"{item.name}\t{item.description}")
        return
    settings = settings_for_command()
    try:
        report = asyncio.run(upkeep.run_steps(settings, only=step, dry_run=dry_run))
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    for line in report:
        typer.echo(line)


@app.command()
@clear_errors
def status(
    run_dir: Annotated[str, typer.Option(help="Where the pid files are (scripts/quickstart: .run)")] = ".run",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """One screen for the person on call: processes, broker, database, newest data, last import and rejections, disk."""
    from pathlib import Path

    from territoire_data.ops import status as on_call

    settings = settings_for_command()
    report = asyncio.run(on_call.collect(settings, Path(run_dir)))
    typer.echo(dump_json(report) if as_json else on_call.render(report))
    if report["database"]["status"] != "ok" or report["broker"]["status"] != "ok":
        raise typer.Exit(1)


def main() -> None:
    app()


def dump_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode()


if __name__ == "__main__":
    main()
