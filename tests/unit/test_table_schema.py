"""Table Schema descriptors: checking, DDL per the typed-table contract, inference, cell validation."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from territoire_data.catalog.datasets import table_ddl
from territoire_data.catalog.schema import SchemaError, parse_table_schema
from territoire_data.ingest.files.infer import infer_table_schema
from territoire_data.ingest.files.validate import CellError, build_converter, compile_row

SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"


@pytest.mark.parametrize("path", sorted(SCHEMAS.rglob("schema*.json")), ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_every_shipped_schema_parses(path: Path) -> None:
    schema = parse_table_schema(json.loads(path.read_text(encoding="utf-8")))
    assert schema.fields


def test_ddl_follows_the_contract() -> None:
    schema = parse_table_schema(
        {
            "fields": [
                {"name": "id", "type": "string"},
                {"name": "Nom Complet", "type": "string", "constraints": {"required": True}},
                {"name": "n", "type": "integer", "constraints": {"unique": True}},
                {"name": "when", "type": "datetime"},
                {"name": "pt", "type": "geopoint"},
                {"name": "props", "type": "object"},
            ],
            "primaryKey": "id",
        }
    )
    statements = table_ddl("ds_7", schema)
    create, index, row_key = "\n".join(statements[:-2]), statements[-2], statements[-1]
    assert '"_fid" bigint GENERATED ALWAYS AS IDENTITY,' in create
    assert row_key == 'ALTER TABLE "datasets"."ds_7" ADD CONSTRAINT "ds_7_pkey" PRIMARY KEY (_fid)'
    assert '"id" text NOT NULL' in create
    assert '"Nom Complet" text NOT NULL' in create
    assert '"n" bigint' in create
    assert '"when" timestamptz' in create
    assert '"pt" text' in create
    assert '"props" jsonb' in create
    assert '"geom" geometry(Geometry, 4326)' in create
    assert 'ADD CONSTRAINT "ds_7_pk_key" UNIQUE ("id")' in create
    assert 'UNIQUE ("n")' in create
    assert index == 'CREATE INDEX "ds_7_geom_idx" ON "datasets"."ds_7" USING gist (geom)'


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        ({}, "non-empty 'fields'"),
        ({"fields": [{"name": "a", "type": "complex"}]}, "unknown type"),
        ({"fields": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
        ({"fields": [{"name": "geom"}]}, "reserved"),
        ({"fields": [{"name": "é" * 40}]}, "63 bytes"),
        ({"fields": [{"name": "a"}], "primaryKey": ["b"]}, "not a field"),
        ({"fields": [{"name": "a", "constraints": {"pattern": "("}}]}, "not a valid regular expression"),
    ],
)
def test_bad_descriptors_are_refused_with_a_reason(descriptor: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_table_schema(descriptor)


def test_inference_names_and_types() -> None:
    schema = infer_table_schema(["id", "", "geom", "prix"], [["1", "x", "a", "1,5"], ["2", "y", "b", "2"]])
    assert [(f.name, f.type) for f in schema.fields] == [
        ("id", "integer"),
        ("field_2", "string"),
        ("geom_src", "string"),
        ("prix", "number"),
    ]


def _field(**kwargs: object) -> object:
    return parse_table_schema({"fields": [{"name": "f", **kwargs}]}).fields[0]


def test_constraints() -> None:
    enum = build_converter(_field(type="string", constraints={"enum": ["Voirie", "Parking public"]}))  # type: ignore[arg-type]
    assert enum("Voirie") == "Voirie"
    with pytest.raises(CellError, match="not one of: Voirie, Parking public") as info:
        enum("Trottoir")
    assert info.value.code == "constraint-error"
    pattern = build_converter(_field(type="string", constraints={"pattern": "^\\d{9}$"}))  # type: ignore[arg-type]
    with pytest.raises(CellError, match="does not match the pattern"):
        pattern("12345678")
    bounded = build_converter(_field(type="number", constraints={"minimum": -90, "maximum": 90}))  # type: ignore[arg-type]
    assert bounded("45,5") == 45.5
    with pytest.raises(CellError, match="greater than the maximum 90"):
        bounded("91")
    typed = build_converter(_field(type="integer"))  # type: ignore[arg-type]
    with pytest.raises(CellError, match="not an integer") as info:
        typed("douze")
    assert info.value.code == "type-error"
    email = build_converter(_field(type="string", format="email"))  # type: ignore[arg-type]
    with pytest.raises(CellError, match="not an email"):
        email("nobody")
    geopoint = build_converter(_field(type="geopoint", format="array"))  # type: ignore[arg-type]
    assert geopoint("[7.48710500,48.345345]") == "[7.48710500,48.345345]"
    with pytest.raises(CellError, match="out of range"):
        geopoint("[48.3,200]")
    formatted = build_converter(_field(type="datetime", format="%Y%m%d%H%M"))  # type: ignore[arg-type]
    assert formatted("202501010006").isoformat() == "2025-01-01T00:06:00+01:00"
    length = build_converter(_field(type="string", constraints={"maxLength": 3}))  # type: ignore[arg-type]
    with pytest.raises(CellError, match="longer than 3"):
        length("abcd")


ROW_SCHEMA = parse_table_schema(
    {
        "fields": [
            {"name": "id", "type": "integer", "constraints": {"required": True}},
            {"name": "nom", "type": "string"},
            {"name": "x", "type": "number", "constraints": {"minimum": -180, "maximum": 180}},
            {"name": "quand", "type": "datetime"},
            {"name": "ok", "type": "boolean"},
            {"name": "code", "type": "string", "constraints": {"pattern": "[A-Z]{2}"}},
        ]
    }
)
CELLS = st.one_of(
    st.sampled_from(["", " ", "1", "-3", "1_0", "12,5", "1.5", "200", "-181", "oui", "AB", "abc", "٣",
                     "2024-03-31T10:00:00", "2024-03-31T10:00:00+02:00", "31/03/2024 10:00", "x,y"]),
    st.text(max_size=6),
)  # fmt: skip


@given(st.lists(CELLS, min_size=6, max_size=6))
def test_compiled_rows_agree_with_the_careful_path(cells: list[str]) -> None:
    fields = list(ROW_SCHEMA.fields)
    fast = compile_row(fields, list(range(6)), UTC, frozenset({""}), ())
    converters = [build_converter(f, UTC) for f in fields]
    careful: list[object] = []
    problems = []
    for f, convert, cell in zip(fields, converters, cells, strict=True):
        if cell == "" or cell.isspace():
            careful.append(None)
            if f.required:
                problems.append(f.name)
            continue
        try:
            careful.append(convert(cell))
        except CellError:
            careful.append(None)
            problems.append(f.name)
    try:
        quick = fast(cells)
    except Exception:
        assert problems, f"the compiled row refused a valid row: {cells}"
        return
    assert not problems, f"the compiled row accepted an invalid row: {cells}"
    assert quick == careful


def test_line_map_keeps_breakpoints_only() -> None:
    from territoire_data.ingest.files.loader import LineMap

    lines = LineMap()
    expected = [2, 3, 4, 6, 7, 9, 10, 11]  # line 5 rejected, a cell of line 7 ran onto line 8
    for line in expected:
        lines.append(line)
    assert [lines[i] for i in range(len(lines))] == expected
    assert len(lines.starts) == 3
    clean = LineMap()
    for line in range(2, 100_002):
        clean.append(line)
    assert len(clean.starts) == 1
    assert clean[99_999] == 100_001
