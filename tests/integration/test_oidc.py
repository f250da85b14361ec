"""OpenID Connect: access tokens of a real issuer (keys, discovery and JWKS over HTTP) open the API like keys do."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.catalog_helpers import create_dataset
from tests.conftest import TEST_ADMIN_AUTH, LiveServer, make_settings
from tests.integration.mqtt_helpers import until
from tests.oidc_idp import AUDIENCE, TestIdentityProvider, b64url

pytestmark = pytest.mark.db

ADMIN = ["territoire-admin"]
PUBLISHER = ["territoire-publisher"]
READER = ["territoire-reader"]


@pytest.fixture
def idp() -> Iterator[TestIdentityProvider]:
    provider = TestIdentityProvider().start()
    yield provider
    provider.stop()


def oidc_settings(settings: Settings, issuer: str, **extra: object) -> Settings:
    return make_settings(
        settings.database_url, mqtt_url=settings.mqtt_url, oidc_issuer=issuer, oidc_audience=AUDIENCE, **extra
    )


@pytest.fixture
async def api(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, idp: TestIdentityProvider
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with OIDC on, and two restricted datasets (`secret`, `autre`) created with the admin key."""
    app = create_app(oidc_settings(settings, idp.issuer), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        http.app = app  # type: ignore[attr-defined]
        await create_dataset(http, "secret", "Registre secret", access="restricted")
        await create_dataset(http, "autre", "Autre registre", access="restricted")
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_reader_publisher_and_admin_tokens_on_a_restricted_read(
    api: httpx.AsyncClient, idp: TestIdentityProvider
) -> None:
    granted_reader = idp.token([*READER, "dataset:secret:read"])
    plain_reader = idp.token(READER)
    granted_publisher = idp.token([*PUBLISHER, "dataset:secret:write"])
    admin = idp.token(ADMIN)
    no_role = idp.token(["offline_access", "uma_authorization"])

    async def status(headers: dict[str, str]) -> int:
        return (await api.get("/api/v1/datasets/secret", headers=headers)).status_code

    assert await status({}) == 404
    assert await status(bearer(granted_reader)) == 200
    assert await status(bearer(plain_reader)) == 404  # invisible, exactly like a missing dataset
    assert await status(bearer(granted_publisher)) == 200  # a write grant includes reading
    assert await status(bearer(admin)) == 200
    assert await status(bearer(no_role)) == 404  # a valid token without our roles sees what anyone sees
    assert (await api.get("/api/v1/datasets/autre", headers=bearer(granted_reader))).status_code == 404
    listed = await api.get("/api/v1/datasets", headers=bearer(granted_reader))
    assert [d["slug"] for d in listed.json()["items"]] == ["secret"]
    # The same grant holds on the other doors (OGC API - Features).
    assert (await api.get("/ogcapi/collections/secret", headers=bearer(plain_reader))).status_code == 404


async def test_publisher_token_writes_only_its_granted_datasets_and_the_audit_names_the_subject(
    api: httpx.AsyncClient, idp: TestIdentityProvider
) -> None:
    claims = idp.claims([*PUBLISHER, "dataset:secret:write", "dataset:autre:read"])
    writer = idp.token(claims["realm_access"]["roles"], sub=claims["sub"], preferred_username="agent.sig")
    body = {"title": "Registre secret (mis à jour)"}

    patched = await api.patch("/api/v1/datasets/secret", json=body, headers=bearer(writer))
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == body["title"]
    refused = await api.patch("/api/v1/datasets/autre", json=body, headers=bearer(writer))
    assert refused.status_code == 403  # sees it, may not write it
    reader = idp.token([*READER, "dataset:secret:write"])  # a write grant does not make a reader a publisher
    assert (await api.patch("/api/v1/datasets/secret", json=body, headers=bearer(reader))).status_code == 403
    admin_sub = idp.claims(ADMIN)["sub"]
    admin = idp.token(ADMIN, sub=admin_sub, preferred_username="dsi")
    assert (await api.patch("/api/v1/datasets/autre", json=body, headers=bearer(admin))).status_code == 200

    audit = await api.get("/api/v1/audit", headers=bearer(admin))
    assert audit.status_code == 200
    actors = [(e["action"], e["target_id"], e["actor"]) for e in audit.json() if e["action"] == "dataset.update"]
    assert actors == [
        ("dataset.update", "autre", f"oidc:dsi [{admin_sub}]"),
        ("dataset.update", "secret", f"oidc:agent.sig [{claims['sub']}]"),
    ]
    # Admin endpoints need the admin role; a publisher token gets 403, not 401.
    assert (await api.get("/api/v1/keys", headers=bearer(writer))).status_code == 403


async def test_api_keys_keep_working_next_to_tokens(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/v1/datasets/secret", headers=TEST_ADMIN_AUTH)).status_code == 200
    assert (await api.get("/api/v1/datasets/secret", headers={"X-API-Key": "td_00000000_nope"})).status_code == 401


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["realm_access"]["roles"] = ["territoire-admin"]
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda idp: idp.token(ADMIN, exp=1_600_000_000, iat=1_599_999_000), "token expired"),
        (lambda idp: idp.token(ADMIN, aud="another-client"), "token audience"),
        (lambda idp: idp.token(ADMIN, iss="http://127.0.0.1:1/realms/evil"), "token issuer"),
        (lambda idp: idp.token(ADMIN, nbf=2_000_000_000_0), "not valid yet"),
        (lambda idp: idp.token(ADMIN, sub=None), "'sub'"),
        (lambda idp: idp.token(ADMIN, typ="ID"), "not an access token"),
        (lambda idp: idp.unsigned(ADMIN), "'none' is not accepted"),
        (lambda idp: idp.hmac_with_public_key(ADMIN), "'HS256' is not accepted"),
        (lambda idp: idp.token(ADMIN, alg="RS512"), "'RS512' is not accepted"),
        (lambda idp: _tamper(idp.token(READER)), "signature does not verify"),
        (lambda idp: idp.token(ADMIN).rsplit(".", 1)[0] + ".AAAA", "signature does not verify"),
        (lambda idp: "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.AAAA", "signature"),
        (lambda idp: "bm90IGpzb24.bm90IGpzb24.AAAA", "malformed bearer token"),
    ],
    ids=[
        "expired",
        "wrong-audience",
        "wrong-issuer",
        "not-before",
        "no-subject",
        "id-token",
        "alg-none",
        "hs256-with-public-key",
        "alg-not-allowed",
        "tampered-payload",
        "bad-signature",
        "garbage-payload",
        "garbage-header",
    ],
)
async def test_invalid_tokens_are_401_problems(
    api: httpx.AsyncClient, idp: TestIdentityProvider, make: object, reason: str
) -> None:
    token = make(idp)  # type: ignore[operator]
    response = await api.get("/api/v1/datasets/secret", headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == 'Bearer realm="territoire-data", error="invalid_token"'
    assert reason in response.json()["detail"]
    assert token not in response.text


async def test_key_rotation_is_picked_up_and_unknown_key_ids_are_not_a_fetch_storm(
    api: httpx.AsyncClient, idp: TestIdentityProvider
) -> None:
    jwks = api.app.state.oidc.jwks  # type: ignore[attr-defined]
    # The throttle on refetches (5 s in production) is set per step, so the test does not depend on timing.
    jwks.refetch_interval = 0.0

    def fetches() -> int:
        return sum(path.endswith("/certs") for path in idp.requests)

    assert (await api.get("/api/v1/datasets/secret", headers=bearer(idp.token(ADMIN)))).status_code == 200
    assert (await api.get("/api/v1/datasets/secret", headers=bearer(idp.token(ADMIN)))).status_code == 200
    assert fetches() == 1  # cached
    assert sum(path.endswith("openid-configuration") for path in idp.requests) == 1

    idp.rotate("rsa-2")
    rotated = await api.get("/api/v1/datasets/secret", headers=bearer(idp.token(ADMIN, kid="rsa-2")))
    assert rotated.status_code == 200, rotated.text
    assert fetches() == 2  # the unknown kid made us fetch again

    # Within the throttle interval, made-up key ids are refused without hitting the IdP each time.
    jwks.refetch_interval = 3600.0
    for n in range(5):
        forged = idp.token(ADMIN, kid="rsa-2").split(".")
        forged[0] = b64url(json.dumps({"alg": "RS256", "kid": f"made-up-{n}"}).encode())
        response = await api.get("/api/v1/datasets/secret", headers=bearer(".".join(forged)))
        assert response.status_code == 401
        assert "does not publish" in response.json()["detail"]
    # The withdrawn key no longer verifies new tokens.
    old = await api.get("/api/v1/datasets/secret", headers=bearer(idp.token(ADMIN, kid="rsa-1")))
    assert old.status_code == 401
    assert fetches() == 2

    # Past the TTL, a known key is served at once and the keys are refreshed in the background.
    jwks.ttl, jwks.refetch_interval = 0.0, 0.0
    assert (await api.get("/api/v1/datasets/secret", headers=bearer(idp.token(ADMIN, kid="rsa-2")))).status_code == 200
    await until(lambda: fetches() == 3, what="a background refresh")


async def test_ec_keys_sign_too(api: httpx.AsyncClient, idp: TestIdentityProvider) -> None:
    idp.add_key("ec-1", kind="EC")
    token = idp.token([*READER, "dataset:secret:read"], kid="ec-1")
    assert (await api.get("/api/v1/datasets/secret", headers=bearer(token))).status_code == 200


async def test_unreachable_identity_provider_is_a_503_not_anonymous(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, idp: TestIdentityProvider
) -> None:
    token = idp.token(ADMIN)
    idp.stop()
    app = create_app(oidc_settings(settings, idp.issuer, oidc_http_timeout_seconds=1.0), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        response = await http.get("/api/v1/datasets", headers=bearer(token))
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        # Public reads without a token do not depend on the IdP.
        assert (await http.get("/api/v1/datasets")).status_code == 200


async def test_offline_jwks_file_needs_no_network(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, idp: TestIdentityProvider, tmp_path: Path
) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(idp.jwks()))
    app = create_app(oidc_settings(settings, idp.issuer, oidc_jwks_file=str(jwks_file)), engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        await create_dataset(http, "secret", "Registre secret", access="restricted")
        token = idp.token([*READER, "dataset:secret:read"])
        assert (await http.get("/api/v1/datasets/secret", headers=bearer(token))).status_code == 200
    assert idp.requests == []


async def test_tokens_are_never_logged(settings: Settings, db: asyncpg.Connection, idp: TestIdentityProvider) -> None:
    """The real server at DEBUG, through valid and refused tokens: no token, nor its signature, in its log."""
    server = LiveServer(
        settings,
        env={
            "TERRITOIRE_OIDC_ISSUER": idp.issuer,
            "TERRITOIRE_OIDC_AUDIENCE": AUDIENCE,
            "TERRITOIRE_LOG_LEVEL": "DEBUG",
        },
    )
    server.start()
    tokens = [
        idp.token(ADMIN),
        idp.token(READER, exp=1_600_000_000, iat=1_599_999_000),
        _tamper(idp.token(READER)),
        idp.token(ADMIN, aud="another-client"),
    ]
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            statuses = [(await http.get("/api/v1/datasets?q=x", headers=bearer(token))).status_code for token in tokens]
    finally:
        server.stop()
    assert statuses == [200, 401, 401, 401]
    log = server.log.read_text()
    assert "signing keys loaded" in log  # the log was written at the level that would show it
    for token in tokens:
        _header, payload, signature = token.split(".")
        assert signature not in log and payload not in log


@pytest.mark.mqtt
async def test_sensorthings_mqtt_creates_accept_access_tokens(
    api: httpx.AsyncClient,
    idp: TestIdentityProvider,
    settings: Settings,
    db: asyncpg.Connection,
    topic_prefix: str,
) -> None:
    """The MQTT door (Authorization as an MQTT 5 user property) takes tokens like the HTTP one."""
    from territoire_data.sensorthings.mqtt import StaMqttBridge
    from tests.integration.sensorthings.conftest import Subscriber, thing_body

    thing = await api.post("/sta/v1.1/Things", json=thing_body(), headers=TEST_ADMIN_AUTH)
    assert thing.status_code == 201, thing.text
    stream = await db.fetchval("SELECT id FROM datastream")
    await db.execute("UPDATE datastream SET dataset_id = (SELECT id FROM dataset WHERE slug = 'secret')")
    bridge = StaMqttBridge(oidc_settings(settings, idp.issuer), topic_prefix=f"{topic_prefix}/")
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, asyncio.Event()))
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/unused"])
    topic = f"{topic_prefix}/v1.1/Datastreams({stream})/Observations"
    writer = idp.token([*PUBLISHER, "dataset:secret:write"])
    try:
        await asyncio.wait_for(bridge.is_publisher.wait(), 30)
        sub.publish(topic, {"result": 1, "phenomenonTime": "2026-11-01T00:00:00Z"}, f"Bearer {writer}")
        sub.publish(topic, {"result": 2, "phenomenonTime": "2026-11-01T01:00:00Z"}, f"Bearer {idp.token(READER)}")
        expired = idp.token([*PUBLISHER, "dataset:secret:write"], exp=1_600_000_000, iat=1_599_999_000)
        sub.publish(topic, {"result": 3, "phenomenonTime": "2026-11-01T02:00:00Z"}, f"Bearer {expired}")
        for _ in range(200):
            if await db.fetchval("SELECT count(*) FROM ingest_rejection WHERE source = 'sta-mqtt'") >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        sub.close()
        stop.set()
        await asyncio.wait_for(task, 30)
    assert await db.fetchval("SELECT array_agg(result_number ORDER BY 1) FROM observation") == [1.0]
    reasons = [r["reason"] for r in await db.fetch("SELECT reason FROM ingest_rejection ORDER BY id")]
    assert len(reasons) == 2
    assert "publisher or admin" in reasons[0]
    assert reasons[1] == "token expired"
    payloads = "".join(r["payload"] for r in await db.fetch("SELECT payload FROM ingest_rejection"))
    assert expired not in payloads
