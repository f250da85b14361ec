"""FastAPI dependencies: who is calling (API key as Bearer or X-API-Key), and role checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from territoire_data.auth.keys import resolve
from territoire_data.auth.policy import ANONYMOUS, Principal
from territoire_data.errors import ForbiddenError, UnauthorizedError


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise UnauthorizedError("Authorization must be `Bearer <API key>`")
    return request.headers.get("x-api-key") or None


async def get_principal(request: Request) -> Principal:
    """Anonymous without a key; 401 for a key that is unknown, revoked or expired (never silently anonymous)."""
    key = _presented_key(request)
    if key is None:
        return ANONYMOUS
    async with request.app.state.engine.connect() as conn:
        principal = await resolve(conn, key)
    if principal is None:
        raise UnauthorizedError("unknown, revoked or expired API key")
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if principal.role is None:
        raise UnauthorizedError("an admin API key is required")
    if not principal.is_admin:
        raise ForbiddenError("this needs an admin key")
    return principal


async def require_publisher(principal: PrincipalDep) -> Principal:
    """Admins and publishers; whether a publisher may write a given dataset is `policy.can_write`'s call."""
    if principal.role is None:
        raise UnauthorizedError("a publisher API key is required")
    if principal.role not in ("admin", "publisher"):
        raise ForbiddenError("this needs a publisher or admin key")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
PublisherDep = Annotated[Principal, Depends(require_publisher)]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
