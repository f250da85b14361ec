"""FastAPI dependency aliases shared by every door (the app factory puts the objects on app.state)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from territoire_data.db.readpool import pooled
from territoire_data.db.replicas import ReplicaRouter
from territoire_data.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def keyed(request: Request) -> bool:
    """Whether the request carries credentials (a key or a token): it reads from the primary, so that what its
    caller just wrote is there (read-your-writes); anonymous reads may go to a standby (db.replicas)."""
    headers = request.headers
    return bool(headers.get("authorization", "").strip() or headers.get("x-api-key", "").strip())


def get_replicas(request: Request) -> ReplicaRouter:
    replicas: ReplicaRouter = request.app.state.replicas
    return replicas


async def get_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for the request, read-only work in one transaction: on a standby for an anonymous
    GET when one is configured and close enough behind (db.replicas), else on the primary."""
    engine: AsyncEngine = request.app.state.engine
    if request.method in ("GET", "HEAD"):
        replicas = get_replicas(request)
        if replicas.route(keyed=keyed(request)) == "replica" and replicas.engine is not None:
            engine = replicas.engine
    async with engine.connect() as conn:
        yield conn


def standby_pool(request: Request) -> asyncpg.Pool | None:
    """The standby's pool when this request reads from it (an anonymous GET, db.replicas), else None."""
    if request.method not in ("GET", "HEAD"):
        return None
    return get_replicas(request).standby_pool(keyed=keyed(request))


@asynccontextmanager
async def read_connection(request: Request, *, generic_plans: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the read pool for the request: the standby's for an anonymous GET when one is in use."""
    state = request.app.state
    standby = standby_pool(request)
    async with pooled(state.engine, state.settings, generic_plans=generic_plans, pool=standby) as conn:
        yield conn


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
ConnDep = Annotated[AsyncConnection, Depends(get_connection)]
