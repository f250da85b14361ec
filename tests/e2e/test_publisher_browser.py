"""A data officer in a real headless Chromium (Debian's, driven by playwright): sign in to /admin with a key,
describe a dataset, upload a file with a bad row, read the report, fix the file, complete the metadata, publish;
the dataset appears on the portal and in DCAT then, and not before. axe on every page; every request the browser
makes stays on the platform. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_KEY, LiveServer, make_key
from tests.e2e.test_portal_browser import AXE, CHROMIUM, CHROMIUM_ARGS, screenshot, serious_violations

pytestmark = [pytest.mark.e2e, pytest.mark.db]

BAD = "nom;adresse;lon;lat\nMairie;Place de l'Hôtel de Ville;-1.5536;47.2184\nGare;27 bd de Stalingrad;deux;47.2173\n"
GOOD = BAD.replace("deux", "-1.5425")


@pytest.fixture(scope="module")
def chromium_ready() -> None:
    missing = [str(p) for p in (Path(CHROMIUM), AXE) if not p.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: apt-get install chromium, then scripts/build-assets")


@pytest.fixture
def server(settings: Settings, db: asyncpg.Connection, chromium_ready: None) -> Iterator[LiveServer]:
    live = LiveServer(settings, env={"TERRITOIRE_CATALOG_PUBLISHER": "Ville de Nantes"})
    live.start()
    yield live
    live.stop()


@pytest.fixture
async def browser(chromium_ready: None) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Browser, server: LiveServer) -> AsyncIterator[Page]:
    context = await browser.new_context(locale="fr-FR", viewport={"width": 1280, "height": 900})
    await context.add_init_script(path=str(AXE))
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    await context.close()
    ours = (server.url, server.url.replace("127.0.0.1", "localhost"), "data:", "blob:")
    outside = [url for url in requests if not url.startswith(ours)]
    assert outside == [], f"the back-office made requests outside the platform: {outside}"
    assert problems == [], problems


async def check_accessible(page: Page, name: str) -> None:
    await screenshot(page, name)
    violations = await serious_violations(page)
    assert violations == [], f"{name}: {violations}"


async def test_publisher_uploads_fixes_and_publishes(
    server: LiveServer, page: Page, db: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(settings.sqlalchemy_url)
    try:
        key = await make_key(engine, "publisher")
    finally:
        await engine.dispose()

    # Secure cookies over plain http are accepted from localhost only (a "potentially trustworthy" origin).
    site = server.url.replace("127.0.0.1", "localhost")
    await page.goto(f"{site}/admin")
    assert page.url.endswith("/admin/connexion")
    await check_accessible(page, "admin-01-connexion")
    await page.locator("#key").fill(key)
    await page.get_by_role("button", name="Se connecter").click()
    await page.wait_for_url(f"{site}/admin")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["td_admin"]["httpOnly"] and cookies["td_admin"]["secure"]
    assert cookies["td_admin"]["sameSite"] == "Strict"
    await check_accessible(page, "admin-02-mes-jeux")

    await page.get_by_role("link", name="Nouveau jeu de données").first.click()
    await page.locator("#slug").fill("equipements-nantes")
    await page.locator("#title").fill("Équipements publics de Nantes")
    await check_accessible(page, "admin-03-nouveau")
    await page.get_by_role("button", name="Créer le jeu de données").click()
    await page.wait_for_url(f"{site}/admin/jeux/equipements-nantes")
    assert await page.get_by_text("À compléter avant de publier").is_visible()
    await check_accessible(page, "admin-04-brouillon")

    async with httpx.AsyncClient(base_url=server.url) as public:
        assert (await public.get("/datasets/equipements-nantes")).status_code == 404
        assert "equipements-nantes" not in (await public.get("/dcat/catalog.ttl")).text

    bad = tmp_path / "equipements.csv"
    bad.write_text(BAD, encoding="utf-8")
    await page.locator("#file").set_input_files(str(bad))
    await page.get_by_role("button", name="Charger", exact=True).click()
    await page.wait_for_url("**/imports/*")
    assert await page.get_by_text("Fichier refusé").is_visible()
    row = page.locator("table.errors tbody tr").first
    assert (await row.locator("th").inner_text()).strip() == "3"
    assert "deux" in await row.inner_text()
    await check_accessible(page, "admin-05-rapport-refuse")

    bad.write_text(GOOD, encoding="utf-8")
    await page.get_by_role("link", name="Retour au jeu de données").click()
    await page.locator("#file").set_input_files(str(bad))
    await page.get_by_role("button", name="Charger", exact=True).click()
    await page.wait_for_url("**/imports/*")
    assert await page.get_by_text("Fichier chargé : 2 lignes ajoutées").is_visible()
    await check_accessible(page, "admin-06-rapport-charge")

    await page.get_by_role("link", name="Retour au jeu de données").click()
    await page.locator("#description").fill(
        "Mairie et gare de Nantes : nom, adresse et position, relevés par le service des données."
    )
    await page.locator("#licence").select_option("etalab-2.0")
    await page.locator("#update_frequency").select_option("ANNUAL")
    await page.get_by_label("Régions et villes").check()
    await page.get_by_role("button", name="Enregistrer les métadonnées").click()
    await page.wait_for_url("**?ok=metadonnees")
    await page.get_by_role("button", name="Publier").click()
    await page.wait_for_url("**?ok=publie")
    assert await page.get_by_text("Jeu de données publié").is_visible()
    await check_accessible(page, "admin-07-publie")

    async with httpx.AsyncClient(base_url=server.url) as public:
        portal = await public.get("/datasets/equipements-nantes")
        assert portal.status_code == 200 and "Équipements publics de Nantes" in portal.text
        assert "equipements-nantes" in (await public.get("/dcat/catalog.ttl")).text
        body = (await public.get("/api/v1/datasets/equipements-nantes")).json()
        assert body["status"] == "published"
        assert body["publisher"] == "Ville de Nantes", "the producer came from TERRITOIRE_CATALOG_PUBLISHER"
    await page.goto(f"{site}/datasets/equipements-nantes")
    assert await page.get_by_role("heading", name="Équipements publics de Nantes").is_visible()
    await screenshot(page, "admin-08-portail")
    assert TEST_ADMIN_KEY not in await page.content()
