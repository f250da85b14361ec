"""OpenID Connect: a Bearer JWT from the city's identity provider (Keycloak or any OIDC issuer) is a principal.

The token's signature is checked against the issuer's public keys (JWKS), then `iss`, `aud`, `exp`, `nbf` and `iat`
(with a small leeway). Only public-key algorithms are accepted (RS*, PS*, ES*): never `none`, never HMAC, so the
issuer's public key can never serve as a shared secret. The JWKS comes from `TERRITOIRE_OIDC_JWKS_FILE`, or from
`TERRITOIRE_OIDC_JWKS_URL`, or from the `jwks_uri` of the issuer's discovery document; it is fetched lazily in a
worker thread (bounded timeouts, the event loop never waits on the network), kept for a TTL, fetched again when a
token names a key id it does not hold (key rotation), at most once per `_REFETCH_INTERVAL_S`, so made-up key ids
cannot turn us into a load generator against the IdP.

Roles come from a claim (dotted path, Keycloak's `realm_access.roles` by default): IdP role names map to ours through
`TERRITOIRE_OIDC_ROLE_MAP` (the highest wins; none mapped: a reader without grants, who sees what anyone sees).
Dataset grants are roles in the same claim, `dataset:<slug>:read` and `dataset:<slug>:write` (the prefix is a
setting), so a Keycloak admin grants a dataset by assigning a role or a group, with no custom mapper.

Tokens are never logged, nor kept: the principal of a token is cached under the token's SHA-256 for a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.auth.keys import KEY_PREFIX, resolve
from territoire_data.auth.policy import Principal
from territoire_data.db.tables import dataset
from territoire_data.errors import InvalidTokenError, ServiceUnavailableError
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*$")
_MAX_TOKEN = 16 * 1024
_MAX_DOCUMENT = 1024 * 1024
_REFETCH_INTERVAL_S = 5.0
_PRINCIPAL_CACHE_S = 10.0
_RANK = {"reader": 1, "publisher": 2, "admin": 3}
# Keycloak marks its ID and refresh tokens with a `typ` claim; only access tokens open the API.
_NOT_ACCESS_TOKENS = {"ID", "Refresh", "Offline"}


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts (a JWS compact serialization): what goes to OIDC instead of the API keys."""
    return len(token) <= _MAX_TOKEN and _JWT_SHAPE.match(token) is not None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _get_json(url: str, timeout: float) -> Any:
    """GET a small JSON document (runs in a worker thread)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
        body = response.read(_MAX_DOCUMENT + 1)
    if len(body) > _MAX_DOCUMENT:
        raise ValueError(f"{url} answered more than {_MAX_DOCUMENT} bytes")
    return json.loads(body)


class JwksCache:
    """The issuer's signing keys by key id, loaded lazily and refreshed on a TTL or an unknown key id."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = (settings.oidc_issuer or "").rstrip("/")
        self.jwks_url = settings.oidc_jwks_url
        self.jwks_file = settings.oidc_jwks_file
        self.ttl = float(settings.oidc_jwks_cache_seconds)
        self.timeout = settings.oidc_http_timeout_seconds
        self.keys: dict[str, dict[str, Any]] = {}
        self.loaded_at = float("-inf")
        self.attempted_at = float("-inf")
        self.fetches = 0
        self.refetch_interval = _REFETCH_INTERVAL_S
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        # Parsed keys: building a PyJWK costs about as much as verifying a signature with it.
        self._prepared: dict[tuple[str, str], tuple[dict[str, Any], jwt.PyJWK]] = {}

    async def key(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK for `kid` (a token without kid: the only key, if there is just one), or None if unknown.

        A known key is served at once, even past the TTL (a refresh then runs in the background, so no request
        waits for the IdP); only an unknown key id makes the request wait for a fetch.
        """
        found = self._find(kid)
        if found is not None:
            now = time.monotonic()
            stale = now - self.loaded_at > self.ttl and now - self.attempted_at >= self.refetch_interval
            if stale and (self._background is None or self._background.done()):
                self._background = asyncio.create_task(self._refresh_quietly())
            return found
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if self._find(kid) is None:
                if time.monotonic() - self.attempted_at >= self.refetch_interval:
                    await self._refresh()
                elif not self.keys:
                    raise ServiceUnavailableError("the identity provider's signing keys could not be loaded")
        return self._find(kid)

    async def _refresh_quietly(self) -> None:
        async with self._lock:
            with contextlib.suppress(ServiceUnavailableError):  # logged; the keys we have stay in use
                await self._refresh()

    def prepared(self, jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
        """The JWK as a PyJWK bound to `alg` (raises PyJWTError when the key does not fit the algorithm)."""
        cache_key = (str(jwk.get("kid", "")), alg)
        entry = self._prepared.get(cache_key)
        if entry is None or entry[0] is not jwk:  # the entry holds its JWK, so `is` cannot match a newer one
            entry = self._prepared[cache_key] = (jwk, jwt.PyJWK(jwk, algorithm=alg))
        return entry[1]

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return self.keys.get(kid)
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None

    async def _refresh(self) -> None:
        self.attempted_at = time.monotonic()
        try:
            document = await asyncio.to_thread(self._load)
            keys = {
                str(jwk.get("kid", "")): jwk
                for jwk in document.get("keys", [])
                if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig" and jwk.get("kty") in ("RSA", "EC")
            }
        except (OSError, ValueError, AttributeError) as exc:
            if self.keys:  # keep serving with the keys we have; the IdP may be restarting
                logger.warning("OIDC: could not refresh the issuer's keys (%s); keeping the previous ones", exc)
                return
            logger.error("OIDC: could not load the issuer's keys: %s", exc)
            raise ServiceUnavailableError("the identity provider's signing keys could not be loaded") from None
        self.keys = keys
        self._prepared = {}
        self.loaded_at = time.monotonic()
        self.fetches += 1
        logger.info("OIDC: %d signing keys loaded (%s)", len(keys), ", ".join(sorted(keys)) or "none")

    def _load(self) -> dict[str, Any]:
        """The JWKS document, from the file, the configured URL or the issuer's discovery (in a worker thread)."""
        if self.jwks_file:
            document = json.loads(Path(self.jwks_file).read_text(encoding="utf-8"))
        else:
            url = self.jwks_url or self._discover()
            document = _get_json(url, self.timeout)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("the JWKS is not a JSON object with a `keys` list")
        return document

    def _discover(self) -> str:
        discovery = _get_json(f"{self.issuer}/.well-known/openid-configuration", self.timeout)
        if not isinstance(discovery, dict) or not isinstance(discovery.get("jwks_uri"), str):
            raise ValueError("the issuer's discovery document has no jwks_uri")
        # OpenID Connect Discovery 1.0 §4.3: the document's issuer must be the one we asked.
        if str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
            raise ValueError(f"the discovery document names another issuer: {discovery.get('issuer')!r}")
        self.jwks_url = discovery["jwks_uri"]
        return self.jwks_url


@dataclass(frozen=True)
class Identity:
    """What a verified token says: who (subject, username), which role, which datasets by slug."""

    subject: str
    username: str | None
    role: str
    read_slugs: frozenset[str]
    write_slugs: frozenset[str]


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`, `resource_access.territoire-data.roles`), else None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class OidcVerifier:
    """Verifies Bearer JWTs of one issuer and turns them into principals."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_audience, "settings validation requires both"
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.algorithms = list(settings.oidc_algorithms)
        self.leeway = settings.oidc_leeway_seconds
        self.roles_claim = settings.oidc_roles_claim
        self.role_map = dict(settings.oidc_role_map)
        self.dataset_prefix = settings.oidc_dataset_role_prefix
        self.jwks = JwksCache(settings)
        self._principals: dict[str, tuple[float, Principal]] = {}

    async def principal(self, token: str, db: AsyncEngine | asyncpg.Connection) -> Principal:
        """The principal of a valid token; InvalidTokenError (401) for anything else, with the reason.

        `db` resolves granted slugs to dataset ids: the app's engine (a connection only on a cache miss), or the
        plain asyncpg connection of the SensorThings MQTT bridge.
        """
        digest = token_digest(token)
        now = time.monotonic()
        cached = self._principals.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        claims = await self.verify(token)
        identity = self.identity(claims)
        principal = await self._principal(identity, db)
        # Never past the token's own expiry: an expired token must not live on in the cache.
        lifetime = min(_PRINCIPAL_CACHE_S, float(claims["exp"]) - time.time())
        if lifetime > 0:
            if len(self._principals) > 10_000:
                self._principals.clear()
            self._principals[digest] = (now + lifetime, principal)
        return principal

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature, issuer, audience and times are all valid."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise InvalidTokenError("malformed bearer token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidTokenError(f"token algorithm {str(alg)[:20]!r} is not accepted ({', '.join(self.algorithms)})")
        kid = header.get("kid")
        jwk = await self.jwks.key(kid if isinstance(kid, str) else None)
        if jwk is None:
            raise InvalidTokenError("token signed with a key the identity provider does not publish")
        if jwk.get("alg") not in (None, alg):
            raise InvalidTokenError("token algorithm does not match its key")
        try:
            key = self.jwks.prepared(jwk, alg)
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("token not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError(f"token audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("token issuer is not the configured identity provider") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("token signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidTokenError(f"invalid token ({type(exc).__name__})") from None
        if claims.get("typ") in _NOT_ACCESS_TOKENS:
            raise InvalidTokenError(f"a {claims['typ']} token is not an access token")
        return claims

    def identity(self, claims: dict[str, Any]) -> Identity:
        """Role and dataset grants from the roles claim (see the module docstring for the convention)."""
        roles = claim_at(claims, self.roles_claim)
        names = [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []
        mapped = [self.role_map[name] for name in names if name in self.role_map]
        role = max(mapped, key=_RANK.__getitem__, default="reader")
        read: set[str] = set()
        write: set[str] = set()
        for name in names:
            if not name.startswith(self.dataset_prefix):
                continue
            slug, _, permission = name[len(self.dataset_prefix) :].rpartition(":")
            if slug and permission in ("read", "write"):
                read.add(slug)  # a write grant includes reading, as with API keys
                if permission == "write":
                    write.add(slug)
        username = claims.get("preferred_username")
        return Identity(
            subject=str(claims["sub"]),
            username=str(username) if username else None,
            role=role,
            read_slugs=frozenset(read),
            write_slugs=frozenset(write),
        )

    async def _principal(self, identity: Identity, db: AsyncEngine | asyncpg.Connection) -> Principal:
        ids: dict[str, int] = {}
        slugs = sorted(identity.read_slugs)
        if not slugs:
            pass
        elif isinstance(db, AsyncEngine):
            async with db.connect() as conn:
                rows = await conn.execute(select(dataset.c.slug, dataset.c.id).where(dataset.c.slug.in_(slugs)))
                ids = {row.slug: int(row.id) for row in rows}
        else:
            records = await db.fetch("SELECT slug, id FROM dataset WHERE slug = ANY($1::text[])", slugs)
            ids = {record["slug"]: int(record["id"]) for record in records}
        # The name is the audit trail's actor: the username people recognise, and the `sub` that stays stable
        # when a username changes (every write path records `principal.name`).
        name = f"oidc:{identity.username} [{identity.subject}]" if identity.username else f"oidc:{identity.subject}"
        return Principal(
            name=name[:300],
            role=identity.role,
            readable=frozenset(ids[s] for s in identity.read_slugs if s in ids),
            writable=frozenset(ids[s] for s in identity.write_slugs if s in ids),
            subject=identity.subject,
        )


def is_oidc_token(token: str, oidc: OidcVerifier | None) -> bool:
    """Does this Bearer value go to the identity provider (a JWT, OIDC configured) rather than to the key table?"""
    return oidc is not None and not token.startswith(KEY_PREFIX) and looks_like_jwt(token)


async def principal_of(token: str, conn: asyncpg.Connection, oidc: OidcVerifier | None) -> Principal | None:
    """The principal of an API key or access token, for doors without FastAPI (the SensorThings MQTT bridge).

    None for an unknown, revoked or expired key; an invalid access token raises InvalidTokenError with its reason.
    """
    if oidc is not None and is_oidc_token(token, oidc):
        return await oidc.principal(token, conn)
    return await resolve(conn, token)
