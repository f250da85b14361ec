"""The publishers' back-office (/admin) through HTTP: sign-in (API key, OpenID Connect code + PKCE), CSRF, cookies,
create, upload with a bad row, read the report, fix, publish, restrict, grant; every action audited.

The app runs behind https://testserver (its cookies are Secure, as they must be in production).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.catalog_helpers import FULL_METADATA
from tests.conftest import TEST_ADMIN_KEY, make_key, make_settings
from tests.oidc_idp import AUDIENCE, TestIdentityProvider

pytestmark = pytest.mark.db

BASE = "https://testserver"
GOOD = "nom;code;lon;lat\nMairie;M1;2.35;48.85\nGare;G1;2.37;48.84\n"
BAD = "nom;code;lon;lat\nMairie;M1;2.35;48.85\nGare;G1;deux;48.84\n"


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "every form carries the CSRF token"
    return found.group(1)


@pytest.fixture
async def office(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    app_settings = make_settings(settings.database_url, mqtt_url=settings.mqtt_url, base_url=BASE)
    app = create_app(app_settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        yield http


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    """Sign in with a key; returns the CSRF token of the session's forms."""
    response = await http.post("/admin/connexion", data={"key": key})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/admin"
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/admin"):
        assert attribute.lower() in cookie.lower(), cookie
    dashboard = await http.get("/admin")
    assert dashboard.status_code == 200
    return csrf_of(dashboard.text)


