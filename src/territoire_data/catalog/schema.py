"""Frictionless Table Schemas (the schema.data.gouv.fr format): checking a descriptor, naming fields, SQL types."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from territoire_data.errors import BadRequestError

SQL_TYPES: dict[str, str] = {
    "string": "text",
    "integer": "bigint",
    "number": "double precision",
    "boolean": "boolean",
    "date": "date",
    "datetime": "timestamptz",
    "time": "time",
    "year": "integer",
    "yearmonth": "text",
    "duration": "interval",
    "geopoint": "text",
    "geojson": "jsonb",
    "object": "jsonb",
    "array": "jsonb",
    "any": "text",
}
RESERVED = frozenset({"_fid", "geom"})
INTERNAL_PREFIX = "__td_"


class SchemaError(BadRequestError):
    """The Table Schema descriptor is not one we can build a table from."""

    type_slug = "invalid-table-schema"


@dataclass(frozen=True)
class FieldDef:
    """One Table Schema field, checked."""

    name: str
    type: str
    format: str | None = None
    constraints: dict[str, Any] = field(default_factory=dict)
    true_values: tuple[str, ...] | None = None
    false_values: tuple[str, ...] | None = None

    @property
    def required(self) -> bool:
        return bool(self.constraints.get("required"))

    @property
    def unique(self) -> bool:
        return bool(self.constraints.get("unique"))

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.type]


@dataclass(frozen=True)
class ForeignKey:
    """`fields` of this table must be found in `reference_fields` of `resource` ("" for this table itself)."""

    fields: tuple[str, ...]
    resource: str
    reference_fields: tuple[str, ...]


@dataclass(frozen=True)
class TableSchema:
    """A checked Table Schema: its fields, primary key and missing values, plus the descriptor as given."""

    fields: tuple[FieldDef, ...]
    primary_key: tuple[str, ...] = ()
    missing_values: tuple[str, ...] = ("",)
    descriptor: dict[str, Any] = field(default_factory=dict)
    foreign_keys: tuple[ForeignKey, ...] = ()

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldDef:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def unique_keys(self) -> list[tuple[str, ...]]:
        """Every key that must be unique: the primary key first, then each `unique` field."""
        keys: list[tuple[str, ...]] = []
        if self.primary_key:
            keys.append(self.primary_key)
        for f in self.fields:
            if f.unique and (f.name,) not in keys:
                keys.append((f.name,))
        return keys

    def temporal_field(self) -> FieldDef | None:
        """The first datetime (else date) field: it gives the dataset's temporal extent."""
        for wanted in ("datetime", "date"):
            for f in self.fields:
                if f.type == wanted:
                    return f
        return None


def check_field_name(name: object) -> str:
    """A field name usable as a PostgreSQL identifier: 1..63 bytes, no NUL, not one of ours."""
    if not isinstance(name, str) or not name:
        raise SchemaError("every field needs a non-empty string 'name'")
    if "\x00" in name:
        raise SchemaError("a field name contains a NUL character")
    if len(name.encode("utf-8")) > 63:
        raise SchemaError(f"field name {name[:70]!r} is longer than 63 bytes (PostgreSQL's limit)")
    if name in RESERVED or name.startswith(INTERNAL_PREFIX):
        raise SchemaError(f"field name {name!r} is reserved (the table has its own _fid and geom columns)")
    return name


