"""API keys: random, shown once, stored only as a SHA-256 hash, recognisable by a public prefix, revocable.

A key looks like `td_<prefix>_<secret>`; the prefix (8 characters) is stored in clear to find and show the key,
the whole key only as a hash. Keys carry 256 bits of randomness, so a fast hash is the right tool (as for
GitHub or Stripe tokens): there is nothing for a slow password hash to protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import and_, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import Principal
from territoire_data.db.tables import api_key, api_key_grant, dataset
from territoire_data.errors import NotFoundError, ValidationFailedError

ROLES = ("admin", "publisher", "reader")
KEY_PREFIX = "td_"
_CACHE_TTL_S = 10.0


@dataclass(frozen=True)
class NewKey:
    id: int
    prefix: str
    key: str  # shown once, never stored


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new (key, prefix) pair."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


def _split(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    prefix, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    return prefix if sep and len(prefix) == 8 and secret else None


async def create_key(
    conn: AsyncConnection,
    *,
    name: str,
    role: str,
    expires_at: datetime | None = None,
    grants: list[tuple[str, str]] | None = None,
) -> NewKey:
    """Create a key with grants [(dataset slug, 'read'|'write')]; returns the clear key once."""
    if role not in ROLES:
        raise ValidationFailedError(f"role must be one of {', '.join(ROLES)}")
    if not name.strip():
        raise ValidationFailedError("a key needs a name saying who or what uses it")
    key, prefix = generate_key()
    key_id = await conn.scalar(
        insert(api_key)
        .values(prefix=prefix, key_hash=hash_key(key), name=name.strip(), role=role, expires_at=expires_at)
        .returning(api_key.c.id)
    )
    assert key_id is not None
    for slug, permission in grants or []:
        await grant(conn, int(key_id), slug, permission)
    return NewKey(id=int(key_id), prefix=prefix, key=key)


async def grant(conn: AsyncConnection, key_id: int, slug: str, permission: str) -> None:
    if permission not in ("read", "write"):
        raise ValidationFailedError("permission must be read or write")
    dataset_id = await conn.scalar(select(dataset.c.id).where(dataset.c.slug == slug))
    if dataset_id is None:
        raise NotFoundError(f"no dataset {slug!r}")
    await conn.execute(
        text(
            "INSERT INTO api_key_grant (api_key_id, dataset_id, permission) VALUES (:k, :d, :p) ON CONFLICT DO NOTHING"
        ),
        {"k": key_id, "d": dataset_id, "p": permission},
    )


async def grant_to_key(conn: AsyncConnection, key_id: int, dataset_id: int, permission: str) -> None:
    """Grant by dataset id, and forget cached principals so the grant applies at once in this process."""
    await conn.execute(
        text(
            "INSERT INTO api_key_grant (api_key_id, dataset_id, permission) VALUES (:k, :d, :p) ON CONFLICT DO NOTHING"
        ),
        {"k": key_id, "d": dataset_id, "p": permission},
    )
    _cache.clear()


async def revoke_grant(conn: AsyncConnection, key_id: int, slug: str, permission: str) -> None:
    dataset_id = await conn.scalar(select(dataset.c.id).where(dataset.c.slug == slug))
    await conn.execute(
        delete(api_key_grant).where(
            and_(
                api_key_grant.c.api_key_id == key_id,
                api_key_grant.c.dataset_id == dataset_id,
                api_key_grant.c.permission == permission,
            )
        )
    )


async def list_keys(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every key without its secret, with its grants as 'slug:permission'."""
    rows = (
        await conn.execute(
            text(
                "SELECT k.id, k.prefix, k.name, k.role, k.created_at, k.expires_at, k.revoked_at, k.last_used_at, "
                "coalesce(array_agg(d.slug || ':' || g.permission ORDER BY d.slug, g.permission) "
                "FILTER (WHERE g.api_key_id IS NOT NULL), '{}') AS grants "
                "FROM api_key k LEFT JOIN api_key_grant g ON g.api_key_id = k.id "
                "LEFT JOIN dataset d ON d.id = g.dataset_id GROUP BY k.id ORDER BY k.id"
            )
        )
    ).mappings()
    return [dict(row) for row in rows]


