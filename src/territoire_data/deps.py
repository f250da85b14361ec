"""FastAPI dependency aliases shared by every door (the app factory puts the objects on app.state)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
ConnDep = Annotated[AsyncConnection, Depends(get_connection)]
