"""Content coding negotiation and the compression middleware, on a bare ASGI app (no database)."""

from __future__ import annotations

import doctest
import zlib

import brotli
import httpx
import pytest
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from territoire_data.api import compression
from territoire_data.api.compression import CompressionMiddleware, negotiate
from territoire_data.api.head import HeadMiddleware

BODY = b'{"value":[' + b",".join(b'{"@iot.id":%d,"result":%d.5}' % (i, i % 97) for i in range(3000)) + b"]}"


def test_doctests() -> None:
    assert doctest.testmod(compression).failed == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip, deflate, br, zstd", "zstd"),  # Chrome, urllib3 and httpx with zstandard
        ("gzip, deflate, br", "br"),
        ("gzip, deflate", "gzip"),
        ("deflate", None),
        ("", None),
        ("identity", None),
        ("br;q=0.9, zstd;q=0.8", "br"),
        ("zstd;q=0, br;q=0, gzip;q=0", None),
        ("ZSTD;Q=1", "zstd"),
        ("*", "zstd"),
        ("*;q=0.5, br", "br"),
        ("zstd;q=0, *", "br"),
        ("br;q=bogus, gzip", "gzip"),
        ("br;q=7", "br"),
        (",,;,br", "br"),
    ],
)
def test_negotiation_honours_weights_and_prefers_the_cheapest(header: str, expected: str | None) -> None:
    assert negotiate(header) == expected


def _app(min_size: int = 1024) -> CompressionMiddleware:
    async def whole(request: Request) -> Response:
        return Response(BODY, media_type="application/json")

    async def small(request: Request) -> Response:
        return Response(b'{"a":1}', media_type="application/json")

    async def already(request: Request) -> Response:
        return Response(BODY, headers={"content-encoding": "br"})

    async def not_modified(request: Request) -> Response:
        return Response(status_code=304, headers={"etag": '"x"'})

    async def streamed(request: Request) -> StreamingResponse:
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(BODY), 10_000):
                yield BODY[i : i + 10_000]

        return StreamingResponse(chunks(), media_type="application/json")

    async def parquet(request: Request) -> Response:
        return Response(BODY, media_type="application/vnd.apache.parquet")

    app = Starlette(
        routes=[
            Route("/whole", whole),
            Route("/small", small),
            Route("/already", already),
            Route("/304", not_modified),
            Route("/streamed", streamed),
            Route("/exports/parquet", parquet),
        ]
    )
    return CompressionMiddleware(HeadMiddleware(app), minimum_size=min_size, excluded_paths=[r"/exports/parquet$"])


def _decode(coding: str | None, data: bytes) -> bytes:
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "gzip":
        return zlib.decompress(data, 31)
    return data


async def _get(path: str, accept: str, method: str = "GET") -> tuple[httpx.Response, bytes]:
    """The response and its body as sent (decoded here, not by httpx's optional decoders)."""
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        request = client.build_request(method, path, headers={"Accept-Encoding": accept})
        response = await client.send(request, stream=True)
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        return response, raw


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
@pytest.mark.parametrize("path", ["/whole", "/streamed"])
async def test_bodies_are_compressed_in_the_negotiated_coding(coding: str, path: str) -> None:
    response, data = await _get(path, coding)
    assert response.headers["content-encoding"] == coding
    assert "accept-encoding" in response.headers["vary"].lower()
    if path == "/whole":
        assert int(response.headers["content-length"]) == len(data)
    else:
        assert "content-length" not in response.headers
    assert len(data) < len(BODY) / 4
    assert _decode(coding, data) == BODY


@pytest.mark.parametrize("path", ["/small", "/already", "/304", "/exports/parquet"])
async def test_left_alone(path: str) -> None:
    response, data = await _get(path, "zstd, br, gzip")
    if path == "/already":  # keeps its own coding, not compressed twice
        assert response.headers["content-encoding"] == "br"
        assert data == BODY
    else:
        assert "content-encoding" not in response.headers


async def test_identity_is_sent_as_is_with_vary() -> None:
    response, data = await _get("/whole", "identity")
    assert "content-encoding" not in response.headers
    assert data == BODY
    assert response.headers["vary"] == "Accept-Encoding"


async def test_head_says_the_coding_a_get_would_get_without_the_uncompressed_length() -> None:
    for path in ("/whole", "/streamed"):
        head, data = await _get(path, "gzip, br, zstd", method="HEAD")
        assert head.headers["content-encoding"] == "zstd"
        assert "content-length" not in head.headers
        assert data == b""
    small, _ = await _get("/small", "zstd", method="HEAD")
    assert "content-encoding" not in small.headers
    assert small.headers["content-length"] == "7"
