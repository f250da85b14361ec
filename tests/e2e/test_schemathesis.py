"""Property-based fuzzing of every operation of our own contract (openapi/openapi.json) with schemathesis.

A live `territoire-data serve` runs on a throwaway database loaded with the demo territory (two hours of sensor
history), and schemathesis sends generated requests with the admin key, so writes are exercised too. Checks: no
5xx, status codes and content types the contract declares, bodies that match the declared schemas. Bounded and
deterministic (derandomized hypothesis, a fixed number of examples per operation) to stay within a few minutes.
TERRITOIRE_FUZZ_EXAMPLES raises the number of examples for a longer local run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from territoire_data.db import migrate as migrations
from territoire_data.demo import load_demo
from tests.conftest import ROOT, TEST_ADMIN_AUTH, TEST_ADMIN_KEY, LiveServer, create_database, drop_database
from tests.conftest import make_settings as _make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.db, pytest.mark.slow]

EXAMPLES = int(os.environ.get("TERRITOIRE_FUZZ_EXAMPLES", "60"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# NGSI-LD's writes take JSON-LD bodies whose media types and error answers (415, 207 multi-status) the OpenAPI
# document does not declare yet: ETSI's conformance suite checks them (issue 21); its reads are fuzzed here.
schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json").exclude(
    path_regex="^/ngsi-ld/", method=["POST", "PUT", "PATCH"]
)

# Ids the demo territory holds: random ids only ever reach the 404 branch, so half the cases aim at real ones.
TABULAR = ["sanisettes-paris", "bornes-recharge-irve", "sites-comptage-velo-loire", "precipitations-alba-la-romaine"]
DATASETS = [*TABULAR, "comptages-velo-loire-2022", "capteurs-lorawan", "capteurs-ttn", "capteurs-senml"]
STA_PATHS = [
    "Things",
    "Things(1)",
    "Things(1)/Datastreams",
    "Things(1)/Locations",
    "Datastreams",
    "Datastreams(1)",
    "Datastreams(1)/Observations",
    "Datastreams(1)/Aggregates",
    "Datastreams(1)/Thing/name",
    "Datastreams(1)/Sensor/$ref",
    "Observations",
    "Observations(1)/result/$value",
    "Locations",
    "HistoricalLocations",
    "Sensors",
    "ObservedProperties",
    "FeaturesOfInterest",
]

# The query languages the contract describes only as strings, drawn from their grammars (valid and near-valid
# expressions reach the SQL compilers, where type mismatches hide).
_ODATA_LEAVES = st.sampled_from(
    [
        "id",
        "name",
        "description",
        "result",
        "phenomenonTime",
        "resultTime",
        "Datastream/name",
        "Datastream/Thing/name",
        "Thing/properties/owner",
        "properties/type",
        "unitOfMeasurement/symbol",
        "location",
        "feature",
        "1",
        "-2.5",
        "'a''b'",
        "null",
        "true",
        "2024-01-01T00:00:00Z",
        "geography'POINT(-1.55 47.2)'",
        "geography'POLYGON((-2 47, -1 47, -1 48, -2 48, -2 47))'",
        "duration'PT1H'",
        "now()",
    ]
)
_ODATA = st.recursive(
    _ODATA_LEAVES,
    lambda inner: st.one_of(
        st.tuples(
            inner,
            st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le", "add", "sub", "mul", "div", "mod", "and", "or"]),
            inner,
        ).map(" ".join),
        inner.map(lambda e: f"not {e}"),
        inner.map(lambda e: f"({e})"),
        st.tuples(
            st.sampled_from(["length", "tolower", "trim", "year", "hour", "round", "date", "geo.length"]), inner
        ).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(
            st.sampled_from(
                [
                    "substringof",
                    "startswith",
                    "concat",
                    "indexof",
                    "geo.distance",
                    "geo.intersects",
                    "st_within",
                    "st_contains",
                ]
            ),
            inner,
            inner,
        ).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
    ),
    max_leaves=6,
)
_STA_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "$filter": _ODATA,
        "$orderby": st.lists(
            st.tuples(_ODATA_LEAVES, st.sampled_from(["", " asc", " desc"])), min_size=1, max_size=3
        ).map(lambda items: ",".join(a + b for a, b in items)),
        "$expand": st.sampled_from(
            [
                "Datastreams",
                "Datastreams/Observations",
                "Locations,Datastreams($top=1)",
                "Datastreams($expand=Observations($top=2;$orderby=phenomenonTime desc))",
                "Observations($filter=result gt 10;$select=result)",
                "Thing/Locations",
            ]
        ),
        "$select": st.sampled_from(["id", "name,description", "result,phenomenonTime", "@iot.id", "properties"]),
        "$top": st.integers(0, 20).map(str),
        "$skip": st.integers(0, 5).map(str),
        "$count": st.sampled_from(["true", "false"]),
        "$resultFormat": st.just("dataArray"),
        "interval": st.sampled_from(["15min", "hour", "day", "month"]),
        "aggregate": st.sampled_from(["avg", "min,max,count", "sum,last"]),
    },
)
_CQL2_LEAVES = st.sampled_from(
    [
        "ARRONDISSEMENT",
        "TYPE",
        "id",
        "geometry",
        "1",
        "2.5",
        "'a''b'",
        "TRUE",
        "NULL",
        "DATE('2024-01-01')",
        "TIMESTAMP('2024-01-01T00:00:00Z')",
        "POINT(2.35 48.85)",
        "BBOX(2, 48, 3, 49)",
        "puissance_nominale",
        "date_maj",
        "nom_station",
        "consolidated_longitude",
    ]
)
_CQL2 = st.recursive(
    _CQL2_LEAVES,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["=", "<>", "<", ">=", "+", "-", "*", "/", "AND", "OR", "LIKE"]), inner).map(
            " ".join
        ),
        inner.map(lambda e: f"NOT ({e})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} BETWEEN {t[1]} AND {t[1]}"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} IN ({t[1]})"),
        inner.map(lambda e: f"{e} IS NULL"),
        inner.map(lambda e: f"CASEI({e})"),
        st.tuples(
            st.sampled_from(["S_INTERSECTS", "S_WITHIN", "S_CONTAINS", "T_BEFORE", "T_INTERSECTS"]), inner, inner
        ).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.tuples(inner, inner).map(lambda t: f"S_DWITHIN({t[0]}, {t[1]}, 100, meters)"),
    ),
    max_leaves=5,
)
_FEATURE_OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "filter": _CQL2,
        "sortby": st.sampled_from(["id", "-id", "ARRONDISSEMENT,-TYPE", "+nom_station", "date_maj DESC"]),
        "bbox": st.sampled_from(["2,48,3,49", "-180,-90,180,90", "600000,6800000,700000,6900000"]),
        "bbox-crs": st.sampled_from(
            ["http://www.opengis.net/def/crs/EPSG/0/2154", "http://www.opengis.net/def/crs/OGC/1.3/CRS84"]
        ),
        "crs": st.sampled_from(
            ["http://www.opengis.net/def/crs/EPSG/0/2154", "http://www.opengis.net/def/crs/EPSG/0/3857"]
        ),
        "datetime": st.sampled_from(["2024-01-01/..", "../2030-01-01T00:00:00Z", "2025-01-01"]),
        "properties": st.sampled_from(["TYPE", "ADRESSE,HORAIRE", "nom_station"]),
        "limit": st.integers(1, 50).map(str),
    },
)


def _aim(case: schemathesis.Case, data: st.DataObject) -> None:
    """Half the time, point the generated request at data the demo holds, with query options from the grammars."""
    # Deletes keep their random ids: aimed at the demo, the first ones would empty it for every later operation.
    if case.method.upper() == "DELETE" or not data.draw(st.booleans(), label="aim at demo data"):
        return
    path = case.operation.path
    params = case.path_parameters if case.path_parameters is not None else {}
    if "collectionId" in params:
        params["collectionId"] = data.draw(st.sampled_from(TABULAR), label="collection")
    if "slug" in params:
        params["slug"] = data.draw(st.sampled_from(DATASETS), label="slug")
    if path == "/sta/v1.1/{path}":
        params["path"] = data.draw(st.sampled_from(STA_PATHS), label="sta path")
        if case.method.upper() == "GET":
            case.query = data.draw(_STA_OPTIONS, label="odata options")
    if path.endswith("/items") or path.endswith("/records") or path.endswith("/exports/{fmt}"):
        options = data.draw(_FEATURE_OPTIONS, label="features options")
        if not path.endswith("/items"):
            names = {"filter": "where", "sortby": "order_by", "properties": "select", "bbox-crs": "bbox_crs"}
            options = {names.get(k, k): v for k, v in options.items() if k != "limit"}
        case.query = {**(case.query or {}), **options}


async def _prepare(url: str) -> None:
    settings_ = _make_settings(url)
    await load_demo(settings_, history_hours=2)
    conn = await asyncpg.connect(url)
    try:
        # The admin key with an id no generated path will name: DELETE /api/v1/keys/{id} must not revoke it.
        await conn.execute(
            "INSERT INTO api_key (id, prefix, key_hash, name, role) OVERRIDING SYSTEM VALUE "
            "VALUES (987654321, $1, $2, 'fuzz admin', 'admin')",
            TEST_ADMIN_KEY.split("_")[1],
            hashlib.sha256(TEST_ADMIN_KEY.encode()).hexdigest(),
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[LiveServer]:
    """A live server on a database of its own (writes from the fuzzer never reach other tests)."""
    name = f"td_test_fuzz_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = asyncio.run(create_database(name))
    try:
        migrations.upgrade(_make_settings(url))
        asyncio.run(_prepare(url))
        # No rate limit: the fuzzer sends hundreds of requests a minute from one address.
        server = LiveServer(
            _make_settings(url), env={"TERRITOIRE_RATE_LIMIT_PER_MINUTE": "0", "TERRITOIRE_LOG_LEVEL": "WARNING"}
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        asyncio.run(drop_database(name))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@schema.given(data=st.data())
def test_every_operation_honours_the_contract(
    case: schemathesis.Case, data: st.DataObject, fuzz_server: LiveServer
) -> None:
    _aim(case, data)
    case.call_and_validate(base_url=fuzz_server.url, headers=dict(TEST_ADMIN_AUTH), checks=CHECKS, timeout=30)
