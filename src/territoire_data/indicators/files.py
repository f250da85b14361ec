"""`indicators/*.yaml`: declared indicators kept with the platform's configuration, loaded like connectors.

`territoire-data indicators load` (and the demo) reads every file of the folder: a file's name is its indicator's
slug; a new or changed definition is checked and saved (and marked for computation), an unchanged one is left
alone, a broken one is reported with its reasons and loads nothing, without stopping the others.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import yaml

from territoire_data.errors import TerritoireError, ValidationFailedError
from territoire_data.indicators import store
from territoire_data.indicators.compute import SYSTEM
from territoire_data.indicators.model import parse_definition

logger = logging.getLogger(__name__)


async def load_folder(conn: asyncpg.Connection, folder: Path) -> list[dict[str, Any]]:
    """Load every `*.yaml` of `folder`; one report per file (status loaded / unchanged / error)."""
    reports: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):  # noqa: ASYNC240 - a handful of small local files
        try:
            async with conn.transaction():
                reports.append(await _load_file(conn, path))
        except TerritoireError as exc:
            logger.warning("indicator file %s not loaded: %s", path.name, exc.detail)
            reports.append({"file": path.name, "status": "error", "error": exc.detail, **exc.extra})
    return reports


async def _load_file(conn: asyncpg.Connection, path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # noqa: ASYNC240 - a small local file
    except yaml.YAMLError as exc:
        raise ValidationFailedError(f"{path.name}: not YAML: {str(exc).splitlines()[0]}") from None
    definition = parse_definition(data, origin=path.name)
    if definition.slug != path.stem:
        raise ValidationFailedError(f"{path.name}: the file must be named after its slug ({definition.slug}.yaml)")
    existing_id = await conn.fetchval("SELECT id FROM indicator WHERE slug = $1", definition.slug)
    existing = await store.by_id(conn, existing_id) if existing_id else None
    if existing is not None:
        if existing.origin != "file":
            raise ValidationFailedError(f"{path.name}: indicator {definition.slug!r} was declared through the API")
        same = orjson.dumps(existing.definition.model_dump(mode="json")) == orjson.dumps(
            definition.model_dump(mode="json")
        )
        if same:
            return {"file": path.name, "indicator": definition.slug, "status": "unchanged"}
    await store.save(conn, SYSTEM, definition, origin="file", existing=existing)
    return {"file": path.name, "indicator": definition.slug, "status": "loaded" if existing is None else "updated"}
