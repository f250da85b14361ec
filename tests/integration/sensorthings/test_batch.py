"""Conformance class Batch Request: multipart/mixed (the standard's form) and JSON, $id references, atomicity."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration.sensorthings.conftest import AUTH, BASE, create, get

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


# --- the body references of the JSON batch (section 11.2.2 of the standard, as FROST reads it) --------------------


SENSOR = {
    "name": "DS18B20",
    "description": "DS18B20 is an air temperature sensor",
    "encodingType": "application/pdf",
    "metadata": "http://datasheets.maxim-ic.com/en/ds/DS18B20.pdf",
}


def _datastream(**links: Any) -> dict[str, Any]:
    return {
        "name": "Temperature Thing 5",
        "description": "The temperature of thing 5",
        "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"},
        "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
        **links,
    }


async def _thing_and_property(sta: httpx.AsyncClient) -> tuple[int, int]:
    thing = await create(sta, "Things", {"name": "Thing 0", "description": "It's a thing."})
    prop = await create(
        sta, "ObservedProperties", {"name": "T", "definition": "http://ucum.org/temperature", "description": "t"}
    )
    return thing["@iot.id"], prop["@iot.id"]


async def test_json_batch_references_a_new_entity_in_a_body(sta: httpx.AsyncClient) -> None:
    thing, prop = await _thing_and_property(sta)
    batch = {
        "requests": [
            {"id": "sensor1", "atomicityGroup": "g1", "method": "post", "url": "Sensors", "body": SENSOR},
            {
                "id": "any",
                "atomicityGroup": "g1",
                "method": "post",
                "url": f"Things({thing})/Datastreams",
                "body": _datastream(
                    ObservedProperty={"@iot.id": prop},
                    Sensor={"@iot.id": "$sensor1"},
                    properties={"copied": {"@iot.id": "$sensor1"}},  # free JSON is data, not a reference
                ),
            },
        ]
    }
    response = await sta.post(f"{BASE}/$batch", json=batch, headers=AUTH)
    replies = response.json()["responses"]
    assert [r["status"] for r in replies] == [201, 201], replies
    sensor_id = replies[0]["body"]["@iot.id"]
    datastream = await get(sta, f"Datastreams({replies[1]['body']['@iot.id']})", **{"$expand": "Sensor,Thing"})
    assert datastream["Sensor"]["@iot.id"] == sensor_id
    assert datastream["Thing"]["@iot.id"] == thing
    assert datastream["properties"] == {"copied": {"@iot.id": "$sensor1"}}


async def test_json_batch_unknown_body_reference_rolls_the_group_back(sta: httpx.AsyncClient) -> None:
    thing, prop = await _thing_and_property(sta)
    batch = {
        "requests": [
            {"id": "s", "atomicityGroup": "g1", "method": "post", "url": "Sensors", "body": SENSOR},
            {
                "id": "d",
                "atomicityGroup": "g1",
                "method": "post",
                "url": f"Things({thing})/Datastreams",
                "body": _datastream(ObservedProperty={"@iot.id": prop}, Sensor={"@iot.id": "$nope"}),
            },
        ]
    }
    replies = (await sta.post(f"{BASE}/$batch", json=batch, headers=AUTH)).json()["responses"]
    assert [r["status"] for r in replies] == [400, 400]
    assert "$nope" in replies[1]["body"]["detail"]
    assert (await get(sta, "Sensors"))["value"] == []


# --- multipart/mixed (OData 4.0 batch, section 11.2 of the standard) ---------------------------------------------


def _http_request(method: str, url: str, body: Any = None, content_id: str | None = None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        head += f"Content-ID: {content_id}\r\n"
    text = f"{head}\r\n{method} {url} HTTP/1.1\r\nHost: localhost\r\n"
    if body is None:
        return text + "\r\n\r\n"
    payload = json.dumps(body)
    return text + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n{payload}\r\n"


def _multipart(parts: list[str], boundary: str) -> str:
    return "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--"


def _changeset(parts: list[str], boundary: str) -> str:
    return f"Content-Type: multipart/mixed;boundary={boundary}\r\n\r\n" + _multipart(parts, boundary) + "\r\n"


@dataclass
class Answer:
    """One response of a multipart batch answer, read with the standard library's MIME parser."""

    status: int
    content_id: str | None
    headers: dict[str, str]
    body: Any


