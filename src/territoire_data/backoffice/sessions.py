"""Back-office sessions: who is signed in at /admin, kept in `web_session` (migration 0013_publish).

The cookie holds a random token; the table keeps only its SHA-256. A session signed in with an API key follows
the key (its grants as they are now; a revoked or expired key ends it). A session opened through OpenID Connect
keeps what the access token said (role, datasets granted by slug, the person's name), never the token itself.
Every form carries the session's CSRF token, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from territoire_data.auth.keys import principal_for_key_id
from territoire_data.auth.policy import Principal

COOKIE = "td_admin"
PENDING_COOKIE = "td_admin_login"  # an OpenID Connect sign-in under way
PENDING_LIFETIME = timedelta(minutes=10)


@dataclass(frozen=True)
class Session:
    """A signed-in person: their principal (as every door sees it) and the CSRF token of their forms."""

    id: int
    principal: Principal
    csrf_token: str


@dataclass(frozen=True)
class PendingLogin:
    """What an OpenID Connect sign-in keeps between leaving for the provider and coming back."""

    state: str
    verifier: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_matches(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf_token.encode(), str(sent).encode())


async def open_session(
    conn: asyncpg.Connection,
    principal: Principal,
    lifetime: timedelta,
    *,
    read_slugs: frozenset[str] = frozenset(),
    write_slugs: frozenset[str] = frozenset(),
) -> str:
    """A new session for `principal` (an API key's, or an OpenID Connect identity's with its granted slugs);
    returns the cookie's token. Expired sessions are swept on the way."""
    token = secrets.token_urlsafe(32)
    await conn.execute("DELETE FROM web_session WHERE expires_at < now()")
    await conn.execute(
        """INSERT INTO web_session (token_hash, csrf_token, api_key_id, subject, name, role, read_slugs, write_slugs,
               expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + $9::interval)""",
        _digest(token),
        secrets.token_urlsafe(32),
        principal.key_id,
        principal.subject,
        principal.name,
        principal.role,
        sorted(read_slugs),
        sorted(write_slugs),
        lifetime,
    )
    return token


async def session_of(conn: asyncpg.Connection, token: str | None) -> Session | None:
    """The live session of a cookie's token, its principal rebuilt now; None for anything else."""
    if not token or len(token) > 200:
        return None
    row = await conn.fetchrow(
        """UPDATE web_session SET last_seen_at = now() WHERE token_hash = $1 AND NOT pending AND expires_at > now()
           RETURNING id, csrf_token, api_key_id, subject, name, role, read_slugs, write_slugs""",
        _digest(token),
    )
    if row is None:
        return None
    if row["api_key_id"] is not None:
        principal = await principal_for_key_id(conn, int(row["api_key_id"]))
        if principal is None:  # the key was revoked or expired: so is the session
            await conn.execute("DELETE FROM web_session WHERE id = $1", row["id"])
            return None
    else:
        slugs = sorted(set(row["read_slugs"]) | set(row["write_slugs"]))
        ids = {r["slug"]: int(r["id"]) for r in await conn.fetch(_IDS, slugs)} if slugs else {}
        principal = Principal(
            name=row["name"],
            role=row["role"],
            readable=frozenset(ids[s] for s in row["read_slugs"] if s in ids),
            writable=frozenset(ids[s] for s in row["write_slugs"] if s in ids),
            subject=row["subject"],
        )
    return Session(int(row["id"]), principal, row["csrf_token"])


_IDS = "SELECT slug, id FROM dataset WHERE slug = ANY($1::text[])"


async def close_session(conn: asyncpg.Connection, token: str | None) -> None:
    if token:
        await conn.execute("DELETE FROM web_session WHERE token_hash = $1", _digest(token))


async def start_login(conn: asyncpg.Connection, login: PendingLogin) -> str:
    """Remember an OpenID Connect sign-in under way; returns the token of its (short-lived) cookie."""
    token = secrets.token_urlsafe(32)
    await conn.execute(
        """INSERT INTO web_session (token_hash, csrf_token, pending, name, oidc_state, oidc_verifier, expires_at)
           VALUES ($1, $2, true, 'connexion en cours', $3, $4, now() + $5::interval)""",
        _digest(token),
        secrets.token_urlsafe(16),
        login.state,
        login.verifier,
        PENDING_LIFETIME,
    )
    return token


async def finish_login(conn: asyncpg.Connection, token: str | None) -> PendingLogin | None:
    """The sign-in under way for this cookie, used once (deleted as it is read); None when there is none."""
    if not token or len(token) > 200:
        return None
    row = await conn.fetchrow(
        "DELETE FROM web_session WHERE token_hash = $1 AND pending AND expires_at > now() "
        "RETURNING oidc_state, oidc_verifier",
        _digest(token),
    )
    return None if row is None else PendingLogin(row["oidc_state"], row["oidc_verifier"])
