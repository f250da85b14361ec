"""Hardening middleware: security headers, request body limits and rate limits (429 with Retry-After)."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from territoire_data.api.errors import problem
from territoire_data.querylimits import QueryLimits, use_limits

# No inline script or style anywhere: pages load their scripts from /static; maps draw in blob workers.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self'; connect-src 'self'; worker-src 'self' blob:; child-src blob:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def content_security_policy(extra_origins: tuple[str, ...] = ()) -> str:
    """The policy, opened to the origins of an opted-in basemap only (its style, tiles, sprites and glyphs are
    fetched by the map: connect-src; its sprite images: img-src). With the default basemap (none) it is the policy
    above, unchanged: nothing outside the platform."""
    if not extra_origins:
        return CONTENT_SECURITY_POLICY
    origins = " ".join(extra_origins)
    return CONTENT_SECURITY_POLICY.replace("connect-src 'self'", f"connect-src 'self' {origins}").replace(
        "img-src 'self'", f"img-src 'self' {origins}"
    )


SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"geolocation=(), camera=(), microphone=()"),
]


CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")
_VARY_CREDENTIALS = ("Authorization", "X-API-Key")


def carries_credentials(scope: Scope) -> bool:
    return any(name in CREDENTIAL_HEADERS and value.strip() for name, value in scope.get("headers", []))


class ResponseHeadersMiddleware:
    """The headers every response gets: the security headers (unless the app set its own), and the cache rules
    that keep what a key reads out of shared caches, on every door at once.

    A response to a request that carries credentials (Authorization, X-API-Key) is `private`: a proxy or CDN never
    stores it, so it cannot serve a restricted dataset to someone else (X-API-Key, unlike Authorization, does not
    stop a shared cache on its own). Cacheable responses also say `Vary: Authorization, X-API-Key`, so that an
    anonymous copy is not served to a key that sees more.
    """

    def __init__(self, app: ASGIApp, csp: str = CONTENT_SECURITY_POLICY) -> None:
        self.app = app
        self.security_headers = [
            (name, csp.encode() if name == b"content-security-policy" else value) for name, value in SECURITY_HEADERS
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        keyed = carries_credentials(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = _cache_headers(list(message.get("headers", [])), keyed)
                present = {name for name, _ in headers}
                headers.extend((name, value) for name, value in self.security_headers if name not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cache_headers(headers: list[tuple[bytes, bytes]], keyed: bool) -> list[tuple[bytes, bytes]]:
    control = next((v.decode("latin-1") for n, v in headers if n == b"cache-control"), None)
    cacheable = control is not None and "no-store" not in control
    if keyed:
        directives = [d.strip() for d in (control or "").split(",") if d.strip()]
        directives = ["private" if d.lower() == "public" else d for d in directives if not d.lower().startswith("s-")]
        if "private" not in (d.lower() for d in directives):
            directives.insert(0, "private")
        control = ", ".join(directives)
        headers = [(n, v) for n, v in headers if n != b"cache-control"] + [(b"cache-control", control.encode())]
    if cacheable or keyed:
        vary = [v.strip() for n, value in headers if n == b"vary" for v in value.decode("latin-1").split(",")]
        if "*" not in vary:
            present = {v.lower() for v in vary if v}
            vary = [v for v in vary if v] + [v for v in _VARY_CREDENTIALS if v.lower() not in present]
            headers = [(n, v) for n, v in headers if n != b"vary"] + [(b"vary", ", ".join(vary).encode())]
    return headers


class QueryLimitMiddleware:
    """Refuse a URL over the length limit (414, before any parsing), and put the query cost limits of the
    settings in force for the request (the parsers of every door read them)."""

    def __init__(self, app: ASGIApp, max_url_length: int, limits: QueryLimits) -> None:
        self.app = app
        self.max_url_length = max_url_length
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url = (scope.get("raw_path") or scope["path"].encode()) + scope.get("query_string", b"")
        length = len(url)
        if length > self.max_url_length:
            response = problem(
                414,
                "URI too long",
                f"the URL is {length} bytes long, more than the {self.max_url_length} allowed "
                "(TERRITOIRE_MAX_URL_LENGTH)",
                type_slug="query-limit",
                limit="TERRITOIRE_MAX_URL_LENGTH",
                maximum=self.max_url_length,
            )
            await response(scope, receive, send)
            return
        if b"%00" in url or b"\x00" in url:
            # No text column can hold a NUL character: refused here, once, for every door.
            response = problem(
                400, "Invalid request", "the URL holds a NUL character (%00)", type_slug="invalid-request"
            )
            await response(scope, receive, send)
            return
        use_limits(self.limits)
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit (413), by Content-Length up front or by counting a streamed body.

    Upload paths (`.../imports`) get the larger upload limit; they stream to disk, never to memory.
    """

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_upload if scope["path"].rstrip("/").endswith("/imports") else self.max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, receive, send, limit)
                return
        received = 0
        started = False
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now; the app sees a disconnected client and whatever it sends is dropped.
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, tracking_send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem(
            413,
            "Payload too large",
            f"the request body is over the limit of {limit} bytes",
            type_slug="payload-too-large",
        )
        await response(scope, receive, send)


