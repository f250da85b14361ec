"""The OData parser of SensorThings: trees for valid options, positioned errors, properties with hypothesis."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from territoire_data.auth.policy import ANONYMOUS
from territoire_data.sensorthings import sql
from territoire_data.sensorthings.model import BY_NAME
from territoire_data.sensorthings.odata import (
    Binary,
    Call,
    Lit,
    ODataSyntaxError,
    Path,
    Unary,
    parse_expand,
    parse_filter,
    parse_options,
    parse_orderby,
)


def test_precedence_and_or_not_comparison_arithmetic() -> None:
    tree = parse_filter("not a eq 1 or b add 2 mul 3 gt 4 and c eq 'x'")
    assert tree == Binary(
        "or",
        Unary("not", Binary("eq", Path(("a",)), Lit("number", 1))),
        Binary(
            "and",
            Binary(
                "gt", Binary("add", Path(("b",)), Binary("mul", Lit("number", 2), Lit("number", 3))), Lit("number", 4)
            ),
            Binary("eq", Path(("c",)), Lit("string", "x")),
        ),
    )


def test_literals() -> None:
    assert parse_filter("x eq 'it''s'") == Binary("eq", Path(("x",)), Lit("string", "it's"))
    assert parse_filter("t lt 2026-01-02T03:04:05.5+01:00").right == Lit(  # type: ignore[union-attr]
        "datetime", datetime.fromisoformat("2026-01-02T03:04:05.5+01:00")
    )
    assert parse_filter("t lt 2026-01-02").right == Lit("datetime", datetime(2026, 1, 2, tzinfo=UTC))  # type: ignore[union-attr]
    assert parse_filter("x eq -1.5e2").right == Lit("number", -150.0)  # type: ignore[union-attr]
    assert parse_filter("x eq null").right == Lit("null", None)  # type: ignore[union-attr]
    assert parse_filter("t sub duration'PT1H' lt now()").left == Binary(  # type: ignore[union-attr]
        "sub", Path(("t",)), Lit("duration", "PT1H")
    )
    geo = parse_filter("geo.intersects(location, geography'POINT(1 2)')")
    assert geo == Call("geo.intersects", (Path(("location",)), Lit("geometry", "POINT(1 2)")))
    assert parse_filter("Datastream/Thing/name eq 'x'").left == Path(("Datastream", "Thing", "name"))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("name eq", 7, "end of expression"),
        ("(name eq 1", 10, "expected ')'"),
        ("name eq 'x", 8, "unterminated string"),
        ("substring(name)", 0, "takes 2 or 3"),
        ("nope(x)", 0, "unknown function"),
        ("a eq 1 b", 7, "unexpected 'b'"),
        ("a eq duration'P'", 5, "malformed duration"),
        ("a eq #", 5, "unexpected character"),
    ],
)
def test_syntax_errors_say_where(text: str, position: int, fragment: str) -> None:
    with pytest.raises(ODataSyntaxError) as info:
        parse_filter(text)
    assert info.value.position == position
    assert fragment in info.value.detail
    assert info.value.status == 400


def test_expand_with_nested_options_and_orderby() -> None:
    (item,) = parse_expand(
        "Datastreams($filter=name eq 'a;b';$expand=Observations($top=1;$orderby=phenomenonTime desc);$count=true)"
    )
    assert item.path == ("Datastreams",)
    assert item.options.filter == Binary("eq", Path(("name",)), Lit("string", "a;b"))
    assert item.options.count is True
    (inner,) = item.options.expand
    assert inner.options.top == 1
    assert inner.options.orderby[0].descending
    assert [o.descending for o in parse_orderby("a desc, b asc, c")] == [True, False, False]
    with pytest.raises(ODataSyntaxError):
        parse_expand("Datastreams($top=1")
    with pytest.raises(ODataSyntaxError):
        parse_options({"$top": "-1"})
    with pytest.raises(ODataSyntaxError):
        parse_options({"$nope": "1"})


# --- property-based --------------------------------------------------------------------------------------

names = st.sampled_from(["result", "parameters/a", "Datastream/name", "FeatureOfInterest/description", "id"])
strings = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


def _lit(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


comparisons = st.builds(
    lambda n, op, v: f"{n} {op} {_lit(v)}",
    names,
    st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]),
    st.one_of(strings, numbers),
)
expressions = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) and ({b})", inner, inner),
        st.builds(lambda a, b: f"{a} or {b}", inner, inner),
        st.builds(lambda a: f"not ({a})", inner),
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(strings)
def test_string_literals_round_trip(value: str) -> None:
    tree = parse_filter(f"name eq {_lit(value)}")
    assert tree == Binary("eq", Path(("name",)), Lit("string", value))


@settings(max_examples=200, deadline=None)
@given(expressions)
def test_generated_filters_parse_and_compile_with_every_value_bound(text: str) -> None:
    tree = parse_filter(text)
    try:
        stmt = sql.collection_query(
            BY_NAME["Observation"], ANONYMOUS, filter_expr=tree, orderby=(), top=10, skip=0, scope=None
        )
    except sql.InvalidQueryError as exc:  # a type mismatch is a 400, never anything else
        assert exc.status == 400  # noqa: PT017
        return
    # user values never appear in the SQL text (in its string literals: "stri" may be part of a column's
    # name such as result_string), only as parameters
    literals = " ".join(re.findall(r"'(?:[^']|'')*'", stmt.sql))
    for value in stmt.params:
        if isinstance(value, str) and len(value) > 3:
            assert value not in literals
    assert stmt.sql.count("$") >= len(stmt.params)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_fails_with_a_position(text: str) -> None:
    try:
        parse_filter(text)
    except ODataSyntaxError as exc:
        assert 0 <= exc.position <= len(text)  # noqa: PT017


def test_json_patch_changes_only_what_it_names() -> None:
    from territoire_data.errors import BadRequestError, ConflictError
    from territoire_data.sensorthings.writes import apply_json_patch, patched_properties

    thing = BY_NAME["Thing"]
    before = {"@iot.id": 1, "name": "a", "description": "d", "properties": {"x": 1, "y": 2}}
    after = apply_json_patch(
        before,
        [
            {"op": "test", "path": "/name", "value": "a"},
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "remove", "path": "/properties/x"},
            {"op": "add", "path": "/properties/z~1w", "value": [1]},
        ],
    )
    assert before["name"] == "a"
    assert patched_properties(thing, before, after) == {"name": "b", "properties": {"y": 2, "z/w": [1]}}
    with pytest.raises(ConflictError):
        apply_json_patch(before, [{"op": "test", "path": "/name", "value": "zz"}])
    with pytest.raises(BadRequestError):
        apply_json_patch(before, [{"op": "move", "path": "/name", "from": "/description"}])
    with pytest.raises(BadRequestError):
        patched_properties(thing, before, apply_json_patch(before, [{"op": "remove", "path": "/name"}]))


def test_an_array_index_is_a_path_segment() -> None:
    """`result/0`: the first value of a MultiDatastream's Observation (a JSON array)."""
    from territoire_data.sensorthings.odata import Binary, Lit, ODataSyntaxError, Path, parse_filter

    tree = parse_filter("result/0 gt 3")
    assert isinstance(tree, Binary) and tree.left == Path(("result", "0")) and isinstance(tree.right, Lit)
    for bad in ("result/-1 gt 3", "result/1.5 gt 3", "result/ gt 3"):
        with pytest.raises(ODataSyntaxError):
            parse_filter(bad)


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("@iot.id eq 1", ("@iot.id",)),
        ("Datastream/@iot.id eq 12", ("Datastream", "@iot.id")),
        ("Datastreams/Thing/@iot.id eq 3", ("Datastreams", "Thing", "@iot.id")),
    ],
)
def test_iot_id_is_a_property_name_at_any_step_of_a_path(text: str, segments: tuple[str, ...]) -> None:
    expr = parse_filter(text)
    assert isinstance(expr, Binary) and expr.left == Path(segments)
    assert parse_orderby(text.split(" ")[0] + " desc")[0].expr == Path(segments)


def test_other_dotted_names_are_still_refused() -> None:
    with pytest.raises(ODataSyntaxError, match=re.escape("unknown property '@iot.selfLinks'")):
        parse_filter("@iot.selfLinks eq 1")
