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


@app.command("sta-mqtt")
@clear_errors
def sta_mqtt() -> None:
    """Run the SensorThings MQTT bridge: publish stored Observations, create those published to v1.1/..."""
    import signal

    from territoire_data.sensorthings.mqtt import StaMqttBridge

    settings = settings_for_command()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await StaMqttBridge(settings).run(stop)

    asyncio.run(run())


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