async def test_anonymous_is_sent_to_sign_in_and_bad_keys_are_refused(
    office: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for path in ("/admin", "/admin/jeux/nouveau", "/admin/jeux/x"):
        response = await office.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/admin/connexion", path
    assert (await office.post("/admin/jeux/nouveau", data={"slug": "x"})).status_code == 303
    login = await office.get("/admin/connexion")
    assert login.status_code == 200 and 'lang="fr"' in login.text and "Clé d'API" in login.text
    assert "/admin/connexion/oidc" not in login.text, "no OpenID Connect button when it is not configured"
    refused = await office.post("/admin/connexion", data={"key": "td_nope_nope"})
    assert refused.status_code == 401 and "Clé inconnue" in refused.text
    reader = await make_key(engine, "reader")
    assert (await office.post("/admin/connexion", data={"key": reader})).status_code == 401
    cross = await office.post(
        "/admin/connexion", data={"key": TEST_ADMIN_KEY}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403 and "set-cookie" not in cross.headers


async def test_publisher_creates_uploads_a_bad_file_reads_the_report_fixes_and_publishes(
    office: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    key = await make_key(engine, "publisher")
    csrf = await sign_in(office, key)
    created = await office.post(
        "/admin/jeux/nouveau",
        data={"csrf": csrf, "slug": "lieux", "title": "Lieux de la ville", "kind": "table", "access": "public"},
    )
    assert created.status_code == 303 and created.headers["location"] == "/admin/jeux/lieux"
    page = await office.get("/admin/jeux/lieux")
    assert page.status_code == 200
    assert "Brouillon" in page.text and "À compléter avant de publier" in page.text
    assert (await office.get("/datasets/lieux")).status_code == 404, "a draft is not on the portal"

    bad = await office.post(
        "/admin/jeux/lieux/imports", data={"csrf": csrf}, files={"file": ("lieux.csv", BAD.encode(), "text/csv")}
    )
    assert bad.status_code == 303
    report = await office.get(bad.headers["location"])
    assert report.status_code == 200
    assert "Fichier refusé" in report.text
    assert re.search(
        r"<th scope=\"row\">3</th><td>lon,lat</td><td>coordinate &#39;deux&#39; is not a number", report.text
    ), "the bad line, its columns and the reason are shown"
    assert await db.fetchval("SELECT row_count FROM dataset WHERE slug = 'lieux'") is None

    good = await office.post(
        "/admin/jeux/lieux/imports", data={"csrf": csrf}, files={"file": ("lieux.csv", GOOD.encode(), "text/csv")}
    )
    assert "Fichier chargé : 2 lignes ajoutées" in (await office.get(good.headers["location"])).text

    refused = await office.post("/admin/jeux/lieux/publier", data={"csrf": csrf})
    assert refused.status_code == 422
    assert "Licence" in refused.text and "Description" in refused.text
    fields = {k: v for k, v in FULL_METADATA.items() if k not in ("keywords", "themes")}
    fields.update(title="Lieux de la ville", keywords="mairie, gare", csrf=csrf)
    saved = await office.post("/admin/jeux/lieux/metadonnees", data={**fields, "themes": ["REGI", "GOVE"]})
    assert saved.status_code == 303
    published = await office.post("/admin/jeux/lieux/publier", data={"csrf": csrf})
    assert published.status_code == 303 and published.headers["location"].endswith("?ok=publie")
    assert (await office.get("/datasets/lieux")).status_code == 200
    assert "lieux" in (await office.get("/dcat/catalog.ttl")).text
    listed = await office.get("/admin")
    assert "Publié" in listed.text

    restricted = await office.post("/admin/jeux/lieux/acces", data={"csrf": csrf, "access": "restricted"})
    assert restricted.status_code == 303
    assert (await office.get("/api/v1/datasets/lieux")).status_code == 404
    actions = [
        (r["actor"], r["action"])
        for r in await db.fetch("SELECT actor, action FROM audit_event WHERE actor LIKE 'key:%' ORDER BY id")
    ]
    assert [a for _, a in actions] == [
        "backoffice.login",
        "dataset.create",
        "dataset.import",
        "dataset.import",
        "dataset.update",
        "dataset.publish",
        "dataset.update",
    ]
    assert len({actor for actor, _ in actions}) == 1, "every action names the signed-in key"


async def test_forms_without_the_csrf_token_or_from_elsewhere_are_refused(
    office: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    csrf = await sign_in(office, TEST_ADMIN_KEY)
    await office.post("/admin/jeux/nouveau", data={"csrf": csrf, "slug": "a", "title": "A", "kind": "table"})
    assert (await office.post("/admin/jeux/a/publier", data={})).status_code == 403
    assert (await office.post("/admin/jeux/a/publier", data={"csrf": csrf + "x"})).status_code == 403
    evil = await office.post("/admin/jeux/a/depublier", data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert (
        await office.post("/admin/jeux/a/imports", data={}, files={"file": ("a.csv", GOOD.encode(), "text/csv")})
    ).status_code == 403
    assert await db.fetchval("SELECT count(*) FROM dataset_import") == 0
    assert await db.fetchval("SELECT count(*) FROM audit_event WHERE action LIKE 'dataset.publish'") == 0


async def test_a_publisher_sees_only_its_datasets_and_a_revoked_key_ends_the_session(
    office: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    admin_csrf = await sign_in(office, TEST_ADMIN_KEY)
    await office.post("/admin/jeux/nouveau", data={"csrf": admin_csrf, "slug": "a-admin", "title": "De l'admin"})
    office.cookies.clear()
    key = await make_key(engine, "publisher")
    await sign_in(office, key)
    dashboard = await office.get("/admin")
    assert "a-admin" not in dashboard.text
    assert (await office.get("/admin/jeux/a-admin")).status_code == 404, "another's draft is as absent as nothing"
    assert await db.fetchval("SELECT count(*) FROM web_session") == 2
    assert (
        await db.fetchval("SELECT count(*) FROM web_session WHERE token_hash = ANY($1)", list(office.cookies.values()))
        == 0
    ), "only the token's hash is stored"
    await db.execute("UPDATE api_key SET revoked_at = now() WHERE role = 'publisher'")
    after = await office.get("/admin")
    assert after.status_code == 303 and after.headers["location"] == "/admin/connexion"


async def test_admin_grants_a_key_and_the_rejected_mqtt_messages_are_listed(
    office: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    csrf = await sign_in(office, TEST_ADMIN_KEY)
    await office.post(
        "/admin/jeux/nouveau", data={"csrf": csrf, "slug": "capteurs", "title": "Capteurs", "kind": "sensors"}
    )
    dataset_id = await db.fetchval("SELECT id FROM dataset WHERE slug = 'capteurs'")
    await db.execute(
        "INSERT INTO ingest_rejection (source, topic, dataset_id, reason, payload, payload_bytes) "
        "VALUES ('chirpstack-v4', 'application/1/device/abc/event/up', $1, 'invalid JSON', '{\"oops', 6)",
        dataset_id,
    )
    page = await office.get("/admin/jeux/capteurs")
    assert "invalid JSON" in page.text and "application/1/device/abc/event/up" in page.text
    key = await make_key(engine, "publisher")
    prefix = key.split("_")[1]
    granted = await office.post(
        "/admin/jeux/capteurs/droits", data={"csrf": csrf, "prefix": prefix, "permission": "write"}
    )
    assert granted.status_code == 303
    assert (
        await db.fetchval(
            "SELECT permission FROM api_key_grant g JOIN api_key k ON k.id = g.api_key_id WHERE k.prefix = $1", prefix
        )
        == "write"
    )
    unknown = await office.post(
        "/admin/jeux/capteurs/droits", data={"csrf": csrf, "prefix": "nope", "permission": "write"}
    )
    assert unknown.status_code == 404


@pytest.fixture
def idp() -> AsyncIterator[TestIdentityProvider]:
    provider = TestIdentityProvider().start()
    yield provider  # type: ignore[misc]
    provider.stop()


async def test_sign_in_through_openid_connect_with_pkce(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, idp: TestIdentityProvider
) -> None:
    app_settings = make_settings(
        settings.database_url,
        mqtt_url=settings.mqtt_url,
        base_url=BASE,
        oidc_issuer=idp.issuer,
        oidc_audience=AUDIENCE,
        oidc_client_id="territoire-backoffice",
    )
    idp.user = {"roles": ["territoire-publisher", "dataset:lieux:write"], "preferred_username": "marie"}
    app = create_app(app_settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as office:
        login = await office.get("/admin/connexion")
        assert "/admin/connexion/oidc" in login.text
        leave = await office.get("/admin/connexion/oidc")
        assert leave.status_code == 303
        target = leave.headers["location"]
        assert target.startswith(f"{idp.issuer}/protocol/openid-connect/auth?")
        assert "code_challenge_method=S256" in target and "client_id=territoire-backoffice" in target
        assert "samesite=lax" in leave.headers["set-cookie"].lower()
        async with httpx.AsyncClient() as browser:  # the person's browser at the provider
            back = await browser.get(target)
        assert back.status_code == 302
        callback = back.headers["location"]
        assert callback.startswith(f"{BASE}/admin/oidc/retour?")
        # A forged state is refused, and uses up the sign-in.
        forged = callback.replace("state=", "state=x")
        signed = await office.get(forged.removeprefix(BASE))
        assert signed.status_code == 401
        leave = await office.get("/admin/connexion/oidc")
        async with httpx.AsyncClient() as browser:
            back = await browser.get(leave.headers["location"])
        signed = await office.get(back.headers["location"].removeprefix(BASE))
        assert signed.status_code == 200, signed.text
        assert 'http-equiv="refresh"' in signed.text
        assert "samesite=strict" in signed.headers["set-cookie"].lower()
        dashboard = await office.get("/admin")
        assert dashboard.status_code == 200
        assert "oidc:marie" in dashboard.text
        assert await db.fetchval("SELECT write_slugs FROM web_session WHERE NOT pending") == ["lieux"]
        assert await db.fetchval("SELECT count(*) FROM audit_event WHERE actor LIKE 'oidc:marie%'") == 1
        rows = [str(list(r.values())) for r in await db.fetch("SELECT * FROM web_session")]
        assert not any("eyJ" in row for row in rows), "no access token is stored"