def _answers(response: httpx.Response) -> list[Answer | list[Answer]]:
    """Parse a multipart/mixed batch answer: one Answer per request, a list per change set."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=")
    document = email.message_from_bytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content,
        policy=email.policy.HTTP,
    )

    def one(part: email.message.Message) -> Answer:
        raw = part.get_payload(decode=True)
        assert isinstance(raw, bytes)
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        lines = head.decode().split("\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return Answer(status, part.get("Content-ID"), headers, json.loads(body) if body.strip() else None)

    out: list[Answer | list[Answer]] = []
    for part in document.iter_parts():
        if part.get_content_type() == "multipart/mixed":
            out.append([one(p) for p in part.iter_parts()])
        else:
            out.append(one(part))
    return out


async def _post_multipart(sta: httpx.AsyncClient, text: str, boundary: str, auth: bool = True) -> httpx.Response:
    headers = {"content-type": f"multipart/mixed;boundary={boundary}", **(AUTH if auth else {})}
    return await sta.post(f"{BASE}/$batch", content=text.encode(), headers=headers)


async def test_multipart_batch_of_the_standard_example(sta: httpx.AsyncClient) -> None:
    """Section 11.2.1: a query, a change set (insert + update), a query of a missing entity."""
    thing, _prop = await _thing_and_property(sta)
    batch = _multipart(
        [
            _http_request("GET", f"/v1.1/Things({thing})?$select=name"),
            _changeset(
                [
                    _http_request("POST", "/v1.1/Things", {"name": "New", "description": "Thing"}, "1"),
                    _http_request("PATCH", f"/v1.1/Things({thing})", {"name": "Patched"}, "2"),
                ],
                "changeset_77162fcd",
            ),
            _http_request("GET", "http://testserver/sta/v1.1/Things(999)"),
        ],
        "batch_36522ad7",
    )
    first, changeset, missing = _answers(await _post_multipart(sta, batch, "batch_36522ad7"))
    assert isinstance(first, Answer) and isinstance(changeset, list) and isinstance(missing, Answer)
    assert (first.status, first.body) == (200, {"name": "Thing 0"})
    assert [(a.status, a.content_id) for a in changeset] == [(201, "1"), (200, "2")]
    new_id = changeset[0].body["@iot.id"]
    assert changeset[0].headers["location"].endswith(f"/sta/v1.1/Things({new_id})")
    assert changeset[1].body["name"] == "Patched"
    assert missing.status == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert {t["name"] for t in (await get(sta, "Things"))["value"]} == {"New", "Patched"}


async def test_multipart_change_set_references_new_entities_by_content_id(sta: httpx.AsyncClient) -> None:
    """Section 11.2.2: `$<Content-ID>` in a URL and as a nested @iot.id, relative and absolute URLs."""
    thing, prop = await _thing_and_property(sta)
    location = {
        "name": "spot",
        "description": "",
        "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [4.83, 45.76]},
    }
    batch = _multipart(
        [
            _changeset(
                [
                    _http_request("POST", "Sensors", SENSOR, "sensor1"),
                    _http_request(
                        "POST",
                        f"/sta/v1.1/Things({thing})/Datastreams",
                        _datastream(ObservedProperty={"@iot.id": prop}, Sensor={"@iot.id": "$sensor1"}),
                        "ds",
                    ),
                    _http_request("POST", "Things", {"name": "second", "description": ""}, "t2"),
                    _http_request("POST", "$t2/Locations", location, "l2"),
                ],
                "cs1",
            ),
            _http_request("GET", "Things?$filter=name%20eq%20'second'&$expand=Locations($select=name)&$select=name"),
        ],
        "b1",
    )
    changeset, query = _answers(await _post_multipart(sta, batch, "b1"))
    assert isinstance(changeset, list) and isinstance(query, Answer)
    assert [(a.status, a.content_id) for a in changeset] == [(201, "sensor1"), (201, "ds"), (201, "t2"), (201, "l2")]
    datastream = await get(sta, f"Datastreams({changeset[1].body['@iot.id']})", **{"$expand": "Sensor"})
    assert datastream["Sensor"]["@iot.id"] == changeset[0].body["@iot.id"]
    assert query.body == {"value": [{"name": "second", "Locations": [{"name": "spot"}]}]}


async def test_multipart_change_set_is_atomic(sta: httpx.AsyncClient) -> None:
    """A change set whose second request fails leaves nothing behind and answers the failure alone."""
    batch = _multipart(
        [
            _changeset(
                [
                    _http_request("POST", "Things", {"name": "kept?", "description": ""}, "1"),
                    _http_request("POST", "Datastreams", {"name": "no links"}, "2"),
                ],
                "cs",
            ),
            _http_request("POST", "Things", {"name": "outside", "description": ""}),
        ],
        "b",
    )
    failed, outside = _answers(await _post_multipart(sta, batch, "b"))
    assert isinstance(failed, Answer) and isinstance(outside, Answer)
    assert (failed.status, failed.content_id) == (400, "2")
    assert "Datastream" in failed.body["detail"]
    assert outside.status == 201
    assert [t["name"] for t in (await get(sta, "Things"))["value"]] == ["outside"]


async def test_multipart_batch_writes_need_a_key_and_bad_bodies_say_where(sta: httpx.AsyncClient) -> None:
    batch = _multipart(
        [_http_request("POST", "Things", {"name": "a", "description": ""}), _http_request("GET", "Things")], "b"
    )
    refused, read_ok = _answers(await _post_multipart(sta, batch, "b", auth=False))
    assert isinstance(refused, Answer) and isinstance(read_ok, Answer)
    assert (refused.status, read_ok.status) == (401, 200)
    broken = "--b\r\nContent-Type: application/http\r\n\r\nPOST Things HTTP/1.1\r\n\r\n{not json\r\n--b--"
    response = await _post_multipart(sta, broken, "b")
    assert response.status_code == 400
    assert "batch part 1" in response.json()["detail"]
    unclosed = await _post_multipart(sta, "--b\r\nContent-Type: application/http\r\n\r\nGET Things HTTP/1.1\r\n", "b")
    assert unclosed.status_code == 400
    assert "closing delimiter" in unclosed.json()["detail"]
    no_boundary = await sta.post(f"{BASE}/$batch", content=b"x", headers={"content-type": "multipart/mixed", **AUTH})
    assert no_boundary.status_code == 400