async def revoke_key(conn: AsyncConnection, key_id_or_prefix: str) -> int:
    """Revoke a key by id or prefix; returns its id."""
    # A prefix is 8 hex digits and may be all digits: it wins over an id of the same spelling.
    condition = api_key.c.prefix == key_id_or_prefix
    if key_id_or_prefix.isdigit() and len(key_id_or_prefix) < 18:
        exists = await conn.scalar(select(api_key.c.id).where(api_key.c.prefix == key_id_or_prefix))
        if exists is None:
            condition = api_key.c.id == int(key_id_or_prefix)
    key_id = await conn.scalar(
        update(api_key).where(condition).values(revoked_at=text("coalesce(revoked_at, now())")).returning(api_key.c.id)
    )
    if key_id is None:
        raise NotFoundError(f"no key {key_id_or_prefix!r}")
    _cache.clear()
    return int(key_id)


_cache: dict[str, tuple[float, Principal | None]] = {}


async def resolve(conn: AsyncConnection | asyncpg.Connection, key: str) -> Principal | None:
    """The principal of a valid key; None for an unknown, malformed, revoked or expired one.

    Results are cached for a few seconds per process so a key check costs no query on hot paths; a revocation
    made elsewhere takes effect within that time. Works on a pooled SQLAlchemy connection or a plain asyncpg one.
    """
    digest = hash_key(key)
    cached = _cache.get(digest)
    now = time.monotonic()
    if cached and cached[0] > now:
        return cached[1]
    if isinstance(conn, AsyncConnection):
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        principal = await _lookup(raw, key, digest)
    else:
        principal = await _lookup(conn, key, digest)
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[digest] = (now + _CACHE_TTL_S, principal)
    return principal


async def _lookup(conn: asyncpg.Connection, key: str, digest: str) -> Principal | None:
    prefix = _split(key)
    if prefix is None:
        return None
    row = await conn.fetchrow(
        "SELECT id, key_hash, role FROM api_key WHERE prefix = $1 AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now())",
        prefix,
    )
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    await conn.execute(
        "UPDATE api_key SET last_used_at = now() WHERE id = $1 "
        "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        row["id"],
    )
    return await _principal(conn, int(row["id"]), prefix, row["role"])


async def _principal(conn: asyncpg.Connection, key_id: int, prefix: str, role: str) -> Principal:
    grants = await conn.fetch("SELECT dataset_id, permission FROM api_key_grant WHERE api_key_id = $1", key_id)
    return Principal(
        name=f"key:{prefix}",
        role=role,
        key_id=key_id,
        readable=frozenset(g["dataset_id"] for g in grants),
        writable=frozenset(g["dataset_id"] for g in grants if g["permission"] == "write"),
    )


async def principal_for_key_id(conn: asyncpg.Connection, key_id: int) -> Principal | None:
    """The principal of key `key_id` while it is valid (a back-office session signed in with it follows it: a
    revoked or expired key ends the session), with its grants as they are now."""
    row = await conn.fetchrow(
        "SELECT prefix, role FROM api_key WHERE id = $1 AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now())",
        key_id,
    )
    return None if row is None else await _principal(conn, key_id, row["prefix"], row["role"])


async def key_id_of_prefix(conn: AsyncConnection, prefix: str) -> int | None:
    """The id of the live key whose prefix (what `keys list` shows) is `prefix`; None when there is none."""
    found = await conn.scalar(
        select(api_key.c.id).where(and_(api_key.c.prefix == prefix.strip(), api_key.c.revoked_at.is_(None)))
    )
    return None if found is None else int(found)
