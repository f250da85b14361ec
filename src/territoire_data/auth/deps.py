"""FastAPI dependencies: who is calling (API key as Bearer or X-API-Key, or an OpenID Connect token), role checks."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import Depends, Request

from territoire_data.auth.keys import resolve
from territoire_data.auth.oidc import OidcVerifier, is_oidc_token
from territoire_data.auth.policy import ANONYMOUS, Principal, can_write
from territoire_data.errors import ForbiddenError, UnauthorizedError


def key_from_authorization(authorization: str | None) -> str | None:
    """The API key in an Authorization header: `Bearer <key>`, or HTTP Basic with the key as password (what
    clients such as FROST's can send); a header of another form is an error, not anonymity."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            password = ""
        if password:
            return password
    raise UnauthorizedError(
        "Authorization must be `Bearer <API key or access token>` (or Basic with the key as password)"
    )


def _presented_key(request: Request) -> str | None:
    return key_from_authorization(request.headers.get("authorization")) or request.headers.get("x-api-key") or None


async def get_principal(request: Request) -> Principal:
    """Anonymous without a key; 401 for a key that is unknown, revoked or expired (never silently anonymous).

    A JWT goes to the OpenID Connect verifier when one is configured (TERRITOIRE_OIDC_ISSUER); `td_` keys always
    go to the key table.
    """
    key = _presented_key(request)
    if key is None:
        return ANONYMOUS
    oidc: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    principal: Principal | None
    if oidc is not None and is_oidc_token(key, oidc):
        principal = await oidc.principal(key, request.app.state.engine)
    else:
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


def check_publisher(principal: Principal) -> Principal:
    """Admins and publishers; whether a publisher may write a given dataset is `policy.can_write`'s call."""
    if principal.role is None:
        raise UnauthorizedError("writing needs a publisher or admin API key (Authorization: Bearer <key>)")
    if principal.role not in ("admin", "publisher"):
        raise ForbiddenError("this needs a publisher or admin key")
    return principal


def check_dataset_write(principal: Principal, dataset_id: int | None) -> None:
    """A publisher writes only the datasets it was granted; admins write everything."""
    check_publisher(principal)
    if not can_write(principal, dataset_id):
        raise ForbiddenError("this key may not write this dataset (ask an admin for a write grant)")


async def require_publisher(principal: PrincipalDep) -> Principal:
    return check_publisher(principal)


AdminDep = Annotated[Principal, Depends(require_admin)]
PublisherDep = Annotated[Principal, Depends(require_publisher)]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
