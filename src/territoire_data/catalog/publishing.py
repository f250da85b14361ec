"""The publishing workflow: a dataset is a draft until published, and published only with the metadata
data.gouv.fr needs.

One module decides (the CLI, the API, the back-office and the connectors with `publish: auto` all call it):
- `missing_metadata` lists what keeps a dataset from being published, in French, one entry per field;
- `publish` fills the platform's defaults (TERRITOIRE_DEFAULT_LICENCE, TERRITOIRE_CATALOG_PUBLISHER) into empty
  fields, then refuses with that list or marks the dataset published; `unpublish` makes it a draft again.
A draft is invisible to the public on every door: the access policy (auth.policy) reads dataset.status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.catalog.metadata import Missing, missing_metadata
from territoire_data.catalog.store import audit_dataset
from territoire_data.errors import NotFoundError, ValidationFailedError

logger = logging.getLogger(__name__)

Status = Literal["draft", "published"]
STATUSES: tuple[Status, ...] = ("draft", "published")
__all__ = ["Defaults", "Missing", "PublicationRefusedError", "missing_metadata", "publish", "unpublish"]


@dataclass(frozen=True)
class Defaults:
    """What the platform fills into an empty field at publication (settings, passed in)."""

    licence: str | None = None
    publisher: str | None = None


class PublicationRefusedError(ValidationFailedError):
    """The dataset lacks metadata harvesters need; `missing` lists each field."""

    title = "Publication refused"
    type_slug = "publication-refused"


_ROW = "SELECT id, slug, title, description, licence, publisher, update_frequency, themes, status FROM dataset"


async def _locked_row(conn: AsyncConnection, slug: str) -> dict[str, Any]:
    row = (await conn.execute(text(f"{_ROW} WHERE slug = :slug FOR UPDATE"), {"slug": slug})).mappings().first()
    if row is None:
        raise NotFoundError(f"no dataset {slug!r}")
    return dict(row)


async def publish(conn: AsyncConnection, slug: str, *, actor: str, defaults: Defaults) -> list[str]:
    """Publish dataset `slug` (the caller checked it may, and commits): defaults fill its empty licence and
    producer, then it is published or refused with every missing field. Returns the fields the defaults filled."""
    row = await _locked_row(conn, slug)
    filled: list[str] = []
    if not row["licence"] and defaults.licence:
        row["licence"] = defaults.licence
        filled.append("licence")
    if not (row["publisher"] or "").strip() and defaults.publisher:
        row["publisher"] = defaults.publisher
        filled.append("publisher")
    missing = missing_metadata(row)
    if missing:
        raise PublicationRefusedError(
            f"dataset {slug!r} cannot be published yet: " + "; ".join(m.message for m in missing),
            missing=[m.as_dict() for m in missing],
        )
    await conn.execute(
        text(
            "UPDATE dataset SET licence = :licence, publisher = :publisher, status = 'published', "
            "published_at = CASE WHEN status = 'published' THEN published_at ELSE now() END, modified_at = now() "
            "WHERE id = :id"
        ),
        {"id": row["id"], "licence": row["licence"], "publisher": row["publisher"]},
    )
    await audit_dataset(conn, actor, "dataset.publish", slug, {"was": row["status"], "defaults": filled})
    logger.info("dataset %s published by %s", slug, actor)
    return filled


async def unpublish(conn: AsyncConnection, slug: str, *, actor: str) -> None:
    """Make dataset `slug` a draft again: from now on it answers 404 to the public on every door."""
    row = await _locked_row(conn, slug)
    await conn.execute(
        text("UPDATE dataset SET status = 'draft', modified_at = now() WHERE id = :id"), {"id": row["id"]}
    )
    await audit_dataset(conn, actor, "dataset.unpublish", slug, {"was": row["status"]})
    logger.info("dataset %s unpublished by %s", slug, actor)


def humanised_title(name: str) -> str:
    """A readable title from a file name or slug ("toilettes_publiques-2024.csv" -> "Toilettes publiques 2024"),
    for a dataset created by its first import without a title (the publisher is asked to improve it)."""
    stem = name.rsplit("/", 1)[-1]
    for suffix in (".csv", ".tsv", ".txt", ".geojson", ".json", ".geojsonl", ".ndjson", ".gz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    words = " ".join(stem.replace("_", " ").replace("-", " ").replace(".", " ").split())
    return (words[:1].upper() + words[1:])[:300] if words else name[:300]
