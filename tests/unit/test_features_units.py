"""Pure parts of OGC API - Features and exports: CQL2 -> SQL, query parameters, CRS, OpenAPI 3.0, hex decoding."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from territoire_data.db.params import Params
from territoire_data.errors import BadRequestError
from territoire_data.exports.stream import unhex
from territoire_data.features.routes import openapi_30
from territoire_data.query.collections import Collection, Field
from territoire_data.query.cql2sql import parse, to_sql
from territoire_data.query.crs import CRS84, parse_crs
from territoire_data.query.params import (
    parse_bbox,
    parse_datetime,
    parse_limit,
    parse_properties,
    parse_sortby,
    property_filters,
)

COLLECTION = Collection(
    id="c",
    title="c",
    description="",
    keywords=(),
    fields=(
        Field("name", "string"),
        Field("n", "integer"),
        Field("x", "number"),
        Field("ok", "boolean"),
        Field("day", "date"),
        Field("at", "datetime"),
        Field('odd "name"; DROP', "string"),
    ),
    source='datasets."ds_1"',
    geometry_type="Point",
    bbox=None,
    temporal=(None, None),
    modified_at=datetime(2024, 1, 1, tzinfo=UTC),
    row_count=1,
    dataset_id=1,
)


def sql_of(text: str) -> tuple[str, list[object]]:
    params = Params()
    return to_sql(parse(text), COLLECTION, params), params.values


def test_cql2_text_and_json_give_the_same_sql() -> None:
    text = "n > 3 AND name LIKE 'A%' AND S_INTERSECTS(geometry, BBOX(0, 0, 1, 1))"
    as_json = parse(text)
    params_a, params_b = Params(), Params()
    assert to_sql(as_json, COLLECTION, params_a) == to_sql(
        parse(json.dumps(as_json), "cql2-json"), COLLECTION, params_b
    )
    assert params_a.values == params_b.values


def test_identifiers_come_only_from_the_table_schema() -> None:
    sql, _ = sql_of('"odd ""name""; DROP" = \'x\'')
    assert 't."odd ""name""; DROP" = $1::text' in sql
    with pytest.raises(BadRequestError, match="unknown property"):
        sql_of("pg_sleep = 1")
    with pytest.raises(BadRequestError):
        sql_of("n = 1; DROP TABLE dataset")


@given(st.text(min_size=0, max_size=40))
def test_every_string_value_is_bound_never_written_into_the_sql(value: str) -> None:
    literal = "'" + value.replace("'", "''") + "'"
    try:
        sql, values = sql_of(f"name = {literal} OR name IN ({literal}, 'b')")
    except BadRequestError:
        return  # not a valid CQL2 string (e.g. a stray backslash): refused, which is fine
    assert value in values
    assert len(re.findall(r"\$\d+", sql)) == len(values)
    stripped = re.sub(r"\$\d+::\w+", "", sql)
    assert "'" not in stripped.replace("'%'", "")


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["=", "<>", "<", ">", "<=", ">="]))
def test_numbers_are_bound_as_float8(number: float, op: str) -> None:
    sql, values = sql_of(f"x {op} {number!r}".replace("e+", "e"))
    assert values == [pytest.approx(number)]
    assert sql == f'(t."x" {op} $1::float8)'


def test_string_literals_take_the_type_of_the_property_they_are_compared_with() -> None:
    sql, values = sql_of("day > '2024-01-01' AND at < TIMESTAMP('2024-01-01T00:00:00Z') AND ok = 1")
    assert "CAST($1::text AS date)" in sql
    assert "CAST($2::text AS timestamptz)" in sql
    assert values == ["2024-01-01", "2024-01-01T00:00:00Z", True]
    # Whole numbers against an integer column keep its type (so its index stays usable); others are float8.
    assert sql_of("n = 3 OR n > 2.5") == ('((t."n" = $1::bigint) OR (t."n" > $2::float8))', [3, 2.5])
    assert sql_of("n LIKE '1%'")[0] == '(t."n"::text LIKE $1::text::text)'


def test_spatial_literals_are_moved_to_the_column_crs_never_the_column() -> None:
    params = Params()
    sql = to_sql(parse("S_INTERSECTS(geometry, POINT(845000 6520000))"), COLLECTION, params, parse_crs("EPSG:2154"))
    assert sql.startswith("ST_Intersects(t.geom, ST_Transform(ST_SetSRID(ST_GeomFromGeoJSON($1::text), 2154), 4326))")
    sql, _ = sql_of("S_DWITHIN(geometry, POINT(2 48), 10, kilometers)")
    assert "t.geom && ST_Expand(" in sql
    assert "ST_DWithin(t.geom::geography" in sql


@pytest.mark.parametrize(
    "bad",
    [
        "n >",
        "S_DWITHIN(geometry, POINT(0 0), -1, meters)",
        "S_DWITHIN(geometry, POINT(0 0), 1, parsecs)",
        "ACCENTI(name) = 'a'",
        "n IN ()",
        "name = 1 AND",
        "S_INTERSECTS(n, POINT(0 0))",
    ],
)
def test_invalid_filters_are_bad_requests(bad: str) -> None:
    with pytest.raises(BadRequestError):
        sql_of(bad)


def test_temporal_operators() -> None:
    assert sql_of("T_BEFORE(at, TIMESTAMP('2024-01-01T00:00:00Z'))")[0] == '(t."at" < CAST($1::text AS timestamptz))'
    assert sql_of("T_AFTER(day, DATE('2024-01-01'))")[0] == '(t."day" > CAST($1::text AS date))'
    sql, values = sql_of("T_INTERSECTS(day, INTERVAL('2024-01-01', '..'))")
    assert sql == '(t."day" >= CAST($1::text AS date))'
    assert values == ["2024-01-01"]


def test_crs_uris_and_short_forms() -> None:
    assert parse_crs(None).uri == CRS84
    assert parse_crs("EPSG:2154").srid == 2154
    assert parse_crs("http://www.opengis.net/def/crs/EPSG/0/4326").lat_first
    assert not parse_crs("[OGC:CRS84]").lat_first
    assert parse_crs("<http://www.opengis.net/def/crs/EPSG/0/3857>").srid == 3857
    with pytest.raises(BadRequestError, match="unsupported CRS"):
        parse_crs("EPSG:27572")


def test_query_parameters() -> None:
    assert parse_limit(None) == 10
    assert parse_limit("1000000") == 10_000
    with pytest.raises(BadRequestError):
        parse_limit("-1")
    assert parse_bbox("1,2,3,4") == (1, 2, 3, 4)
    assert parse_bbox("1,2,0,3,4,10") == (1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d", "0,5,1,4", "nan,0,1,1"):
        with pytest.raises(BadRequestError):
            parse_bbox(bad)
    instant = parse_datetime("2024-01-01T10:00:00Z")
    assert instant is not None
    assert instant.instant
    assert instant.start == datetime(2024, 1, 1, 10, tzinfo=UTC)
    open_start = parse_datetime("../2024-02-01")
    assert open_start is not None
    assert (open_start.start, open_start.end) == (None, date(2024, 2, 1))
    for bad in ("../..", "yesterday", "2024-02-01/2024-01-01"):
        with pytest.raises(BadRequestError):
            parse_datetime(bad)
    assert parse_sortby("-n,+name,x", COLLECTION) == (('t."n"', False), ('t."name"', True), ('t."x"', True))
    assert parse_properties("n,x", COLLECTION) == ("n", "x")
    assert property_filters({"n": "3", "limit": "5", "f": "json"}, COLLECTION) == {"n": "3"}
    with pytest.raises(BadRequestError, match="unknown query parameter"):
        property_filters({"colour": "red"}, COLLECTION)


def test_openapi_document_is_written_as_3_0_with_paths_under_the_landing_page() -> None:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "x", "version": "1", "license": {"name": "EUPL-1.2", "identifier": "EUPL-1.2"}},
        "paths": {
            "/ogcapi/collections/{collectionId}/items": {
                "get": {
                    "parameters": [
                        {"name": "f", "in": "query", "schema": {"anyOf": [{"type": "string"}, {"type": "null"}]}}
                    ]
                }
            },
            "/health": {"get": {}},
        },
    }
    converted = openapi_30(document, "/ogcapi", "http://x/ogcapi", [COLLECTION])
    assert converted["openapi"] == "3.0.3"
    assert set(converted["paths"]) == {"/collections/{collectionId}/items", "/collections/c/items"}
    names = [p["name"] for p in converted["paths"]["/collections/c/items"]["get"]["parameters"]]
    assert "filter-lang" in names
    assert "n" in names
    assert "identifier" not in converted["info"]["license"]


@given(st.lists(st.one_of(st.none(), st.binary(max_size=64)), max_size=50))
def test_unhex_decodes_a_whole_column(values: list[bytes | None]) -> None:
    hexed = pa.array([None if v is None else v.hex() for v in values], type=pa.string())
    assert unhex(hexed).to_pylist() == values
    if len(values) > 2:
        assert unhex(hexed.slice(1)).to_pylist() == values[1:]
