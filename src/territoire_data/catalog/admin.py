"""What `territoire-data datasets …` does: the catalog's operations for an operator with database access.

The operator holds the database credentials, so these act as admin (restricted datasets included), like the
API with the admin token; every change is audited with the actor `cli`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import Principal
from territoire_data.catalog import publishing, store
from territoire_data.catalog.metadata import DatasetCreate, DatasetPublic, DatasetUpdate, dataset_public
from territoire_data.db.engine import create_engine
from territoire_data.errors import ValidationFailedError
from territoire_data.settings import Settings

T = TypeVar("T")
ACTOR = "cli"
# Whoever runs the CLI has the database in hand: it acts as an admin, recorded as "cli" in the audit trail.
ADMIN = Principal(name="cli", role="admin")


def validation_message(exc: ValidationError) -> str:
    """One line naming the first bad field, for the terminal."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "input"
    return f"{where}: {first['msg']}"


def parse_create(values: dict[str, Any]) -> DatasetCreate:
    try:
        return DatasetCreate(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ValidationFailedError(validation_message(exc)) from None


def parse_update(values: dict[str, Any], clear: list[str]) -> DatasetUpdate:
    payload = {k: v for k, v in values.items() if v is not None}
    for name in clear:
        if name not in DatasetUpdate.model_fields:
            raise ValidationFailedError(f"cannot clear {name!r}: not a dataset field")
        payload[name] = None
    if not payload:
        raise ValidationFailedError("nothing to change: give at least one option")
    try:
        return DatasetUpdate(**payload)
    except ValidationError as exc:
        raise ValidationFailedError(validation_message(exc)) from None


async def _with_connection(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = create_engine(settings, pool_size=1, application_name="cli")
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def list_datasets(settings: Settings, query: store.SearchQuery) -> tuple[list[DatasetPublic], int]:
    async def work(conn: AsyncConnection) -> tuple[list[DatasetPublic], int]:
        result = await store.search_datasets(conn, ADMIN, query)
        return [dataset_public(r, settings.base_url, publisher_view=True) for r in result.rows], result.total

    return await _with_connection(settings, work)


async def show_dataset(settings: Settings, slug: str) -> DatasetPublic:
    async def work(conn: AsyncConnection) -> DatasetPublic:
        return dataset_public(await store.get_dataset(conn, ADMIN, slug), settings.base_url, publisher_view=True)

    return await _with_connection(settings, work)


async def create_dataset(settings: Settings, data: DatasetCreate) -> DatasetPublic:
    async def work(conn: AsyncConnection) -> DatasetPublic:
        await store.create_dataset(conn, data, actor=ACTOR)
        return dataset_public(await store.get_dataset(conn, ADMIN, data.slug), settings.base_url, publisher_view=True)

    return await _with_connection(settings, work)


async def update_dataset(settings: Settings, slug: str, data: DatasetUpdate) -> DatasetPublic:
    async def work(conn: AsyncConnection) -> DatasetPublic:
        await store.update_dataset(conn, slug, data, actor=ACTOR)
        return dataset_public(await store.get_dataset(conn, ADMIN, slug), settings.base_url, publisher_view=True)

    return await _with_connection(settings, work)


async def delete_dataset(settings: Settings, slug: str) -> None:
    async def work(conn: AsyncConnection) -> None:
        await store.delete_dataset(conn, slug, actor=ACTOR)

    await _with_connection(settings, work)


def publishing_defaults(settings: Settings) -> publishing.Defaults:
    """The defaults publication fills in: TERRITOIRE_DEFAULT_LICENCE and TERRITOIRE_CATALOG_PUBLISHER."""
    return publishing.Defaults(licence=settings.default_licence, publisher=settings.catalog_publisher or None)


async def publish_dataset(settings: Settings, slug: str) -> DatasetPublic:
    async def work(conn: AsyncConnection) -> DatasetPublic:
        await publishing.publish(conn, slug, actor=ACTOR, defaults=publishing_defaults(settings))
        return dataset_public(await store.get_dataset(conn, ADMIN, slug), settings.base_url, publisher_view=True)

    return await _with_connection(settings, work)


async def unpublish_dataset(settings: Settings, slug: str) -> DatasetPublic:
    async def work(conn: AsyncConnection) -> DatasetPublic:
        await publishing.unpublish(conn, slug, actor=ACTOR)
        return dataset_public(await store.get_dataset(conn, ADMIN, slug), settings.base_url, publisher_view=True)

    return await _with_connection(settings, work)
