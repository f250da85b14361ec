"""Conformance class Batch Request (JSON): ordered requests, $id references, atomicity groups."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.sensorthings.conftest import AUTH, BASE, get

pytestmark = pytest.mark.db


async def test_json_batch_with_references_and_reads(sta: httpx.AsyncClient) -> None:
    batch = {
        "requests": [
            {"id": "t1", "method": "post", "url": "Things", "body": {"name": "batch thing", "description": ""}},
            {
                "id": "l1",
                "method": "post",
                "url": "$t1/Locations",
                "body": {
                    "name": "spot",
                    "description": "",
                    "encodingType": "application/geo+json",
                    "location": {"type": "Point", "coordinates": [1, 2]},
                },
            },
            {"id": "r1", "method": "get", "url": "Things?$expand=Locations"},
            {"id": "bad", "method": "get", "url": "Things(999)"},
        ]
    }
    response = await sta.post(f"{BASE}/$batch", json=batch, headers=AUTH)
    assert response.status_code == 200
    replies = {r["id"]: r for r in response.json()["responses"]}
    assert replies["t1"]["status"] == 201
    assert replies["t1"]["location"].endswith("/Things(1)")
    assert replies["l1"]["status"] == 201
    assert replies["r1"]["body"]["value"][0]["Locations"][0]["name"] == "spot"
    assert replies["bad"]["status"] == 404


async def test_atomicity_group_rolls_back_whole(sta: httpx.AsyncClient) -> None:
    batch = {
        "requests": [
            {"id": "1", "atomicityGroup": "g", "method": "post", "url": "Things", "body": {"name": "a"}},
            {"id": "2", "atomicityGroup": "g", "method": "post", "url": "Datastreams", "body": {"name": "no links"}},
            {"id": "3", "method": "post", "url": "Things", "body": {"name": "b"}},
        ]
    }
    response = await sta.post(f"{BASE}/$batch", json=batch, headers=AUTH)
    statuses = [r["status"] for r in response.json()["responses"]]
    assert statuses == [400, 400, 201]
    assert [t["name"] for t in (await get(sta, "Things"))["value"]] == ["b"]


async def test_batch_writes_need_a_key(sta: httpx.AsyncClient) -> None:
    batch = {
        "requests": [
            {"id": "1", "method": "post", "url": "Things", "body": {"name": "a"}},
            {"id": "2", "method": "get", "url": "Things"},
        ]
    }
    response = await sta.post(f"{BASE}/$batch", json=batch)
    assert [r["status"] for r in response.json()["responses"]] == [401, 200]
