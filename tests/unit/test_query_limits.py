"""Query cost limits in the parsers: deep, wide or long inputs are refused with the limit named, and no input
of any shape exhausts the Python stack or reaches the `cql2` parser deeper than it can take."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from territoire_data.errors import BadRequestError
from territoire_data.query import cql2sql
from territoire_data.querylimits import QueryLimitError, QueryLimits, check_json_tree, use_limits
from territoire_data.sensorthings.odata import count_nodes, parse_filter, parse_options
from territoire_data.settings import Settings


def test_the_parsers_defaults_are_the_settings_defaults() -> None:
    defaults = Settings(_env_file=None, database_url="postgresql://u@h/d")  # type: ignore[call-arg]
    assert QueryLimits.from_settings(defaults) == QueryLimits()


def test_odata_nesting_is_bounded_before_python_recursion_is() -> None:
    for text in ("(" * 5000 + "id eq 1" + ")" * 5000, "not " * 5000 + "true", "length(" * 3000 + "name" + ")" * 3000):
        with pytest.raises(QueryLimitError) as caught:
            parse_filter(text)
        assert caught.value.extra["limit"] == "TERRITOIRE_FILTER_MAX_DEPTH"
    assert count_nodes(parse_filter("(" * 32 + "id eq 1" + ")" * 32)) == 3


def test_odata_wide_filters_count_every_node_of_the_request() -> None:
    wide = " or ".join(f"id eq {i}" for i in range(125))  # 125 * 3 + 124 = 499 nodes
    assert count_nodes(parse_filter(wide)) == 499
    parse_options({"$filter": wide})
    with pytest.raises(QueryLimitError, match="TERRITOIRE_FILTER_MAX_NODES"):
        parse_options({"$filter": wide, "$orderby": "id,name"})


def test_odata_expand_depth_and_items() -> None:
    parse_options({"$expand": "Datastreams/Observations/FeatureOfInterest/Observations"})
    with pytest.raises(QueryLimitError, match="TERRITOIRE_STA_MAX_EXPAND_DEPTH"):
        parse_options({"$expand": "Datastreams($expand=Observations/FeatureOfInterest/Observations/Datastream)"})
    deep = "Datastreams(" + "$expand=Datastreams(" * 2000 + ")" * 2001
    with pytest.raises(QueryLimitError, match="TERRITOIRE_STA_MAX_EXPAND_DEPTH"):
        parse_options({"$expand": deep})
    with pytest.raises(QueryLimitError, match="TERRITOIRE_STA_MAX_EXPAND_ITEMS"):
        parse_options({"$expand": ",".join(["Datastreams"] * 21)})


def test_limits_in_force_come_from_the_request_context() -> None:
    use_limits(QueryLimits(sta_max_expand_depth=1))
    try:
        with pytest.raises(QueryLimitError) as caught:
            parse_options({"$expand": "Datastreams/Thing"})
        assert caught.value.extra == {
            "parameter": "$expand",
            "limit": "TERRITOIRE_STA_MAX_EXPAND_DEPTH",
            "maximum": 1,
        }
    finally:
        use_limits(QueryLimits())


@pytest.mark.parametrize(
    "text",
    [
        "(" * 2500 + "a = 1" + ")" * 2500,  # segfaults the cql2 parser (about 1,500 levels)
        "a = " + "-" * 8000 + "1",  # so does a run of unary minus signs
        "NOT " * 6000 + "a = 1",
        "a = " + "-(" * 2000 + "1" + ")" * 2000,
    ],
)
def test_cql2_text_nesting_is_measured_before_the_parser_sees_it(text: str) -> None:
    with pytest.raises(QueryLimitError, match="TERRITOIRE_FILTER_MAX_DEPTH"):
        cql2sql.parse(text)


def test_cql2_text_nesting_ignores_what_is_quoted() -> None:
    assert cql2sql.text_nesting("a = '((((((((' AND \"((\" = 1") == 0
    assert cql2sql.text_nesting("S_INTERSECTS(geom, POLYGON((-1.5 47, -1.4 47, -1.4 47.1, -1.5 47)))") == 4
    assert cql2sql.text_nesting("a = -(-(1))") == 4


def test_cql2_json_limits() -> None:
    tree: dict[str, object] = {"op": "=", "args": [{"property": "a"}, 1]}
    for _ in range(40):
        tree = {"op": "not", "args": [tree]}
    with pytest.raises(QueryLimitError, match="TERRITOIRE_FILTER_MAX_DEPTH"):
        cql2sql.parse(json.dumps(tree), "cql2-json")
    wide = {"op": "or", "args": [{"op": "=", "args": [{"property": "a"}, i]} for i in range(200)]}
    with pytest.raises(QueryLimitError, match="TERRITOIRE_FILTER_MAX_NODES"):
        check_json_tree(wide, QueryLimits(), "filter")
    polygon = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    check_json_tree({"op": "s_intersects", "args": [{"property": "geom"}, polygon]}, QueryLimits(), "filter")
    with pytest.raises(QueryLimitError, match="TERRITOIRE_FILTER_MAX_COORDINATES"):
        check_json_tree(polygon, QueryLimits(filter_max_coordinates=7), "filter")
    with pytest.raises(QueryLimitError, match="TERRITOIRE_FILTER_MAX_LITERAL_LENGTH"):
        check_json_tree({"op": "=", "args": [{"property": "a"}, "x" * 5000]}, QueryLimits(), "filter")
    # A long arithmetic chain nests on the left: refused, not a RecursionError.
    with pytest.raises(BadRequestError):
        cql2sql.parse("a = " + "+".join(["1"] * 3000))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="()-+ aNOTnot=1'\"", max_size=3000))
def test_no_cql2_text_escapes_the_parsers_as_anything_but_a_400(text: str) -> None:
    with contextlib.suppress(BadRequestError):
        cql2sql.parse(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="()' notandreqid1,/$", max_size=3000))
def test_no_odata_filter_escapes_the_parser_as_anything_but_a_400(text: str) -> None:
    with contextlib.suppress(BadRequestError):
        parse_filter(text)
