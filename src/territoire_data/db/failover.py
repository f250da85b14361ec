"""Telling a failover from a failure, and waiting one out.

When the primary dies or is switched over (Patroni), clients see their connections cut (an OSError, asyncpg's
`ConnectionDoesNotExistError`), the server shutting down (SQLSTATE 57P01-57P03), a node that refuses writes
because it is now a standby (25006), or no host matching `target_session_attrs` while the replica is being
promoted. None of these says anything about the request: the same work, sent again on a new connection, succeeds
once the new primary accepts writes. Callers decide whether resending is safe: an ingest batch always is (its
merge is idempotent), an HTTP read always is, an HTTP write only when nothing reached the server
(`is_connect_error`).

A commit is acknowledged to us only once it is durable by the server's rule: with Patroni's synchronous mode,
once the synchronous standby has it too. PostgreSQL has one way to break that: when the wait for the standby is
cancelled (statement timeout, a cancel request, the server stopping), COMMIT reports success with a WARNING that
the transaction "might not have been replicated". `CommitWatch` turns any WARNING received during a commit into a
`NotDurable` error, so the caller retries instead of acknowledging.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Connection exceptions (class 08), the server going away (57P01 admin shutdown, 57P02 crash shutdown, 57P03
# cannot connect now: starting, recovering or stopping), a standby refusing a write (25006).
FAILOVER_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})


class NotDurable(Exception):
    """COMMIT returned with a warning that the transaction may not be on the synchronous standby."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what SQLAlchemy wraps, and its causes (bounded: chains can loop)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, DBAPIError):
            todo.append(current.orig)
        todo += [current.__cause__, current.__context__]


def _is_failover_one(exc: BaseException) -> bool:
    if isinstance(exc, NotDurable | OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
        # InterfaceError: the connection was closed under us ("connection is closed", ConnectionDoesNotExistError)
        return True
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # seen on a pooled connection whose server died mid-exchange ("cannot switch to state 15; another
        # operation is in progress"): the connection is unusable, a new one is not
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (state in FAILOVER_SQLSTATES or state.startswith("08"))


def is_failover_error(exc: BaseException) -> bool:
    """Whether the error is the database going away or changing primary (worth the same work again later)."""
    return any(_is_failover_one(each) for each in _causes(exc))


def is_connect_error(exc: BaseException) -> bool:
    """Whether the error came from opening a connection, so no statement of the failed work reached a server."""
    for each in _causes(exc):
        if isinstance(each, ConnectionRefusedError | asyncpg.exceptions.TargetServerAttributeNotMatched):
            return True
        if isinstance(each, asyncpg.CannotConnectNowError):  # 57P03 is sent at connection start
            return True
        if isinstance(each, OSError) and "connect" in str(each).lower():
            return True
    return False


def backoff(attempt: int, *, first: float = 0.1, cap: float = 1.0) -> float:
    """Seconds to wait before attempt `attempt` (0-based), doubling from `first` up to `cap`, with jitter so that
    a fleet of clients does not hit the new primary in lockstep."""
    return float(min(cap, first * 2.0**attempt)) * (0.75 + random.random() / 2)  # noqa: S311 - jitter, not security


async def retry_on_failover(
    work: Callable[[], Awaitable[T]],
    *,
    wait_seconds: float,
    what: str = "database work",
    on_retry: Callable[[BaseException], Awaitable[None] | None] | None = None,
) -> T:
    """Run `work`, running it again while it fails on a failover, for at most `wait_seconds` in all."""
    deadline = time.monotonic() + wait_seconds
    attempt = 0
    while True:
        try:
            return await work()
        except Exception as exc:
            if not is_failover_error(exc) or time.monotonic() >= deadline:
                raise
            if attempt == 0:
                logger.warning("%s failed on a failover (%s: %s); retrying", what, type(exc).__name__, exc)
            if on_retry is not None:
                pending = on_retry(exc)
                if pending is not None:
                    await pending
            await asyncio.sleep(min(backoff(attempt), max(0.0, deadline - time.monotonic())))
            attempt += 1


class CommitWatch:
    """Watches a connection for WARNINGs sent while a commit is under way (see the module's docstring)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.warnings: list[str] = []
        self.armed = False
        connection.add_log_listener(self._listen)

    def _listen(self, _connection: object, message: asyncpg.PostgresLogMessage) -> None:
        if self.armed and getattr(message, "severity_en", None) == "WARNING":
            self.warnings.append(f"{message.sqlstate}: {message.message}")

    def arm(self) -> None:
        self.warnings.clear()
        self.armed = True

    async def check(self) -> None:
        """After the commit: raise NotDurable if the server warned while it ran."""
        await asyncio.sleep(0)  # log messages are dispatched with call_soon: let any pending one land
        self.armed = False
        if self.warnings:
            raise NotDurable("COMMIT warned, the batch may not be on the synchronous standby: " + self.warnings[0])
