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
datasets_app = typer.Typer(
    help="Manage the catalog: list, show, create, update, delete datasets.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")

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
        typer.echo(f"{item.slug}\t{item.access}\t{item.title}{flag}")
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


def main() -> None:
    app()


def dump_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


if __name__ == "__main__":
    main()