class WindowCounter(Protocol):
    def hit(self, identity: str, limit: int, now: float | None = None) -> int: ...


class SlidingWindowCounter:
    """Requests per identity in a sliding minute, estimated from this minute's and the last minute's counts.

    The estimate weighs the previous fixed window by the share of it still inside the sliding one (the
    sliding-window-counter algorithm). Written here rather than taken from `limits`: its in-memory storage starts
    a timer thread on most hits, and `Thread.start()` waits for the new thread to run, which cost milliseconds
    per request on a busy machine. This one is plain dictionary work on the event loop's thread.
    """

    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window = window_seconds
        self.index = 0  # the current fixed window: int(now / window)
        self.current: dict[str, int] = {}
        self.previous: dict[str, int] = {}

    def hit(self, identity: str, limit: int, now: float | None = None) -> int:
        """0 when the request is allowed (and counted), else the seconds to wait before retrying."""
        now = time.time() if now is None else now
        index = int(now // self.window)
        if index != self.index:  # a new fixed window: forget what is older than the one before it
            self.previous = self.current if index == self.index + 1 else {}
            self.current = {}
            self.index = index
        elapsed = now / self.window - index  # share of the current window gone by
        count = self.current.get(identity, 0)
        weighted = self.previous.get(identity, 0) * (1.0 - elapsed) + count
        if math.floor(weighted) + 1 > limit:
            return max(1, math.ceil(round((1.0 - elapsed) * self.window, 6)))
        self.current[identity] = count + 1
        return 0


class RateLimitMiddleware:
    """Per-client rate limits: by API key prefix when one is sent, else by IP address; counted in this process, or
    in the table every worker shares (`sharedlimits`, when `serve` runs several).

    A request with a key also counts against a generous per-IP limit, so made-up keys cannot dodge the IP limit.
    Operations endpoints (/health, /ready, /metrics) are never limited.
    """

    EXEMPT = ("/health", "/ready", "/metrics")

    def __init__(
        self, app: ASGIApp, anonymous_per_minute: int, key_per_minute: int, counter: WindowCounter | None = None
    ) -> None:
        self.app = app
        self.counter = counter or SlidingWindowCounter()
        self.anonymous = anonymous_per_minute
        self.keyed = key_per_minute
        self.keyed_ip = max(key_per_minute, anonymous_per_minute * 10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        ip = scope["client"][0] if scope.get("client") else "unknown"
        prefix = _key_prefix(scope)
        checks = (
            [(self.keyed, f"key:{prefix}"), (self.keyed_ip, f"keyed-ip:{ip}")]
            if prefix
            else [(self.anonymous, f"ip:{ip}")]
        )
        for limit, identity in checks:
            retry = self.counter.hit(identity, limit)
            if retry:
                response = problem(
                    429,
                    "Too many requests",
                    f"rate limit of {limit} requests per minute reached; retry in {retry} s",
                    type_slug="too-many-requests",
                    headers={"Retry-After": str(retry)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _key_prefix(scope: Scope) -> str | None:
    """Whose limit a request counts against: the key's public prefix, or a digest of an access token (JWT)."""
    for name, value in scope.get("headers", []):
        if name in CREDENTIAL_HEADERS:
            token: str = value.decode("latin-1").split(" ")[-1]
            if token.startswith("td_") and len(token) > 12:
                return token[3:11]
            if token.count(".") == 2 and len(token) > 40:
                return "jwt-" + hashlib.sha256(token.encode("latin-1")).hexdigest()[:16]
            return "malformed"
    return None
