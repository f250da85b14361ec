"""Temporary write rule until API keys exist (issue 8): the bearer of TERRITOIRE_ADMIN_TOKEN is an admin.

Unset token: nobody may write. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from territoire_data.auth.policy import ANONYMOUS, Principal

ADMIN_TOKEN_PRINCIPAL = Principal(name="admin-token", role="admin")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if that is what was sent."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def principal_for(admin_token: SecretStr | None, authorization: str | None) -> Principal:
    """Admin when the header carries the configured token, anonymous otherwise."""
    token = bearer_token(authorization)
    if admin_token is None or token is None:
        return ANONYMOUS
    expected = admin_token.get_secret_value()
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return ADMIN_TOKEN_PRINCIPAL
    return ANONYMOUS
