"""The "Indicateurs" pages in a real headless Chromium (Debian's build, playwright) with axe-core: cards, an
indicator's choropleth and series, a unit's page, and the embeddable view inside another site's <iframe>.

Real divisions (Nantes quartiers, Nantes Métropole communes), real bike counts, PM10 readings placed in two quartiers.
Screenshots go to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright

from territoire_data.demo import DEMO_DIVISIONS
from territoire_data.indicators import divisions
from territoire_data.indicators.compute import SYSTEM, process_dirty
from territoire_data.indicators.files import load_folder
from territoire_data.ingest.files.demo import load_demo_datasets
from territoire_data.settings import Settings
from tests.conftest import ROOT, LiveServer, free_port
from tests.e2e.test_portal_browser import AXE, CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.indicator_helpers import observe, pm10_sensor

pytestmark = [pytest.mark.e2e, pytest.mark.db]

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    import os
    from pathlib import Path

    missing = [str(p) for p in (Path(CHROMIUM), AXE) if not p.exists()]
    if missing:
        message = f"missing {', '.join(missing)}: apt-get install chromium, then scripts/build-assets"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def territory(settings: Settings, db: asyncpg.Connection, chromium_ready: None) -> None:
    await load_demo_datasets(settings)
    for slug, declaration in DEMO_DIVISIONS.items():
        await divisions.declare(db, SYSTEM, slug, declaration)
    centre = await pm10_sensor(db, -1.5593, 47.2136)  # Place Royale, Centre Ville
    doulon = await pm10_sensor(db, -1.5125, 47.2267)  # Doulon - Bottière
    start = datetime(2026, 1, 1, 12, tzinfo=PARIS)
    await observe(db, centre, [(start + timedelta(days=d), 55.0 if d % 9 == 0 else 25.0) for d in range(60)])
    await observe(db, doulon, [(start + timedelta(days=d), 18.0 + d % 5) for d in range(60)])
    reports = await load_folder(db, ROOT / "indicators")
    assert {r["status"] for r in reports} == {"loaded"}, reports
    await process_dirty(db)


@pytest.fixture
def server(settings: Settings, territory: None) -> Iterator[LiveServer]:
    live = LiveServer(settings, env={"TERRITOIRE_CATALOG_TITLE": "Données ouvertes de Nantes Métropole (démo)"})
    live.start()
    yield live
    live.stop()


@pytest.fixture
async def page(chromium_ready: None) -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser: Browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(locale="fr-FR", viewport={"width": 1280, "height": 900})
        await context.add_init_script(path=str(AXE))  # not subject to the pages' CSP
        page = await context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        external: list[str] = []
        page.on(
            "request",
            lambda r: external.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "about:")) else None,
        )
        yield page
        await browser.close()
        assert external == [], f"external resources loaded: {external}"
        assert problems == [], f"Content-Security-Policy violations: {problems}"


async def violations(page: Page) -> list[dict[str, Any]]:
    """Every axe-core violation (any impact) of WCAG 2.0/2.1 A and AA rules."""
    result = await page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
    ]


async def test_cards_then_an_indicator_with_its_map_legend_series_and_tables(server: LiveServer, page: Page) -> None:
    await page.goto(f"{server.url}/indicateurs")
    await screenshot(page, "indicators-01-cards")
    assert await violations(page) == []
    cards = page.locator(".indicator-card")
    assert await cards.count() == 5
    pm10 = cards.filter(has_text="Jours de dépassement du seuil journalier PM10")
    assert "2 unités sur 2 atteignent l'objectif" in await pm10.inner_text()  # both under 35 days

    await pm10.get_by_role("link").click()
    await page.wait_for_url("**/indicateurs/pm10-jours-depassement")
    await screenshot(page, "indicators-02-pm10-map")
    assert await violations(page) == []
    drawn = page.locator("svg.choropleth path")
    assert await drawn.count() == 11  # every quartier, with or without a sensor
    titles = await page.locator("svg.choropleth path title").evaluate_all("nodes => nodes.map(n => n.textContent)")
    assert "Centre Ville : 7 jours" in titles  # days 0, 9, …, 54 of 60 at 55 µg/m³
    assert "Nantes Nord : pas de donnée" in titles
    legend = await page.locator(".legend").inner_text()
    assert "pas de donnée" in legend
    table = page.get_by_role("table", name="Jours de dépassement du seuil journalier PM10 par quartier par unité")
    centre_row = table.get_by_role("row").filter(has_text="Centre Ville")
    assert "Objectif atteint" in await centre_row.inner_text()  # words, not only a colour

    # The series of another unit, chosen with the form (works without script).
    await page.get_by_label("Unité affichée").select_option(label="Doulon - Bottière")
    await page.get_by_role("button", name="Afficher").click()
    await page.wait_for_url("**unite=*")
    assert await page.locator("svg.series").count() == 1
    await page.get_by_text("Voir les valeurs de la courbe sous forme de tableau").click()
    caption = "Jours de dépassement du seuil journalier PM10 par quartier — Doulon - Bottière, par période"
    assert "2026" in await page.get_by_role("table", name=caption).inner_text()
    assert await violations(page) == []


async def test_a_unit_page_lists_its_indicators(server: LiveServer, page: Page) -> None:
    await page.goto(f"{server.url}/indicateurs/bornes-recharge-10000-habitants")
    await screenshot(page, "indicators-03-charge-points")
    assert await violations(page) == []
    await page.get_by_role("link", name="Rezé", exact=True).click()
    await page.wait_for_url("**/indicateurs/unites/communes-nantes-metropole/44143")
    await screenshot(page, "indicators-04-unit-reze")
    assert await violations(page) == []
    body = await page.locator("main").inner_text()
    assert "Points de recharge publics pour 10 000 habitants" in body
    assert "population" in body


class CitySite:
    """A city's website: another origin (its own port) serving one page that frames `path` of the platform."""

    def __init__(self, platform: str, path: str) -> None:
        html = (
            '<!doctype html><html lang="fr"><head><title>Site de la ville</title></head><body><h1>La ville</h1>'
            f'<iframe title="Indicateur" src="{platform}{path}" width="900" height="700"></iframe></body></html>'
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_the_embed_renders_inside_another_sites_iframe(server: LiveServer, page: Page) -> None:
    await page.goto(f"{server.url}/embed/indicators/velos-passages-hebdo")
    assert await violations(page) == []
    city = CitySite(server.url, "/embed/indicators/velos-passages-hebdo")
    try:
        await page.goto(city.url)
        frame = page.frame_locator("iframe")
        await frame.locator("h1").wait_for()
        title = "Passages de vélos par semaine sur les compteurs des bords de Loire"
        assert await frame.locator("h1").inner_text() == title
        assert await frame.locator("svg.series circle").count() > 40
        await screenshot(page, "indicators-05-embed-in-iframe")
    finally:
        city.close()
    # Any other page of the platform refuses to be framed (in a context of its own: the refusal is a CSP report).
    elsewhere = CitySite(server.url, "/indicateurs/velos-passages-hebdo")
    browser = page.context.browser
    assert browser is not None
    other = await browser.new_context()
    try:
        framing = await other.new_page()
        refusals: list[str] = []
        framing.on("console", lambda m: refusals.append(m.text) if "frame-ancestors 'none'" in m.text else None)
        await framing.goto(elsewhere.url)
        await framing.wait_for_timeout(1000)
        assert len(refusals) == 1
    finally:
        await other.close()
        elsewhere.close()
