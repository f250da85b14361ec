"""A Table Schema inferred from a file's header and first rows, when a new dataset comes without one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from territoire_data.catalog.schema import TableSchema, parse_table_schema, sanitize_name
from territoire_data.ingest.files.values import infer_type


def infer_table_schema(header: Sequence[str], sample: Sequence[Sequence[str]]) -> TableSchema:
    """A Table Schema from a header and sample rows: the narrowest type each column's values all fit."""
    used: set[str] = set()
    fields: list[dict[str, Any]] = []
    for index, raw_name in enumerate(header):
        values = [row[index] for row in sample if index < len(row) and row[index].strip() != ""]
        name = sanitize_name(raw_name, index + 1, used)
        entry: dict[str, Any] = {"name": name, "type": infer_type(values)}
        if name != raw_name:
            entry["title"] = raw_name
        fields.append(entry)
    return parse_table_schema({"fields": fields, "missingValues": [""]})
