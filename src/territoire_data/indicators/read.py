"""Reading stored values: the latest period per unit with the previous one and the target status, and series."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from territoire_data.indicators import divisions
from territoire_data.indicators.model import IndicatorDefinition, Target
from territoire_data.indicators.store import IndicatorRow

TERRITORY = ""  # the unit code of an indicator with no breakdown


def period_label(start: datetime, definition: IndicatorDefinition) -> str:
    """A period as people write it: 2026, 2026-T1, 2026-03, 2026-S10 (ISO week), 2026-03-10."""
    local = start.astimezone(ZoneInfo(definition.timezone))
    if definition.period == "year":
        return f"{local.year}"
    if definition.period == "quarter":
        return f"{local.year}-T{(local.month - 1) // 3 + 1}"
    if definition.period == "month":
        return f"{local.year}-{local.month:02d}"
    if definition.period == "week":
        iso = local.isocalendar()
        return f"{iso.year}-S{iso.week:02d}"
    return local.date().isoformat()


def target_status(value: float | None, target: Target | None) -> str | None:
    """Same rule as the published table: met, not met, or no value to judge."""
    if target is None:
        return None
    if value is None:
        return "sans donnée"
    met = value <= target.value if target.direction == "at_most" else value >= target.value
    return "atteint" if met else "non atteint"


@dataclass
class Unit:
    code: str
    name: str


async def unit_names(conn: asyncpg.Connection, row: IndicatorRow) -> dict[str, str]:
    breakdown = row.definition.breakdown
    if breakdown is None:
        return {TERRITORY: "Ensemble du territoire"}
    division_id = await conn.fetchval("SELECT division_dataset_id FROM indicator WHERE id = $1", row.id)
    division = await divisions.by_dataset_id(conn, division_id) if division_id else None
    if division is None:
        return {}
    return {u["code"]: u["name"] for u in await divisions.units(conn, division)}


async def latest(conn: asyncpg.Connection, row: IndicatorRow) -> dict[str, Any]:
    """The latest period's value of every unit, with the previous period's, the change and the target status."""
    periods = await conn.fetch(
        "SELECT DISTINCT period_start FROM indicator_value WHERE indicator_id = $1 ORDER BY 1 DESC LIMIT 2", row.id
    )
    names = await unit_names(conn, row)
    if not periods:
        return {"period": None, "period_start": None, "previous_period": None, "values": [], "summary": None}
    last = periods[0]["period_start"]
    before = periods[1]["period_start"] if len(periods) > 1 else None
    rows = await conn.fetch(
        """SELECT unit_code, period_start, value, record_count, computed_at FROM indicator_value
           WHERE indicator_id = $1 AND period_start = ANY($2::timestamptz[])""",
        row.id,
        [p for p in (last, before) if p is not None],
    )
    current = {r["unit_code"]: r for r in rows if r["period_start"] == last}
    previous = {r["unit_code"]: r for r in rows if r["period_start"] == before}
    d = row.definition
    values = []
    for code in sorted(set(names) | set(current), key=lambda c: names.get(c, c)):
        cur = current.get(code)
        old = previous.get(code)
        value = cur["value"] if cur else None
        prev = old["value"] if old else None
        change = None
        if value is not None and prev not in (None, 0):
            change = 100.0 * (value - prev) / abs(prev)
        values.append(
            {
                "unit": code or "territoire",
                "name": names.get(code, code),
                "value": value,
                "previous": prev,
                "change_percent": change,
                "status": target_status(value, d.target),
                "record_count": cur["record_count"] if cur else 0,
                "computed_at": cur["computed_at"] if cur else None,
            }
        )
    judged = [v for v in values if v["status"] in ("atteint", "non atteint")]
    summary = {
        "units": len(values),
        "units_with_value": sum(1 for v in values if v["value"] is not None),
        "units_meeting_target": sum(1 for v in judged if v["status"] == "atteint") if d.target else None,
    }
    return {
        "period": period_label(last, d),
        "period_start": last,
        "previous_period": period_label(before, d) if before else None,
        "values": values,
        "summary": summary,
    }


async def series(
    conn: asyncpg.Connection,
    row: IndicatorRow,
    *,
    units: list[str],
    start: datetime | None,
    end: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """Values in (unit, period) order, filtered by unit codes and a period range; and how many match."""
    codes = [TERRITORY if u == "territoire" else u for u in units] or None
    where = (
        "indicator_id = $1 AND ($2::text[] IS NULL OR unit_code = ANY($2::text[])) "
        "AND ($3::timestamptz IS NULL OR period_start >= $3) AND ($4::timestamptz IS NULL OR period_start < $4)"
    )
    total = await conn.fetchval(f"SELECT count(*) FROM indicator_value WHERE {where}", row.id, codes, start, end)
    rows = await conn.fetch(
        f"""SELECT unit_code, period_start, value, raw_value, denominator, record_count, computed_at
            FROM indicator_value WHERE {where} ORDER BY unit_code, period_start LIMIT $5 OFFSET $6""",
        row.id,
        codes,
        start,
        end,
        limit,
        offset,
    )
    names = await unit_names(conn, row)
    d = row.definition
    return [
        {
            "unit": r["unit_code"] or "territoire",
            "name": names.get(r["unit_code"], r["unit_code"]),
            "period": period_label(r["period_start"], d),
            "period_start": r["period_start"],
            "value": r["value"],
            "raw_value": r["raw_value"],
            "denominator": r["denominator"],
            "record_count": r["record_count"],
            "computed_at": r["computed_at"],
            "status": target_status(r["value"], d.target),
        }
        for r in rows
    ], int(total)


COLUMNS = ("unit", "name", "period", "period_start", "value", "raw_value", "denominator", "record_count",
           "computed_at", "status")  # fmt: skip


def to_csv(items: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for item in items:
        writer.writerow(
            ["" if item[c] is None else item[c].isoformat() if isinstance(item[c], datetime) else item[c]
             for c in COLUMNS]
        )  # fmt: skip
    return out.getvalue().encode("utf-8")


def to_parquet(items: list[dict[str, Any]]) -> bytes:
    schema = pa.schema(
        [
            ("unit", pa.string()),
            ("name", pa.string()),
            ("period", pa.string()),
            ("period_start", pa.timestamp("us", tz="UTC")),
            ("value", pa.float64()),
            ("raw_value", pa.float64()),
            ("denominator", pa.float64()),
            ("record_count", pa.int64()),
            ("computed_at", pa.timestamp("us", tz="UTC")),
            ("status", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([{c: item[c] for c in COLUMNS} for item in items], schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
