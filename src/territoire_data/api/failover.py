"""Requests that meet a database failover are answered late rather than wrong: run again once a primary is back.

While Patroni promotes a standby (a few seconds), a request's connection may be cut or find no host accepting
writes. The error handlers answer such a failure with a 503 and mark the request (`FAILOVER_MARK`); this
middleware, innermost, holds the response back, waits a little and runs the request again, until it succeeds or
`TERRITOIRE_DB_FAILOVER_WAIT_SECONDS` have passed (then the 503, with Retry-After, goes out).

What is run again: safe and idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE: HTTP says sending them twice
does what sending them once does); POST and PATCH only when the failure came from opening a connection, so none
of their statements reached a server. A response already started (a streamed export) cannot be taken back.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from territoire_data.db.failover import backoff, is_failover_error

logger = logging.getLogger(__name__)

FAILOVER_MARK = "territoire.failover"  # scope key set by the error handlers: "any" (connect) or "idempotent"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def mark_failover(scope: Scope, exc: BaseException, *, connect: bool) -> None:
    """Say on the request that it failed on a failover (`connect`: before anything reached a server)."""
    scope[FAILOVER_MARK] = "any" if connect else "idempotent"


def _retryable(scope: Scope, method: str) -> bool:
    mark = scope.get(FAILOVER_MARK)
    return mark == "any" or (mark == "idempotent" and method in IDEMPOTENT)


class FailoverRetryMiddleware:
    """Runs a request again while it fails on a database failover (see the module's docstring)."""

    def __init__(self, app: ASGIApp, wait_seconds: float, max_body: int) -> None:
        self.app = app
        self.wait_seconds = wait_seconds
        self.max_body = max_body  # larger bodies (uploads) stream through, never held for a replay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.wait_seconds <= 0 or not self._replayable(scope):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        deadline = time.monotonic() + self.wait_seconds
        attempt = 0

        while True:
            scope.pop(FAILOVER_MARK, None)  # the same scope each time: what the router notes there is seen outside
            guard = _Guard(scope, method, send)
            try:
                await self.app(guard.scope, _Replay(body, receive), guard.send)
            except Exception as exc:
                if guard.started or guard.held or method not in IDEMPOTENT or not is_failover_error(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
            else:
                if not guard.held:
                    return
                if time.monotonic() >= deadline:
                    for message in guard.held:
                        await send(message)
                    return
            if attempt == 0:
                logger.warning("%s %s met a database failover; running it again", method, scope.get("path"))
            await asyncio.sleep(min(backoff(attempt), max(0.0, deadline - time.monotonic())))
            attempt += 1

    def _replayable(self, scope: Scope) -> bool:
        """A request whose body is small enough to keep for a replay (a known length within the body limit)."""
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return True
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                return value.isdigit() and int(value) <= self.max_body
        return False


class _Guard:
    """One attempt's view of the response: a retryable 503 is held back, anything else goes to the client."""

    def __init__(self, scope: Scope, method: str, send: Send) -> None:
        self.scope = scope
        self.method = method
        self.downstream = send
        self.held: list[Message] = []
        self.started = False

    async def send(self, message: Message) -> None:
        if not self.started and (self.held or message["type"] == "http.response.start"):
            if self.held or (message["status"] == 503 and _retryable(self.scope, self.method)):
                self.held.append(message)
                return
            self.started = True
        await self.downstream(message)


class _Replay:
    """The request's body once, then the client's own messages (a disconnect), as a streaming response waits."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is None:
            return await self.receive()
        body, self.body = self.body, None
        return {"type": "http.request", "body": body, "more_body": False}


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (its length is bounded by the caller), or None if the client disconnected."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
