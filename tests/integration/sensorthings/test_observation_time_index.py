"""Observation pages not scoped to one Datastream (`/Observations?$orderby=phenomenonTime desc`, the dashboards'
"latest anywhere") read a few index entries per partition, newest first, instead of sorting every observation:
the phenomenon_time index of migration 0005_staidx, also under the visibility check of restricted datasets."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from territoire_data.auth.policy import ANONYMOUS, Principal
from territoire_data.sensorthings import jsonsql, odata, sql
from territoire_data.sensorthings.model import BY_NAME

ROWS_PER_DATASTREAM = 3_000  # hourly over about four months: several partitions


@pytest.fixture
async def observations(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO dataset (slug, kind, title, access, status) "
        "VALUES ('ouvert', 'sensors', 'Ouvert', 'public', 'published'), "
        "('ferme', 'sensors', 'Fermé', 'restricted', 'published');"
        "INSERT INTO sensor (name) VALUES ('s'); INSERT INTO observed_property (name) VALUES ('p');"
        "INSERT INTO thing (name, dataset_id) SELECT 't' || i, CASE WHEN i % 2 = 0 THEN "
        "(SELECT id FROM dataset WHERE slug = 'ferme') ELSE (SELECT id FROM dataset WHERE slug = 'ouvert') END "
        "FROM generate_series(1, 20) i;"
        "INSERT INTO datastream (name, thing_id, sensor_id, observed_property_id, dataset_id) "
        "SELECT 'd' || t.id, t.id, 1, 1, t.dataset_id FROM thing t"
    )
    await db.execute(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
        "SELECT d.id, date_trunc('hour', now()) - make_interval(hours => h) + make_interval(secs => d.id), h "
        "FROM datastream d, generate_series(0, $1 - 1) h",
        ROWS_PER_DATASTREAM,
    )
    await db.execute("ANALYZE observation")


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _nodes(child))]


@pytest.mark.parametrize(
    ("orderby", "filter_text"),
    [
        ("phenomenonTime desc", None),
        ("phenomenonTime asc", None),
        ("phenomenonTime desc", "phenomenonTime ge 2020-01-01T00:00:00Z"),
    ],
)
@pytest.mark.parametrize("admin", [False, True])
@pytest.mark.usefixtures("observations")
async def test_unscoped_time_order_reads_few_index_entries(
    db: asyncpg.Connection, orderby: str, filter_text: str | None, admin: bool
) -> None:
    principal = Principal(name="admin", role="admin") if admin else ANONYMOUS
    partitions = await db.fetchval(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'observation'::regclass AND c.reltuples > 0"
    )
    assert partitions >= 4  # the rows span several monthly partitions
    stmt = sql.collection_query(
        BY_NAME["Observation"],
        principal,
        filter_expr=odata.parse_filter(filter_text) if filter_text else None,
        orderby=odata.parse_orderby(orderby),
        top=100,
        skip=0,
        scope=None,
        shape=jsonsql.JsonShape("http://testserver/sta/v1.1"),
    )
    plan = json.loads(await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {stmt.sql}", *stmt.params))
    nodes = _nodes(plan[0]["Plan"])
    scans = [n for n in nodes if n.get("Relation Name", "").startswith("observation")]
    assert scans and all(n["Index Name"].endswith("_phenomenon_time_idx") for n in scans), scans
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    # One page of 101 (of the visible half when anonymous) plus the ties of the last instant and one row per
    # partition; not the 60,000 observations.
    assert read <= 400, read
    assert not any(n["Node Type"] == "Sort" for n in nodes)
    rows = await db.fetch(stmt.sql, *stmt.params)
    assert len(rows) == 101


async def test_api_connections_plan_without_jit(engine: Any, settings: Any) -> None:
    """The API's connections (the asyncpg read pool and SQLAlchemy's) run with JIT off: with the visibility
    anti-joins, the estimated cost of the latest 100 of 10 M Observations crosses jit_above_cost, and compiling
    113 expressions then took 84 ms of a 2 ms query (bench/sta_queries.py). TERRITOIRE_DB_JIT turns it back on."""
    from sqlalchemy import text

    from territoire_data.db.engine import create_engine
    from territoire_data.db.readpool import close_read_pool, pooled

    try:
        async with pooled(engine, settings) as conn:
            assert await conn.fetchval("SHOW jit") == "off"
    finally:
        await close_read_pool(engine)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SHOW jit"))).scalar() == "off"
    jit_engine = create_engine(settings.model_copy(update={"db_jit": True}))
    try:
        async with jit_engine.connect() as conn:
            assert (await conn.execute(text("SHOW jit"))).scalar() == "on"
    finally:
        await jit_engine.dispose()
