"""The portal's map in Chromium: 100,000 points drawn from our own vector tiles (no feature cap, no GeoJSON of the
whole table), on the default background (nothing outside the platform), and a basemap the city serves itself
(TERRITOIRE_BASEMAP=<style URL>) with the CSP opened to that origin only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from territoire_data.settings import Settings
from tests.catalog_helpers import AUTH, FULL_METADATA
from tests.conftest import LiveServer
from tests.e2e.test_portal_browser import AXE, CHROMIUM, CHROMIUM_ARGS, chromium_ready, screenshot  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.db, pytest.mark.slow]

POINTS = 100_000


async def points_dataset(server: LiveServer, db: asyncpg.Connection, slug: str, count: int) -> None:
    """A published table dataset of `count` points scattered over Nantes Métropole (typed table per the contract)."""
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as http:
        body = {**FULL_METADATA, "slug": slug, "title": f"{count} points à Nantes"}
        assert (await http.post("/api/v1/datasets", json=body)).status_code == 201
        assert (await http.post(f"/api/v1/datasets/{slug}/publish")).status_code == 200
    dataset_id = await db.fetchval("SELECT id FROM dataset WHERE slug = $1", slug)
    table = f"ds_{dataset_id}"
    await db.execute(
        f'CREATE TABLE datasets."{table}" (_fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n integer, '
        "geom geometry(Geometry, 4326))"
    )
    # A fixed pseudo-random scatter (reproducible): -1.70..-1.40 E, 47.12..47.32 N.
    await db.execute(
        f'INSERT INTO datasets."{table}" (n, geom) SELECT i, ST_SetSRID(ST_MakePoint('
        "-1.70 + 0.30 * ((i * 7919) % 10007) / 10007.0, 47.12 + 0.20 * ((i * 104729) % 10009) / 10009.0), 4326) "
        "FROM generate_series(1::bigint, $1) i",
        count,
    )
    await db.execute(f'CREATE INDEX ON datasets."{table}" USING gist (geom)')
    await db.execute(
        f"""UPDATE dataset SET table_name = $2, row_count = $3, geometry_type = 'Point',
            table_schema = '{{"fields": [{{"name": "n", "type": "integer"}}]}}'::jsonb,
            spatial_extent = (SELECT ST_SetSRID(ST_Extent(geom)::geometry, 4326) FROM datasets."{table}"),
            modified_at = now() WHERE id = $1""",
        dataset_id,
        table,
        count,
    )


@pytest.fixture
async def browser(chromium_ready: None) -> AsyncIterator[Browser]:  # noqa: F811
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


async def open_page(browser: Browser) -> tuple[Page, list[str], list[str]]:
    context = await browser.new_context(locale="fr-FR", viewport={"width": 1280, "height": 900})
    await context.add_init_script(path=str(AXE))
    page = await context.new_page()
    requests: list[str] = []
    csp: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
    return page, requests, csp


@pytest.fixture
def server(settings: Settings, db: asyncpg.Connection, chromium_ready: None) -> Iterator[LiveServer]:  # noqa: F811
    live = LiveServer(settings)
    live.start()
    yield live
    live.stop()


async def test_a_map_of_100000_points_is_drawn_from_tiles_without_a_cap(
    server: LiveServer, db: asyncpg.Connection, browser: Browser
) -> None:
    await points_dataset(server, db, "cent-mille-points", POINTS)
    page, requests, csp = await open_page(browser)
    started = time.monotonic()
    await page.goto(f"{server.url}/datasets/cent-mille-points")
    drawn = page.locator("#map[data-rendered]")
    await drawn.wait_for(timeout=120_000)
    seconds = time.monotonic() - started
    assert await drawn.get_attribute("data-rendered") == str(POINTS), "every point is on the map"
    tiles = [url for url in requests if "/tiles/WebMercatorQuad/" in url]
    assert tiles, "drawn from our own vector tiles"
    assert not any("preview.geojson" in url for url in requests), "not from a GeoJSON of the table"
    assert all(url.startswith((server.url, "data:", "blob:")) for url in requests), "nothing outside the platform"
    assert csp == []
    await screenshot(page, "07-map-100000-points")
    print(f"100,000 points drawn in {seconds:.1f} s from {len(tiles)} tiles (headless Chromium, software GL)")
    await page.context.close()


class StyleServer:
    """The city's own basemap server: a MapLibre style (a background and a vector source of its tiles)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path != "/style.json":
                    self.send_error(404)
                    return
                style: dict[str, Any] = {
                    "version": 8,
                    "sources": {},
                    "layers": [{"id": "terre", "type": "background", "paint": {"background-color": "#f3efe6"}}],
                }
                data = json.dumps(style).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


async def test_a_basemap_the_city_serves_is_used_and_the_csp_follows_it(
    settings: Settings, db: asyncpg.Connection, browser: Browser
) -> None:
    tiles = StyleServer()
    live = LiveServer(settings, env={"TERRITOIRE_BASEMAP": f"{tiles.url}/style.json"})
    live.start()
    try:
        await points_dataset(live, db, "quelques-points", 50)
        async with httpx.AsyncClient(base_url=live.url) as http:
            csp = (await http.get("/datasets/quelques-points")).headers["content-security-policy"]
        assert f"connect-src 'self' {tiles.url}" in csp
        page, requests, violations = await open_page(browser)
        await page.goto(f"{live.url}/datasets/quelques-points")
        await page.locator("#map[data-rendered]").wait_for(timeout=60_000)
        assert await page.locator("#map").get_attribute("data-rendered") == "50"
        assert "/style.json" in tiles.requests, "the style came from the city's server"
        assert violations == []
        assert all(u.startswith((live.url, tiles.url, "data:", "blob:")) for u in requests)
        await screenshot(page, "08-map-city-basemap")
        await page.context.close()
    finally:
        live.stop()
        tiles.stop()
