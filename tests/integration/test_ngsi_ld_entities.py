"""NGSI-LD entities (clauses 5.6, 5.7 of ETSI GS CIM 009): create, retrieve, query, update, batch, @context."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_ADMIN_AUTH

pytestmark = [pytest.mark.db]

BASE = "/ngsi-ld/v1"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
LD = {**TEST_ADMIN_AUTH, "Content-Type": "application/ld+json"}
JSON = {**TEST_ADMIN_AUTH, "Content-Type": "application/json"}


def vehicle(n: int = 1, speed: float = 80, brand: str = "Mercedes") -> dict[str, object]:
    return {
        "id": f"urn:ngsi-ld:Vehicle:V{n}",
        "type": "Vehicle",
        "brandName": {"type": "Property", "value": brand},
        "speed": {"type": "Property", "value": speed, "observedAt": "2026-12-01T10:00:00Z", "unitCode": "KMH"},
        "isParked": {"type": "Relationship", "object": "urn:ngsi-ld:OffStreetParking:Downtown1"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-1.55 + n / 1000, 47.21]}},
        "@context": [CORE],
    }


async def test_create_then_retrieve_returns_the_entity_in_normalized_form(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{BASE}/entities", json=vehicle(), headers=LD)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1"
    got = await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1")
    assert got.status_code == 200
    body = got.json()
    assert body["type"] == "Vehicle"
    assert body["speed"] == {"type": "Property", "value": 80, "observedAt": "2026-12-01T10:00:00Z", "unitCode": "KMH"}
    assert body["isParked"] == {"type": "Relationship", "object": "urn:ngsi-ld:OffStreetParking:Downtown1"}
    assert "@context" not in body
    assert CORE in got.headers["link"]
    assert all(
        value is not None for attribute in body.values() if isinstance(attribute, dict) for value in attribute.values()
    )


async def test_create_twice_is_409_already_exists(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{BASE}/entities", json=vehicle(), headers=LD)).status_code == 201
    again = await client.post(f"{BASE}/entities", json=vehicle(), headers=LD)
    assert again.status_code == 409
    assert again.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/AlreadyExists"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"type": "Vehicle", "@context": [CORE]}, "no id"),
        ({"id": "not a uri", "type": "Vehicle", "@context": [CORE]}, "id not a URI"),
        ({"id": "urn:ngsi-ld:V:1", "@context": [CORE]}, "no type"),
        ({"id": "urn:ngsi-ld:V:1", "type": "V", "r": {"type": "Relationship"}, "@context": [CORE]}, "no object"),
        ({"id": "urn:ngsi-ld:V:1", "type": "V", "p": {"type": "Property", "value": None}, "@context": [CORE]}, "null"),
        (
            {"id": "urn:ngsi-ld:V:1", "type": "V", "location": {"type": "Property", "value": 1}, "@context": [CORE]},
            "geo",
        ),
    ],
)
async def test_invalid_entities_are_400_bad_request_data(
    client: httpx.AsyncClient, body: dict[str, object], why: str
) -> None:
    response = await client.post(f"{BASE}/entities", json=body, headers=LD)
    assert response.status_code == 400, why
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_media_types_are_enforced(client: httpx.AsyncClient) -> None:
    ld_without_context = {k: v for k, v in vehicle().items() if k != "@context"}
    assert (await client.post(f"{BASE}/entities", json=ld_without_context, headers=LD)).status_code == 400
    assert (await client.post(f"{BASE}/entities", json=vehicle(), headers=JSON)).status_code == 400
    text = await client.post(
        f"{BASE}/entities", content=b"x", headers={**TEST_ADMIN_AUTH, "Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    assert (await client.post(f"{BASE}/entities", json=ld_without_context, headers=JSON)).status_code == 201
    xml = await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1", headers={"Accept": "application/xml"})
    assert xml.status_code == 406


async def test_user_context_in_link_header_must_be_stored_first_and_then_expands_terms(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    url = "http://example.org/ctx/vehicle.jsonld"
    link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    body = {k: v for k, v in vehicle().items() if k != "@context"}
    unknown = await client.post(f"{BASE}/entities", json=body, headers={**JSON, "Link": link})
    assert unknown.status_code == 503
    assert unknown.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"
    await db.execute(
        "INSERT INTO ngsild_context (id, url, body, kind) VALUES ('v', $1, $2::jsonb, 'Hosted')",
        url,
        '{"@context": {"brandName": "https://schema.org/brand", "Vehicle": "https://example.org/Vehicle"}}',
    )
    assert (await client.post(f"{BASE}/entities", json=body, headers={**JSON, "Link": link})).status_code == 201
    stored = await db.fetchrow("SELECT types, attrs FROM ngsild_entity")
    assert stored["types"] == ["https://example.org/Vehicle"]
    assert "https://schema.org/brand" in stored["attrs"]
    # read without the user context: full IRIs; with it: short names again
    plain = (await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1")).json()
    assert plain["type"] == "https://example.org/Vehicle" and "https://schema.org/brand" in plain
    short = await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1", headers={"Link": link})
    assert short.json()["type"] == "Vehicle" and "brandName" in short.json()
    ld = await client.get(
        f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1", headers={"Link": link, "Accept": "application/ld+json"}
    )
    assert ld.json()["@context"] == [url, CORE]


async def test_query_by_type_q_attrs_and_pagination_with_count(client: httpx.AsyncClient) -> None:
    for n, (speed, brand) in enumerate([(50, "Renault"), (90, "Mercedes"), (120, "Mercedes")], start=1):
        assert (await client.post(f"{BASE}/entities", json=vehicle(n, speed, brand), headers=LD)).status_code == 201
    fast = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "q": "speed>60"})
    assert [e["id"] for e in fast.json()] == ["urn:ngsi-ld:Vehicle:V2", "urn:ngsi-ld:Vehicle:V3"]
    both = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "q": 'brandName=="Mercedes";speed<100'})
    assert [e["id"] for e in both.json()] == ["urn:ngsi-ld:Vehicle:V2"]
    either = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "q": "speed<60|speed>100"})
    assert len(either.json()) == 2
    ranged = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "q": "speed==80..100"})
    assert [e["id"] for e in ranged.json()] == ["urn:ngsi-ld:Vehicle:V2"]
    rel = await client.get(f"{BASE}/entities", params={"q": "isParked==urn:ngsi-ld:OffStreetParking:Downtown1"})
    assert len(rel.json()) == 3
    observed = await client.get(
        f"{BASE}/entities", params={"type": "Vehicle", "q": "speed.observedAt>=2026-12-01T00:00:00Z"}
    )
    assert len(observed.json()) == 3
    pattern = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "q": 'brandName~=".*ault"'})
    assert [e["id"] for e in pattern.json()] == ["urn:ngsi-ld:Vehicle:V1"]
    page = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "limit": 2, "count": "true"})
    assert page.headers["ngsild-results-count"] == "3"
    assert len(page.json()) == 2 and 'rel="next"' in page.headers["link"]
    second = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "limit": 2, "offset": 2})
    assert [e["id"] for e in second.json()] == ["urn:ngsi-ld:Vehicle:V3"]
    picked = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "attrs": "speed", "options": "keyValues"})
    assert picked.json()[0] == {"id": "urn:ngsi-ld:Vehicle:V1", "type": "Vehicle", "speed": 50}
    only_count = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "limit": 0, "count": "true"})
    assert only_count.json() == [] and only_count.headers["ngsild-results-count"] == "3"
    ids = await client.get(f"{BASE}/entities", params={"id": "urn:ngsi-ld:Vehicle:V1,urn:ngsi-ld:Vehicle:V3"})
    assert len(ids.json()) == 2
    id_pattern = await client.get(f"{BASE}/entities", params={"idPattern": "^urn:ngsi-ld:Vehicle:V[12]$"})
    assert len(id_pattern.json()) == 2
    bad_q = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "q": "speed>>"})
    assert bad_q.status_code == 400
    nothing = await client.get(f"{BASE}/entities")
    assert nothing.status_code == 400


async def test_geo_query_near_within_and_geojson(client: httpx.AsyncClient) -> None:
    for n in (1, 2):
        assert (await client.post(f"{BASE}/entities", json=vehicle(n * 100), headers=LD)).status_code == 201
    near = await client.get(
        f"{BASE}/entities",
        params={
            "type": "Vehicle",
            "georel": "near;maxDistance==2000",
            "geometry": "Point",
            "coordinates": "[-1.45,47.21]",
        },
    )
    assert [e["id"] for e in near.json()] == ["urn:ngsi-ld:Vehicle:V100"]
    within = await client.get(
        f"{BASE}/entities",
        params={
            "type": "Vehicle",
            "georel": "within",
            "geometry": "Polygon",
            "coordinates": "[[[-1.5,47.0],[-1.4,47.0],[-1.4,47.5],[-1.5,47.5],[-1.5,47.0]]]",
        },
    )
    assert [e["id"] for e in within.json()] == ["urn:ngsi-ld:Vehicle:V100"]
    geo = await client.get(f"{BASE}/entities", params={"type": "Vehicle"}, headers={"Accept": "application/geo+json"})
    assert geo.headers["content-type"].startswith("application/geo+json")
    collection = geo.json()
    assert collection["type"] == "FeatureCollection"
    assert collection["features"][0]["geometry"]["type"] == "Point"
    bad = await client.get(
        f"{BASE}/entities", params={"type": "Vehicle", "georel": "near", "geometry": "Point", "coordinates": "[0,0]"}
    )
    assert bad.status_code == 400

    for geometry, coordinates in (("Point", "[1]"), ("Polygon", "[[1,2]]")):  # PostGIS refused these: was a 500
        malformed = await client.get(
            f"{BASE}/entities",
            params={"type": "Vehicle", "georel": "within", "geometry": geometry, "coordinates": coordinates},
        )
        assert malformed.status_code == 400
    broken = {**vehicle(9), "location": {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": [[1, 2]]}}}
    assert (await client.post(f"{BASE}/entities", json=broken, headers=LD)).status_code == 400


async def test_update_append_partial_merge_replace_and_delete(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"{BASE}/entities", json=vehicle(), headers=LD)).status_code == 201
    url = f"{BASE}/entities/urn:ngsi-ld:Vehicle:V1"
    appended = await client.post(
        f"{url}/attrs", json={"color": {"type": "Property", "value": "red"}, "@context": [CORE]}, headers=LD
    )
    assert appended.status_code == 204
    no_overwrite = await client.post(
        f"{url}/attrs",
        params={"options": "noOverwrite"},
        json={"color": {"value": "blue"}, "@context": [CORE]},
        headers=LD,
    )
    assert no_overwrite.status_code == 207
    assert no_overwrite.json()["notUpdated"][0]["attributeName"] == "color"
    updated = await client.patch(
        f"{url}/attrs",
        json={
            "speed": {"type": "Property", "value": 10, "unitCode": "KMH"},
            "missing": {"value": 1},
            "@context": [CORE],
        },
        headers=LD,
    )
    assert updated.status_code == 207
    assert updated.json()["updated"] == ["speed"]
    partial = await client.patch(f"{url}/attrs/speed", json={"value": 12, "@context": [CORE]}, headers=LD)
    assert partial.status_code == 204
    body = (await client.get(url)).json()
    assert body["speed"]["value"] == 12 and body["speed"]["unitCode"] == "KMH"
    assert body["color"]["value"] == "red"
    merged = await client.patch(
        url, json={"color": "urn:ngsi-ld:null", "speed": {"value": 13}, "@context": [CORE]}, headers=LD
    )
    assert merged.status_code == 204
    body = (await client.get(url, params={"options": "sysAttrs"})).json()
    assert "color" not in body and body["speed"]["value"] == 13 and "createdAt" in body["speed"]
    deleted_attr = await client.delete(f"{url}/attrs/isParked", headers=TEST_ADMIN_AUTH)
    assert deleted_attr.status_code == 204
    assert (await client.delete(f"{url}/attrs/isParked", headers=TEST_ADMIN_AUTH)).status_code == 404
    replaced = await client.put(url, json={"type": "Vehicle", "wheels": {"value": 4}, "@context": [CORE]}, headers=LD)
    assert replaced.status_code == 204
    body = (await client.get(url, params={"options": "keyValues"})).json()
    assert body == {"id": "urn:ngsi-ld:Vehicle:V1", "type": "Vehicle", "wheels": 4}
    assert (await client.delete(url, headers=TEST_ADMIN_AUTH)).status_code == 204
    assert (await client.get(url)).status_code == 404
    assert (await client.delete(url, headers=TEST_ADMIN_AUTH)).status_code == 404


async def test_concise_input_and_output(client: httpx.AsyncClient) -> None:
    concise = {
        "id": "urn:ngsi-ld:Vehicle:C1",
        "type": "Vehicle",
        "speed": 50,
        "brandName": {"value": "Peugeot", "observedAt": "2026-12-01T10:00:00Z"},
        "owner": {"object": "urn:ngsi-ld:Person:1"},
        "name": {"languageMap": {"fr": "voiture", "en": "car"}},
        "location": {"type": "Point", "coordinates": [2.35, 48.85]},
        "@context": [CORE],
    }
    assert (await client.post(f"{BASE}/entities", json=concise, headers=LD)).status_code == 201
    url = f"{BASE}/entities/urn:ngsi-ld:Vehicle:C1"
    normalized = (await client.get(url)).json()
    assert normalized["speed"] == {"type": "Property", "value": 50}
    assert normalized["owner"]["type"] == "Relationship"
    assert normalized["name"]["type"] == "LanguageProperty"
    assert normalized["location"]["type"] == "GeoProperty"
    back = (await client.get(url, params={"options": "concise"})).json()
    assert back["speed"] == 50
    assert back["owner"] == {"object": "urn:ngsi-ld:Person:1"}
    french = (await client.get(url, params={"lang": "fr"})).json()
    assert french["name"] == {"type": "Property", "value": "voiture", "lang": "fr"}


async def test_batch_create_upsert_update_delete(client: httpx.AsyncClient) -> None:
    batch = [vehicle(1), vehicle(2), {"id": "bad", "type": "Vehicle", "@context": [CORE]}]
    created = await client.post(f"{BASE}/entityOperations/create", json=batch, headers=LD)
    assert created.status_code == 207
    assert created.json()["success"] == ["urn:ngsi-ld:Vehicle:V1", "urn:ngsi-ld:Vehicle:V2"]
    assert created.json()["errors"][0]["error"]["status"] == 400
    upsert = await client.post(f"{BASE}/entityOperations/upsert", json=[vehicle(2, 5), vehicle(3)], headers=LD)
    assert upsert.status_code == 201
    assert upsert.json() == ["urn:ngsi-ld:Vehicle:V3"]
    update = await client.post(
        f"{BASE}/entityOperations/update",
        json=[{"id": "urn:ngsi-ld:Vehicle:V3", "type": "Vehicle", "speed": {"value": 1}, "@context": [CORE]}],
        headers=LD,
    )
    assert update.status_code == 204
    speeds = await client.get(f"{BASE}/entities", params={"type": "Vehicle", "options": "keyValues", "attrs": "speed"})
    assert [e["speed"] for e in speeds.json()] == [80, 5, 1]
    deleted = await client.post(
        f"{BASE}/entityOperations/delete",
        json=["urn:ngsi-ld:Vehicle:V1", "urn:ngsi-ld:Vehicle:V9"],
        headers=JSON,
    )
    assert deleted.status_code == 207
    assert deleted.json()["errors"][0]["error"]["status"] == 404


async def test_writes_need_a_key_and_tenants_are_refused(client: httpx.AsyncClient) -> None:
    anonymous = await client.post(f"{BASE}/entities", json=vehicle(), headers={"Content-Type": "application/ld+json"})
    assert anonymous.status_code == 401
    tenant = await client.get(f"{BASE}/entities", params={"type": "Vehicle"}, headers={"NGSILD-Tenant": "other"})
    assert tenant.status_code == 404
    assert tenant.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant"


async def test_core_context_is_served_by_us(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/jsonldContexts/ngsi-ld-core-context-v1.8.jsonld")
    assert response.status_code == 200
    assert response.json()["@context"]["ngsi-ld"] == "https://uri.etsi.org/ngsi-ld/"
