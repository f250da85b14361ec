"""Conformance class Sensing Core (+ request data): resources, navigation, $ref, $value, links, paging, access."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import make_key
from tests.integration.sensorthings.conftest import AUTH, BASE, app_client, create, get, thing_body

pytestmark = pytest.mark.db

SETS = (
    "Things",
    "Locations",
    "HistoricalLocations",
    "Sensors",
    "ObservedProperties",
    "Datastreams",
    "FeaturesOfInterest",
    "Observations",
)


async def _observations(http: httpx.AsyncClient, ds: int, n: int, day: str = "2026-11-01") -> None:
    body = [
        {
            "Datastream": {"@iot.id": ds},
            "components": ["phenomenonTime", "result"],
            "dataArray": [[f"{day}T{h:02d}:00:00Z", 10.0 + h] for h in range(n)],
        }
    ]
    response = await http.post(f"{BASE}/CreateObservations", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    assert all(link != "error" for link in response.json())


async def test_service_root_lists_the_nine_sets_and_conformance(sta: httpx.AsyncClient) -> None:
    root = await get(sta, "")
    assert [e["name"] for e in root["value"]] == [*SETS[:6], "MultiDatastreams", *SETS[6:]]
    assert all(e["url"] == f"http://testserver{BASE}/{e['name']}" for e in root["value"])
    conformance = root["serverSettings"]["conformance"]
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data" in conformance
    assert "https://territoire-data.fr/spec/sta/aggregates" in conformance
    assert "https://territoire-data.fr/spec/sta/mqtt-updates" in conformance
    # every conformance class of the standard we pass, each proven by its test module in this folder
    req = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
    assert {c.removeprefix(req) for c in conformance if c.startswith(req)} == {
        "datamodel",  # test_sensing_core
        "resource-path/resource-path-to-entities",  # test_sensing_core
        "request-data",  # test_filtering, test_select
        "create-update-delete",  # test_create_update_delete
        "data-array/data-array",  # test_sensing_core
        "batch-request/batch-request",  # test_batch
        "multi-datastream",  # test_multi_datastream
        "create-observations-via-mqtt/observations-creation",  # test_mqtt_create
        "receive-updates-via-mqtt/receive-updates",  # test_mqtt_receive
    }
    for mqtt_class in (
        "create-observations-via-mqtt/observations-creation",
        "receive-updates-via-mqtt/receive-updates",
    ):
        assert root["serverSettings"][req + mqtt_class]["endpoints"][0].startswith("mqtt://127.0.0.1:")


async def test_entity_by_id_navigation_selflinks(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    tid = thing["@iot.id"]
    assert thing["@iot.selfLink"] == f"http://testserver{BASE}/Things({tid})"
    assert thing["Datastreams@iot.navigationLink"] == f"http://testserver{BASE}/Things({tid})/Datastreams"
    for name in SETS[:-2]:  # every set but FoIs and Observations has something now
        assert (await get(sta, name))["value"], name
    ds = (await get(sta, f"Things({tid})/Datastreams"))["value"][0]
    assert (await get(sta, f"Datastreams({ds['@iot.id']})/Thing"))["@iot.id"] == tid
    assert (await get(sta, f"Datastreams({ds['@iot.id']})/Thing/Locations"))["value"][0]["name"].endswith("site")
    sensor = await get(sta, f"Datastreams({ds['@iot.id']})/Sensor")
    assert sensor["metadata"] == "https://example.org/dht22.pdf"
    assert (await get(sta, f"Things({tid})/name")) == {"name": "Station Bellecour"}
    raw = await sta.get(f"{BASE}/Things({tid})/name/$value")
    assert raw.status_code == 200
    assert raw.text == "Station Bellecour"
    refs = await get(sta, "Things/$ref")
    assert refs["value"] == [{"@iot.selfLink": thing["@iot.selfLink"]}]
    assert (await get(sta, f"Things({tid})/Datastreams/$ref"))["value"][0]["@iot.selfLink"].endswith(
        f"Datastreams({ds['@iot.id']})"
    )
    # the Thing got a HistoricalLocation when its Location was set
    hls = await get(sta, f"Things({tid})/HistoricalLocations", **{"$expand": "Locations"})
    assert len(hls["value"]) == 1
    assert hls["value"][0]["Locations"][0]["name"].endswith("site")


async def test_missing_entities_and_paths_are_404_problems(sta: httpx.AsyncClient) -> None:
    for path in ("Things(99)", "Things(99)/Datastreams", "Nothing", "Things(1)/nope"):
        response = await sta.get(f"{BASE}/{path}")
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


async def test_paging_with_next_links_top_skip_count(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    await _observations(sta, ds, 7)
    page = await get(sta, f"Datastreams({ds})/Observations", **{"$top": "3", "$count": "true"})
    assert page["@iot.count"] == 7
    assert len(page["value"]) == 3
    seen = [o["result"] for o in page["value"]]
    while "@iot.nextLink" in page:
        response = await sta.get(page["@iot.nextLink"])
        assert response.status_code == 200
        page = response.json()
        seen += [o["result"] for o in page["value"]]
    assert seen == [10.0 + h for h in range(7)]
    only_count = await get(sta, "Observations", **{"$top": "0", "$count": "true"})
    assert only_count == {"@iot.count": 7, "value": []}
    skipped = await get(sta, "Observations", **{"$skip": "5", "$orderby": "phenomenonTime"})
    assert [o["result"] for o in skipped["value"]] == [15.0, 16.0]


async def test_default_and_maximum_top(sta_settings, engine, db) -> None:  # type: ignore[no-untyped-def]
    small = sta_settings.model_copy(update={"sta_default_top": 2, "sta_max_top": 3})
    async with app_client(small, engine) as http:
        for i in range(5):
            await create(http, "Things", {"name": f"t{i}", "description": ""})
        assert len((await get(http, "Things"))["value"]) == 2
        page = await get(http, "Things", **{"$top": "100"})
        assert len(page["value"]) == 3
        assert "$top=3" in page["@iot.nextLink"]


async def test_select_expand_nested_with_own_options(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body(n_ds=2))
    for ds in (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"]:
        await _observations(sta, ds["@iot.id"], 5)
    body = await get(
        sta,
        "Things",
        **{
            "$select": "name,id",
            "$expand": "Datastreams($filter=endswith(name,'1');$select=name;"
            "$expand=Observations($top=1;$orderby=phenomenonTime desc;$select=result,phenomenonTime))",
        },
    )
    (t,) = body["value"]
    assert set(t) == {"@iot.id", "name", "Datastreams"}
    (ds,) = t["Datastreams"]
    assert ds["name"].endswith("temperature 1")
    assert ds["Observations"] == [{"phenomenonTime": "2026-11-01T04:00:00Z", "result": 14.0}]
    assert "Observations@iot.nextLink" in ds
    slash = await get(sta, "Things", **{"$expand": "Datastreams/Observations($top=2;$count=true)"})
    assert all(
        len(d["Observations"]) == 2 and d["Observations@iot.count"] == 5 for d in slash["value"][0]["Datastreams"]
    )


async def test_expanded_latest_observations_are_exact_with_or_without_the_recent_window(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    thing = await create(sta, "Things", thing_body(n_ds=3))
    ids = [d["@iot.id"] for d in (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"]]
    await _observations(sta, ids[0], 5, "2026-11-01")  # dense: the recent window answers
    await _observations(sta, ids[1], 1, "2026-08-01")  # sparse: two observations months apart
    await _observations(sta, ids[1], 1, "2026-11-01")
    expand = {"$expand": "Datastreams($orderby=id;$expand=Observations($top=1;$orderby=phenomenonTime desc))"}

    async def latest() -> list[tuple[list[str], bool]]:
        body = await get(sta, f"Things({thing['@iot.id']})", **expand)
        return [
            ([o["phenomenonTime"] for o in d["Observations"]], "Observations@iot.nextLink" in d)
            for d in body["Datastreams"]
        ]

    assert await latest() == [
        (["2026-11-01T04:00:00Z"], True),
        (["2026-11-01T00:00:00Z"], True),
        ([], False),
    ]
    # the Datastream's extent still says November, but its November observation is gone
    await db.execute("DELETE FROM observation WHERE datastream_id = $1 AND phenomenon_time > '2026-10-01'", ids[1])
    assert (await latest())[1] == (["2026-08-01T00:00:00Z"], False)


async def test_latest_observation_and_data_array(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    await _observations(sta, ds, 4)
    latest = await get(sta, f"Datastreams({ds})/Observations", **{"$top": "1", "$orderby": "phenomenonTime desc"})
    assert latest["value"][0]["result"] == 13.0
    arr = await get(
        sta, f"Datastreams({ds})/Observations", **{"$resultFormat": "dataArray", "$select": "phenomenonTime,result"}
    )
    (group,) = arr["value"]
    assert group["components"] == ["phenomenonTime", "result"]
    assert group["dataArray"][0] == ["2026-11-01T00:00:00Z", 10.0]
    assert group["dataArray@iot.count"] == 4
    # the Datastream's phenomenonTime extent is kept by the database trigger
    assert (await get(sta, f"Datastreams({ds})"))["phenomenonTime"] == "2026-11-01T00:00:00Z/2026-11-01T03:00:00Z"


async def test_aggregates_extension(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    await _observations(sta, ds, 24, "2026-11-01")
    await _observations(sta, ds, 2, "2026-11-02")
    daily = await get(sta, f"Datastreams({ds})/Aggregates", interval="day", aggregate="min,max,avg,count,last,sum")
    assert daily["value"] == [
        {
            "phenomenonTime": "2026-11-01T00:00:00Z/2026-11-02T00:00:00Z",
            "min": 10.0,
            "max": 33.0,
            "avg": 21.5,
            "count": 24,
            "last": 33.0,
            "sum": 516.0,
        },
        {
            "phenomenonTime": "2026-11-02T00:00:00Z/2026-11-03T00:00:00Z",
            "min": 10.0,
            "max": 11.0,
            "avg": 10.5,
            "count": 2,
            "last": 11.0,
            "sum": 21.0,
        },
    ]
    hourly = await get(
        sta,
        f"Datastreams({ds})/Aggregates",
        interval="hour",
        aggregate="count",
        **{"$filter": "phenomenonTime ge 2026-11-01T05:00:00Z and phenomenonTime lt 2026-11-01T08:00:00Z"},
    )
    assert [b["count"] for b in hourly["value"]] == [1, 1, 1]
    assert hourly["source"] == "rollup-15min"
    # a filter the rollups cannot answer reads the observations, with the same results
    raw = await get(
        sta,
        f"Datastreams({ds})/Aggregates",
        interval="day",
        aggregate="min,max,avg,count,last,sum",
        **{"$filter": "result ge -1000"},
    )
    assert raw["source"] == "observations"
    assert raw["value"] == daily["value"]
    assert daily["source"] == "rollup-day"
    # day bounds read the daily rollups, quarter-hour bounds the 15-minute ones, others the observations
    for bounds, source, counts in (
        ("ge 2026-11-02T00:00:00Z and phenomenonTime lt 2026-11-03T00:00:00Z", "rollup-day", [2]),
        ("ge 2026-11-02T01:00:00+01:00", "rollup-day", [2]),
        ("ge 2026-11-01T22:45:00Z", "rollup-15min", [1, 2]),
        ("ge 2026-11-01T22:59:00Z", "observations", [1, 2]),
    ):
        by_day = await get(
            sta,
            f"Datastreams({ds})/Aggregates",
            interval="day",
            aggregate="count",
            **{"$filter": f"phenomenonTime {bounds}"},
        )
        assert (by_day["source"], [b["count"] for b in by_day["value"]]) == (source, counts), bounds
    bad = await sta.get(f"{BASE}/Datastreams({ds})/Aggregates", params={"interval": "week"})
    assert bad.status_code == 400


async def test_rollups_stay_exact_through_updates_and_deletes(sta: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    await _observations(sta, ds, 24, "2026-11-01")
    await db.execute("DELETE FROM observation WHERE datastream_id = $1 AND result_number > 30", ds)
    last = await get(sta, f"Datastreams({ds})/Observations", **{"$top": "1", "$orderby": "phenomenonTime desc"})
    patched = await sta.patch(f"{BASE}/Observations({last['value'][0]['@iot.id']})", json={"result": 100}, headers=AUTH)
    assert patched.status_code == 200
    for interval in ("15min", "hour", "day", "month"):
        fast = await get(
            sta, f"Datastreams({ds})/Aggregates", interval=interval, aggregate="min,max,avg,count,last,sum"
        )
        slow = await get(
            sta,
            f"Datastreams({ds})/Aggregates",
            interval=interval,
            aggregate="min,max,avg,count,last,sum",
            **{"$filter": "result ge -1000"},
        )
        assert fast["source"] == ("rollup-day" if interval in ("day", "month") else "rollup-15min")
        assert fast["value"] == slow["value"]
    day = (await get(sta, f"Datastreams({ds})/Aggregates", interval="day", aggregate="max,count,last"))["value"][0]
    assert day == {
        "phenomenonTime": "2026-11-01T00:00:00Z/2026-11-02T00:00:00Z",
        "max": 100.0,
        "count": 21,
        "last": 100.0,
    }
    assert await db.fetchval("SELECT sta_rebuild_rollups()") == 1 * 21


async def test_count_estimate_is_flagged_beyond_the_limit(sta_settings, engine, db) -> None:  # type: ignore[no-untyped-def]
    low = sta_settings.model_copy(update={"sta_count_exact_limit": 10})
    async with app_client(low, engine) as http:
        thing = await create(http, "Things", thing_body())
        ds = (await get(http, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
        await _observations(http, ds, 24)
        await db.execute("ANALYZE observation; ANALYZE thing; ANALYZE datastream; ANALYZE dataset")
        body = await get(http, "Observations", **{"$count": "true", "$top": "1"})
        assert body["@territoire.countEstimated"] is True
        assert body["@iot.count"] > 10
        exact = await get(http, "Things", **{"$count": "true"})
        assert exact["@iot.count"] == 1
        assert "@territoire.countEstimated" not in exact


async def test_restricted_dataset_entities_are_invisible(
    sta: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    public = await create(sta, "Things", thing_body("public"))
    secret = await create(sta, "Things", thing_body("secret", 5.0, 46.0))
    dataset = await db.fetchval(
        "INSERT INTO dataset (slug, title, kind, access, status) "
        "VALUES ('secret', 'Secret', 'sensors', 'restricted', 'published') "
        "RETURNING id"
    )
    await db.execute("UPDATE thing SET dataset_id = $1 WHERE id = $2", dataset, secret["@iot.id"])
    await db.execute("UPDATE datastream SET dataset_id = $1 WHERE thing_id = $2", dataset, secret["@iot.id"])
    sds = await db.fetchval("SELECT id FROM datastream WHERE thing_id = $1", secret["@iot.id"])
    await _observations(sta, (await get(sta, f"Things({public['@iot.id']})/Datastreams"))["value"][0]["@iot.id"], 2)
    await db.execute(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES ($1, now(), 1)", sds
    )
    things = await get(sta, "Things", **{"$count": "true", "$expand": "Datastreams"})
    assert things["@iot.count"] == 1
    assert [t["name"] for t in things["value"]] == ["public"]
    assert (await sta.get(f"{BASE}/Things({secret['@iot.id']})")).status_code == 404
    assert (await sta.get(f"{BASE}/Datastreams({sds})/Observations")).status_code == 404
    assert (await get(sta, "Observations", **{"$count": "true"}))["@iot.count"] == 2
    assert (await get(sta, "Datastreams", **{"$count": "true"}))["@iot.count"] == 1
    assert (await get(sta, "Sensors", **{"$count": "true"}))["@iot.count"] == 1
    assert (await get(sta, "Locations", **{"$count": "true"}))["@iot.count"] == 1
    filtered = await get(sta, "Locations", **{"$filter": "Things/name eq 'secret'"})
    assert filtered["value"] == []
    # writes cannot reach it either, and a Datastream moved to it takes its dataset along
    publisher = {"X-API-Key": await make_key(engine, "publisher")}  # not granted the restricted dataset
    hidden = await sta.patch(f"{BASE}/Things({secret['@iot.id']})", json={"name": "x"}, headers=publisher)
    assert hidden.status_code == 404
    # A key with a read grant sees it; the admin sees everything.
    slug = await db.fetchval(
        "SELECT d.slug FROM dataset d JOIN thing t ON t.dataset_id = d.id WHERE t.id = $1", secret["@iot.id"]
    )
    reader = {"X-API-Key": await make_key(engine, "reader", [(slug, "read")])}
    assert (await sta.get(f"{BASE}/Things({secret['@iot.id']})", headers=reader)).status_code == 200
    assert (await sta.get(f"{BASE}/Things({secret['@iot.id']})", headers=AUTH)).status_code == 200
    public_ds = (await get(sta, f"Things({public['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    opened = await db.fetchval(
        "INSERT INTO dataset (slug, title, kind, access, status) "
        "VALUES ('open', 'Open', 'sensors', 'public', 'published') RETURNING id"
    )
    await db.execute("UPDATE thing SET dataset_id = $1 WHERE id = $2", opened, secret["@iot.id"])
    moved = await sta.patch(
        f"{BASE}/Datastreams({public_ds})", json={"Thing": {"@iot.id": secret["@iot.id"]}}, headers=AUTH
    )
    assert moved.status_code == 200
    assert await db.fetchval("SELECT dataset_id FROM datastream WHERE id = $1", public_ds) == opened


async def test_latest_observation_follows_every_write_and_stays_restricted(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """`$top=1&$orderby=phenomenonTime desc` reads the Datastream's latest phenomenonTime (0006_stadb):
    after HTTP creates, a dataArray create, a PATCH of the time, deletes, and a batch, it answers as a plain
    ordered read of the observations does, nextLink included; a restricted Datastream stays a 404."""
    thing = await create(sta, "Things", thing_body(n_ds=2))
    ds, other = [d["@iot.id"] for d in (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"]]
    newest = {"$top": "1", "$orderby": "phenomenonTime desc"}

    async def latest(http: httpx.AsyncClient = sta, datastream: int = ds) -> tuple[list[str], bool]:
        body = await get(http, f"Datastreams({datastream})/Observations", **newest)
        # the same page without the pointer: an id tie-breaker makes it an ordinary ordered read
        plain = await get(
            http, f"Datastreams({datastream})/Observations", **{"$top": "1", "$orderby": "phenomenonTime desc,id"}
        )
        page = ([o["phenomenonTime"] for o in body["value"]], "@iot.nextLink" in body)
        assert page == ([o["phenomenonTime"] for o in plain["value"]], "@iot.nextLink" in plain)
        return page

    assert await latest() == ([], False)
    first = await create(
        sta, "Observations", {"Datastream": {"@iot.id": ds}, "phenomenonTime": "2026-05-01T10:00:00Z", "result": 1}
    )
    assert await latest() == (["2026-05-01T10:00:00Z"], False)
    await _observations(sta, ds, 3, "2026-04-01")  # older: the latest stays
    assert await latest() == (["2026-05-01T10:00:00Z"], True)
    await _observations(sta, other, 2, "2026-06-01")  # another Datastream's rows change nothing here
    assert await latest() == (["2026-05-01T10:00:00Z"], True)
    moved = await sta.patch(
        f"{BASE}/Observations({first['@iot.id']})", json={"phenomenonTime": "2026-03-01T00:00:00Z"}, headers=AUTH
    )
    assert moved.status_code == 200, moved.text
    assert await latest() == (["2026-04-01T02:00:00Z"], True)
    newest_id = (await get(sta, f"Datastreams({ds})/Observations", **newest))["value"][0]["@iot.id"]
    assert (await sta.delete(f"{BASE}/Observations({newest_id})", headers=AUTH)).status_code == 200
    assert await latest() == (["2026-04-01T01:00:00Z"], True)
    batch = {
        "requests": [
            {
                "id": "1",
                "atomicityGroup": "g",
                "method": "post",
                "url": "Observations",
                "body": {"Datastream": {"@iot.id": ds}, "phenomenonTime": "2026-07-01T00:00:00Z", "result": 5},
            }
        ]
    }
    response = await sta.post(f"{BASE}/$batch", json=batch, headers=AUTH)
    assert response.status_code == 200, response.text
    assert await latest() == (["2026-07-01T00:00:00Z"], True)
    await db.execute("DELETE FROM observation WHERE datastream_id = $1 AND phenomenon_time < '2026-07-01'", ds)
    assert await latest() == (["2026-07-01T00:00:00Z"], False)
    # restricted: anonymous readers get a 404, not the latest value
    dataset = await db.fetchval(
        "INSERT INTO dataset (slug, title, kind, access, status) "
        "VALUES ('hidden', 'Hidden', 'sensors', 'restricted', 'published') "
        "RETURNING id"
    )
    await db.execute("UPDATE datastream SET dataset_id = $1 WHERE id = $2", dataset, ds)
    hidden = await sta.get(f"{BASE}/Datastreams({ds})/Observations", params=newest)
    assert hidden.status_code == 404
    admin = await sta.get(f"{BASE}/Datastreams({ds})/Observations", params=newest, headers=AUTH)
    assert [o["phenomenonTime"] for o in admin.json()["value"]] == ["2026-07-01T00:00:00Z"]
