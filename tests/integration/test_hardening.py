"""Hardening: security headers, body limits, rate limits."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.db


async def test_every_response_carries_security_headers(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/docs", "/no-such-page"):
        response = await client.get(path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "unsafe-inline" not in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"


async def test_docs_page_has_no_inline_script(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    assert "<script>" not in page
    assert (await client.get("/static/api/docs-init.js")).status_code == 200


async def test_oversized_body_is_refused_with_413(client: httpx.AsyncClient, admin_key: str) -> None:
    big = b"x" * (10 * 1024 * 1024 + 1)
    response = await client.post(
        "/api/v1/keys", content=big, headers={"X-API-Key": admin_key, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_streamed_body_over_the_limit_is_refused(settings: Settings, engine: AsyncEngine) -> None:
    small = make_settings(settings.database_url, mqtt_url=settings.mqtt_url, max_body_bytes=2048)
    app = create_app(small, engine=engine)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 1024

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.post("/api/v1/keys", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


async def test_rate_limit_answers_429_with_retry_after(settings: Settings, engine: AsyncEngine) -> None:
    limited = make_settings(settings.database_url, mqtt_url=settings.mqtt_url, rate_limit_per_minute=5)
    app = create_app(limited, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        statuses = [(await http.get("/openapi.json")).status_code for _ in range(7)]
        assert statuses[:5] == [200] * 5
        assert statuses[5:] == [429, 429]
        refused = await http.get("/openapi.json")
        assert int(refused.headers["retry-after"]) >= 1
        assert (await http.get("/health")).status_code == 200  # operations are never limited