def parse_table_schema(descriptor: object) -> TableSchema:
    """Check a Table Schema descriptor (dict from JSON) and return it typed; SchemaError says what is wrong."""
    if not isinstance(descriptor, dict):
        raise SchemaError("a Table Schema must be a JSON object")
    raw_fields = descriptor.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise SchemaError("a Table Schema needs a non-empty 'fields' array")
    fields: list[FieldDef] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_fields, start=1):
        if not isinstance(raw, dict):
            raise SchemaError(f"field {index} is not an object")
        name = check_field_name(raw.get("name"))
        if name in seen:
            raise SchemaError(f"field name {name!r} appears twice")
        seen.add(name)
        kind = raw.get("type", "string")
        if kind not in SQL_TYPES:
            raise SchemaError(f"field {name!r}: unknown type {kind!r} (one of {', '.join(SQL_TYPES)})")
        constraints = raw.get("constraints") or {}
        if not isinstance(constraints, dict):
            raise SchemaError(f"field {name!r}: 'constraints' must be an object")
        _check_constraints(name, kind, constraints)
        fmt = raw.get("format")
        true_values = raw.get("trueValues")
        false_values = raw.get("falseValues")
        fields.append(
            FieldDef(
                name=name,
                type=kind,
                format=fmt if isinstance(fmt, str) else None,
                constraints=dict(constraints),
                true_values=tuple(str(v) for v in true_values) if isinstance(true_values, list) else None,
                false_values=tuple(str(v) for v in false_values) if isinstance(false_values, list) else None,
            )
        )
    primary = descriptor.get("primaryKey") or ()
    if isinstance(primary, str):
        primary = (primary,)
    if not isinstance(primary, list | tuple) or not all(isinstance(p, str) for p in primary):
        raise SchemaError("'primaryKey' must be a field name or a list of field names")
    for name in primary:
        if name not in seen:
            raise SchemaError(f"primaryKey names {name!r}, which is not a field")
    missing = descriptor.get("missingValues", [""])
    if not isinstance(missing, list) or not all(isinstance(v, str) for v in missing):
        raise SchemaError("'missingValues' must be a list of strings")
    foreign_keys = _foreign_keys(descriptor.get("foreignKeys"), seen)
    return TableSchema(tuple(fields), tuple(primary), tuple(missing) or ("",), dict(descriptor), foreign_keys)


def _names(value: object, what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise SchemaError(f"{what} must be a field name or a non-empty list of field names")
    return tuple(names)


def _foreign_keys(raw: object, seen: set[str]) -> tuple[ForeignKey, ...]:
    """Table Schema `foreignKeys`: each names fields of this table and the fields of a resource they point to."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SchemaError("'foreignKeys' must be a list")
    keys: list[ForeignKey] = []
    for index, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("reference"), dict):
            raise SchemaError(f"foreign key {index} needs 'fields' and a 'reference' object")
        fields = _names(item.get("fields"), f"foreign key {index}: 'fields'")
        unknown = [name for name in fields if name not in seen]
        if unknown:
            raise SchemaError(f"foreign key {index} names {unknown[0]!r}, which is not a field")
        reference = item["reference"]
        resource = reference.get("resource", "")
        if not isinstance(resource, str):
            raise SchemaError(f"foreign key {index}: 'reference.resource' must be a string")
        target = _names(reference.get("fields"), f"foreign key {index}: 'reference.fields'")
        if len(target) != len(fields):
            raise SchemaError(f"foreign key {index}: 'fields' and 'reference.fields' differ in length")
        keys.append(ForeignKey(fields, resource, target))
    return tuple(keys)


def _check_constraints(name: str, kind: str, constraints: dict[str, Any]) -> None:
    for key in ("required", "unique"):
        if key in constraints and not isinstance(constraints[key], bool):
            raise SchemaError(f"field {name!r}: constraint {key!r} must be true or false")
    if "enum" in constraints and not isinstance(constraints["enum"], list):
        raise SchemaError(f"field {name!r}: constraint 'enum' must be a list")
    if "pattern" in constraints:
        pattern = constraints["pattern"]
        if not isinstance(pattern, str):
            raise SchemaError(f"field {name!r}: constraint 'pattern' must be a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SchemaError(f"field {name!r}: pattern {pattern!r} is not a valid regular expression: {exc}") from None
    for key in ("minLength", "maxLength"):
        if key in constraints and not isinstance(constraints[key], int):
            raise SchemaError(f"field {name!r}: constraint {key!r} must be an integer")


# --- inference -------------------------------------------------------------------------------------------


def sanitize_name(name: str, index: int, used: set[str]) -> str:
    """A usable, unique field name from a header cell (empty or reserved names get a neutral one)."""
    candidate = name.strip() or f"field_{index}"
    if candidate in RESERVED or candidate.startswith(INTERNAL_PREFIX):
        candidate = f"{candidate}_src"
    while len(candidate.encode("utf-8")) > 63:
        candidate = candidate[:-1]
    base, suffix = candidate, 2
    while candidate in used:
        candidate = f"{base[:58]}_{suffix}"
        suffix += 1
    used.add(candidate)
    return candidate
