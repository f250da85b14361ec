"""Response compression negotiated by Accept-Encoding (RFC 9110 §12.5.3): zstd, brotli or gzip.

Compression was the largest single cost of the big API answers (a day of one Datastream is 686 kB of JSON; 100
Things with their Datastreams and last Observations, 710 kB). On those bodies zstd level 1 compresses as well as
brotli quality 2 (within a few per cent) in about a third of its CPU time, and decompresses in half of brotli's,
so it is preferred when a client accepts it with the same weight: browsers since 2024 (Chrome 123, Firefox 126)
and Python's urllib3/requests and httpx when `zstandard` is installed send `zstd`. Brotli, then gzip, serve the
others; a client that asks for none, or for `identity`, gets the body as is.

The negotiation honours q-values (`br;q=0` refuses brotli; `*` covers what is not named). Bodies under
`minimum_size` go out as they are; a response that already has a Content-Encoding, a 204/304, and the paths
excluded (GeoParquet is compressed already) are never touched. Streamed bodies (the exports) are compressed chunk
by chunk, each chunk flushed so that the client gets rows as they are read. A HEAD answer says the encoding a
GET would get and drops the Content-Length, which would be the uncompressed one.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

import brotli
import zstandard
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Server preference among encodings the client accepts with the same weight: cheapest CPU first.
PREFERENCE = ("zstd", "br", "gzip")
ZSTD_LEVEL = 1
BROTLI_QUALITY = 2
GZIP_LEVEL = 5


def negotiate(accept_encoding: str, offered: Iterable[str] = PREFERENCE) -> str | None:
    """The content coding to use for this Accept-Encoding value, or None for the identity.

    >>> negotiate("gzip, deflate, br, zstd")
    'zstd'
    >>> negotiate("br;q=1.0, zstd;q=0.5")
    'br'
    >>> negotiate("zstd;q=0, *")
    'br'
    >>> negotiate("identity") is None
    True
    """
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        weights[name] = max(0.0, min(1.0, weight))
    best: str | None = None
    best_weight = 0.0
    for coding in offered:  # in preference order: a later coding must weigh more to win
        weight = weights.get(coding, weights.get("*", 0.0))
        if weight > best_weight:
            best, best_weight = coding, weight
    return best


class Encoder(Protocol):
    def process(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Zstd:
    def __init__(self) -> None:
        self._obj = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def process(self, chunk: bytes) -> bytes:
        return self._obj.compress(chunk) + self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class _Brotli:
    def __init__(self) -> None:
        self._obj = brotli.Compressor(quality=BROTLI_QUALITY)

    def process(self, chunk: bytes) -> bytes:
        return bytes(self._obj.process(chunk) + self._obj.flush())

    def finish(self) -> bytes:
        return bytes(self._obj.finish())


class _Gzip:
    def __init__(self) -> None:
        self._obj = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container

    def process(self, chunk: bytes) -> bytes:
        return self._obj.compress(chunk) + self._obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._obj.flush(zlib.Z_FINISH)


def _whole_gzip(body: bytes) -> bytes:
    obj = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return obj.compress(body) + obj.flush()


# A single compressor for whole bodies (one call, never interleaved on the event loop): no context set up per
# response. It writes the content size into the frame, which lets the client allocate once.
_ZSTD_WHOLE = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

WHOLE: dict[str, Callable[[bytes], bytes]] = {
    "zstd": _ZSTD_WHOLE.compress,
    "br": lambda body: bytes(brotli.compress(body, quality=BROTLI_QUALITY)),
    "gzip": _whole_gzip,
}
STREAMING: dict[str, Callable[[], Encoder]] = {"zstd": _Zstd, "br": _Brotli, "gzip": _Gzip}


class CompressionMiddleware:
    def __init__(self, app: ASGIApp, minimum_size: int = 1024, excluded_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.minimum_size = minimum_size
        self.excluded = [re.compile(p) for p in excluded_paths]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(p.search(scope.get("path", "")) for p in self.excluded):
            await self.app(scope, receive, send)
            return
        coding = negotiate(Headers(scope=scope).get("accept-encoding", ""))
        await self.app(scope, receive, _Responder(send, coding, self.minimum_size, scope["method"] == "HEAD").send)


class _Responder:
    """Wraps one response's `send`."""

    def __init__(self, send: Send, coding: str | None, minimum_size: int, head: bool) -> None:
        self._send = send
        self.coding = coding
        self.minimum_size = minimum_size
        self.head = head
        self.start: Message | None = None
        self.passthrough = False
        self.encoder: Encoder | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = Headers(raw=message["headers"])
            self.passthrough = message["status"] in (204, 304) or "content-encoding" in headers
            self.start = message
            return
        if kind != "http.response.body":
            await self._send(message)
            return
        if self.start is None:  # a later chunk of the body
            if self.encoder is None:
                await self._send(message)
                return
            body = message.get("body", b"")
            data = self.encoder.process(body) if body else b""
            if not message.get("more_body", False):
                data += self.encoder.finish()
            await self._send({**message, "body": data})
            return
        start, self.start = self.start, None
        if self.passthrough:
            await self._send(start)
            await self._send(message)
            return
        await self._first_body(start, message)

    async def _first_body(self, start: Message, message: Message) -> None:
        headers = MutableHeaders(raw=start["headers"])
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        headers.add_vary_header("Accept-Encoding")
        if self.head:  # the body is not sent: say what a GET would get (its length is unknown then)
            length = headers.get("content-length")  # none: a streamed body, which a GET compresses whatever its size
            if self.coding is not None and (length is None or int(length) >= self.minimum_size):
                headers["Content-Encoding"] = self.coding
                del headers["Content-Length"]
            await self._send(start)
            await self._send(message)
            return
        if self.coding is None or (not more and len(body) < self.minimum_size):
            await self._send(start)
            await self._send(message)
            return
        headers["Content-Encoding"] = self.coding
        if not more:
            compressed = WHOLE[self.coding](body)
            headers["Content-Length"] = str(len(compressed))
            await self._send(start)
            await self._send({**message, "body": compressed})
            return
        del headers["Content-Length"]
        self.encoder = STREAMING[self.coding]()
        await self._send(start)
        await self._send({**message, "body": self.encoder.process(body)})
