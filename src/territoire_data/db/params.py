"""Bound parameters for hand-built SQL: every value becomes `$n`, never text in the statement."""

from __future__ import annotations

from typing import Any


class Params:
    """Collects values in order and hands out their `$n` placeholders with an explicit type."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, pg_type: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{pg_type}"

    def text_as(self, value: str, pg_type: str) -> str:
        """A string parsed by PostgreSQL as `pg_type` (dates, numbers, intervals keep PostgreSQL's own syntax)."""
        placeholder = self.add(value, "text")
        return placeholder if pg_type == "text" else f"CAST({placeholder} AS {pg_type})"
