"""Signing in to the back-office through the city's OpenID Connect provider: authorization code + PKCE (RFC 7636).

The back-office is a public client (TERRITOIRE_OIDC_CLIENT_ID, no secret): it sends the person to the provider's
authorization endpoint with a random `state` and the S256 challenge of a random verifier, then exchanges the code
it gets back, with the verifier, at the token endpoint. The access token is verified like any Bearer token of the
API (auth.oidc: signature, issuer, audience, times) and turned into a session; it is never stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from territoire_data.errors import ServiceUnavailableError, UnauthorizedError

_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge): 43 characters of randomness and their hash, both base64url without padding."""
    verifier = secrets.token_urlsafe(48)[:64]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _fetch(request: urllib.request.Request, timeout: float) -> Any:
    if not request.full_url.startswith(("https://", "http://")):
        raise ValueError("only http(s) URLs")
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        return json.loads(response.read(_MAX_BYTES))


async def endpoints(issuer: str, wait_s: float) -> Endpoints:
    """The provider's authorization and token endpoints, from its discovery document."""
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        document = await asyncio.to_thread(_fetch, urllib.request.Request(url), wait_s)  # noqa: S310 - http(s) checked in _fetch
    except (OSError, ValueError) as exc:
        raise ServiceUnavailableError(f"the identity provider cannot be reached ({type(exc).__name__})") from None
    if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer:
        raise ServiceUnavailableError("the identity provider's discovery document names another issuer")
    authorization, token = document.get("authorization_endpoint"), document.get("token_endpoint")
    if not isinstance(authorization, str) or not isinstance(token, str):
        raise ServiceUnavailableError("the identity provider publishes no authorization or token endpoint")
    return Endpoints(authorization, token)


def authorization_url(endpoint: str, *, client_id: str, redirect_uri: str, state: str, challenge: str) -> str:
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


async def exchange_code(
    endpoint: str, *, code: str, verifier: str, client_id: str, redirect_uri: str, wait_s: float
) -> str:
    """The access token the provider gives for this code and verifier; 401 when it refuses."""
    body = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - http(s) checked in _fetch
        endpoint, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}, method="POST"
    )
    try:
        answer = await asyncio.to_thread(_fetch, request, wait_s)
    except urllib.error.HTTPError as exc:
        raise UnauthorizedError(f"the identity provider refused the sign-in (HTTP {exc.code})") from None
    except (OSError, ValueError) as exc:
        raise ServiceUnavailableError(f"the identity provider cannot be reached ({type(exc).__name__})") from None
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise UnauthorizedError("the identity provider gave no access token")
    return token
