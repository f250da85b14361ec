"""Computing indicators in PostgreSQL: the periods marked dirty only (incremental), or everything (full).

One transaction per indicator: claim its dirty periods (delete them: a period marked again by a writer that commits
later stays marked for the next round), compute their raw values in one statement (upsert, and delete the units
that have no record left), derive values (denominator, growth) for them and the periods whose growth they feed,
refresh the published table, and mark the indicators that divide by this one. A failure is recorded on the
indicator (`compute_error`) and its periods are not retried in a loop: the next write or `compute --full` will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from territoire_data.auth.policy import Principal
from territoire_data.catalog.datasets import Dataset, refresh_dataset_stats
from territoire_data.catalog.schema import parse_table_schema
from territoire_data.db.params import Params
from territoire_data.errors import TerritoireError
from territoire_data.indicators import store
from territoire_data.indicators.compile import Resolved, resolve, value_sql, values_sql
from territoire_data.indicators.model import PERIOD_LABELS, PREVIOUS_YEAR

logger = logging.getLogger(__name__)

SYSTEM = Principal(name="indicators", role="admin")  # computing reads what the definition was checked against
CHANNEL = "indicator_dirty"
_LOCK_SPACE = 8_191_919  # advisory lock namespace: one computation of an indicator at a time, across processes


@dataclass
class ComputeReport:
    indicator: str
    full: bool
    periods: int
    written: int
    removed: int
    seconds: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class RoundReport:
    computed: list[ComputeReport] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.computed)


async def compute_periods(
    conn: asyncpg.Connection, row: store.IndicatorRow, periods: list[datetime] | None
) -> ComputeReport:
    """Recompute `periods` (all when None) of one indicator, in the caller's transaction."""
    started = time.perf_counter()
    resolved = await resolve(conn, SYSTEM, row.definition, self_id=row.id, check=False)
    params = Params()
    fresh = values_sql(resolved, params, periods)
    ind = params.add(row.id, "bigint")
    restrict = "" if periods is None else f" AND v.period_start = ANY({params.add(periods, 'timestamptz[]')})"
    counts = await conn.fetchrow(
        f"""WITH fresh AS ({fresh}),
        gone AS (DELETE FROM indicator_value v WHERE v.indicator_id = {ind}{restrict}
                 AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.unit_code = v.unit_code
                                 AND f.period_start = v.period_start) RETURNING 1),
        written AS (INSERT INTO indicator_value AS v (indicator_id, unit_code, period_start, raw_value, record_count,
                        computed_at)
                    SELECT {ind}, unit_code, period_start, raw_value, record_count, now() FROM fresh
                    ON CONFLICT (indicator_id, unit_code, period_start) DO UPDATE SET raw_value = EXCLUDED.raw_value,
                        record_count = EXCLUDED.record_count, computed_at = EXCLUDED.computed_at
                    RETURNING 1)
        SELECT (SELECT count(*) FROM written) AS written, (SELECT count(*) FROM gone) AS removed""",
        *params.values,
    )
    await _derive(conn, resolved, row.id, periods)
    await _publish(conn, resolved, row)
    await conn.execute("UPDATE indicator SET computed_at = now(), compute_error = NULL WHERE id = $1", row.id)
    # Those dividing by this indicator follow, for the same periods.
    await conn.execute(
        """INSERT INTO indicator_dirty (indicator_id, period_start)
           SELECT i.id, p FROM indicator i, unnest(COALESCE($2::timestamptz[], '{-infinity}')) p
           WHERE i.denominator_indicator_id = $1
           ON CONFLICT DO NOTHING""",
        row.id,
        periods,
    )
    return ComputeReport(
        indicator=row.slug,
        full=periods is None,
        periods=len(periods) if periods is not None else -1,
        written=counts["written"],
        removed=counts["removed"],
        seconds=time.perf_counter() - started,
    )


async def _derive(conn: asyncpg.Connection, r: Resolved, indicator_id: int, periods: list[datetime] | None) -> None:
    """value and denominator from raw_value, for the computed periods (and those a year later, for growths)."""
    params = Params()
    value, denominator = value_sql(r, params)
    where = f"v.indicator_id = {params.add(indicator_id, 'bigint')}"
    if periods is not None:
        starts = params.add(periods, "timestamptz[]")
        where += f" AND (v.period_start = ANY({starts})"
        if r.definition.denominator and r.definition.denominator.growth:
            tz = params.add(r.definition.timezone, "text")
            back = params.text_as(PREVIOUS_YEAR[r.definition.period], "interval")
            where += f" OR ((v.period_start AT TIME ZONE {tz}) - {back}) AT TIME ZONE {tz} = ANY({starts})"
        where += ")"
    await conn.execute(
        f"UPDATE indicator_value v SET value = {value}, denominator = {denominator} WHERE {where}", *params.values
    )


async def _publish(conn: asyncpg.Connection, r: Resolved, row: store.IndicatorRow) -> None:
    """The published table: every unit with the latest period's value, the previous period's, the target status."""
    if row.dataset_id is None:
        return
    table_name = await conn.fetchval("SELECT table_name FROM dataset WHERE id = $1", row.dataset_id)
    dataset = Dataset(row.dataset_id, row.dataset_slug or "", table_name, parse_table_schema(store.PUBLICATION_SCHEMA))
    d = r.definition
    params = Params()
    ind = params.add(row.id, "bigint")
    tz = params.add(d.timezone, "text")
    label = params.add(PERIOD_LABELS[d.period], "text")
    target = params.add(d.target.value if d.target else None, "float8")
    direction = params.add(d.target.direction if d.target else None, "text")
    if r.division is not None:
        units = (
            f"SELECT DISTINCT ON (1) {r.division.code_sql} AS unit_code, {r.division.name_sql} AS name, "
            f"ST_Multi(u.geom) AS geom FROM {r.division.table} u ORDER BY 1"
        )
    else:
        units = "SELECT ''::text AS unit_code, 'Ensemble du territoire'::text AS name, NULL::geometry AS geom"
    status = (
        f"CASE WHEN {target} IS NULL THEN NULL WHEN cur.value IS NULL THEN 'sans donnée' "
        f"WHEN ({direction} = 'at_most' AND cur.value <= {target}) OR ({direction} = 'at_least' "
        f"AND cur.value >= {target}) THEN 'atteint' ELSE 'non atteint' END"
    )
    await conn.execute(
        f"""WITH periods AS (SELECT max(period_start) AS last FROM indicator_value WHERE indicator_id = {ind}),
        prev AS (SELECT max(period_start) AS before FROM indicator_value, periods
                 WHERE indicator_id = {ind} AND period_start < periods.last),
        units AS ({units}),
        rows AS (
            SELECT COALESCE(NULLIF(units.unit_code, ''), 'territoire') AS code, units.name, periods.last,
                   prev.before, cur.value, cur.record_count, cur.computed_at, old.value AS previous, units.geom,
                   {status} AS status
            FROM units CROSS JOIN periods CROSS JOIN prev
            LEFT JOIN indicator_value cur ON cur.indicator_id = {ind} AND cur.unit_code = units.unit_code
                 AND cur.period_start = periods.last
            LEFT JOIN indicator_value old ON old.indicator_id = {ind} AND old.unit_code = units.unit_code
                 AND old.period_start = prev.before
        ),
        gone AS (DELETE FROM {dataset.table} t WHERE NOT EXISTS (SELECT 1 FROM rows WHERE rows.code = t.code))
        INSERT INTO {dataset.table} AS t (code, nom, periode, debut_periode, valeur, periode_precedente,
            valeur_precedente, evolution, cible, statut_cible, unite, enregistrements, calcule_le, geom)
        SELECT code, name, to_char(last AT TIME ZONE {tz}, {label}), last, value,
               to_char(before AT TIME ZONE {tz}, {label}), previous,
               100.0 * (value - previous) / NULLIF(abs(previous), 0), {target}, status,
               {params.add(d.unit, "text")}, record_count, computed_at, geom
        FROM rows
        ON CONFLICT (code) DO UPDATE SET nom = EXCLUDED.nom, periode = EXCLUDED.periode,
            debut_periode = EXCLUDED.debut_periode, valeur = EXCLUDED.valeur,
            periode_precedente = EXCLUDED.periode_precedente, valeur_precedente = EXCLUDED.valeur_precedente,
            evolution = EXCLUDED.evolution, cible = EXCLUDED.cible, statut_cible = EXCLUDED.statut_cible,
            unite = EXCLUDED.unite, enregistrements = EXCLUDED.enregistrements, calcule_le = EXCLUDED.calcule_le,
            geom = EXCLUDED.geom""",
        *params.values,
    )
    await refresh_dataset_stats(conn, dataset)


async def _claim(conn: asyncpg.Connection, indicator_id: int) -> tuple[bool, list[datetime]] | None:
    """Take the dirty periods of an indicator nobody else is computing: (whole?, periods), None if busy or clean."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2::int)", _LOCK_SPACE, indicator_id):
        return None
    rows = await conn.fetch(
        "DELETE FROM indicator_dirty WHERE indicator_id = $1 "
        "RETURNING period_start = '-infinity'::timestamptz AS whole, "
        "CASE WHEN period_start = '-infinity'::timestamptz THEN NULL ELSE period_start END AS start",
        indicator_id,
    )
    if not rows:
        return None
    whole = any(r["whole"] for r in rows)
    return whole, sorted(r["start"] for r in rows if r["start"] is not None)


async def process_dirty(conn: asyncpg.Connection, *, rounds: int = 5) -> RoundReport:
    """Compute what is marked dirty, denominators before the indicators dividing by them; a few rounds, since
    computing one indicator marks those depending on it."""
    report = RoundReport()
    for _ in range(rounds):
        ids = await conn.fetch(
            """SELECT i.id FROM indicator i WHERE EXISTS (SELECT 1 FROM indicator_dirty x WHERE x.indicator_id = i.id)
               ORDER BY (i.denominator_indicator_id IS NOT NULL), i.id"""
        )
        if not ids:
            break
        for record in ids:
            done = await _compute_one(conn, record["id"])
            if done is not None:
                report.computed.append(done)
    return report


async def _compute_one(conn: asyncpg.Connection, indicator_id: int) -> ComputeReport | None:
    try:
        async with conn.transaction():
            claimed = await _claim(conn, indicator_id)
            if claimed is not None:
                # JIT compilation cost more than it saved on these statements (bench/indicators.py, 2026-12-05:
                # ~0.3 s per full computation of 1 M observations); sorts of a year of days stay in memory.
                await conn.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
            if claimed is None:
                return None
            whole, periods = claimed
            row = await store.by_id(conn, indicator_id)
            if row is None:
                return None
            return await compute_periods(conn, row, None if whole else periods)
    except (TerritoireError, asyncpg.PostgresError) as exc:
        message = exc.detail if isinstance(exc, TerritoireError) else f"{type(exc).__name__}: {exc}"
        logger.warning("indicator %s not computed: %s", indicator_id, message)
        async with conn.transaction():  # not retried in a loop: recorded, and its marks dropped
            await conn.execute("DELETE FROM indicator_dirty WHERE indicator_id = $1", indicator_id)
            await conn.execute("UPDATE indicator SET compute_error = $2 WHERE id = $1", indicator_id, message[:2000])
        slug = await conn.fetchval("SELECT slug FROM indicator WHERE id = $1", indicator_id)
        return ComputeReport(str(slug), True, 0, 0, 0, 0.0, error=message)


async def compute_all(conn: asyncpg.Connection, *, full: bool, slugs: list[str] | None = None) -> RoundReport:
    """`full`: mark every indicator (or those named) whole first; then compute what is dirty."""
    if full:
        await conn.execute(
            """INSERT INTO indicator_dirty (indicator_id, period_start)
               SELECT id, '-infinity' FROM indicator WHERE $1::text[] IS NULL OR slug = ANY($1::text[])
               ON CONFLICT DO NOTHING""",
            slugs,
        )
    return await process_dirty(conn)


class Refresher:
    """Keeps indicators current in a long-running process (the API): listens for the triggers' notifications and
    computes the dirty periods, at most once per `debounce` seconds (a burst of ingest batches is one round), and
    looks again every `interval` seconds in case a notification was missed (reconnection)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        debounce: float = 0.5,
        interval: float = 60.0,
    ) -> None:
        self._connect = connect
        self._debounce = debounce
        self._interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="indicator-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                await conn.add_listener(CHANNEL, self._notified)
                self._wake.set()  # whatever was marked while nobody listened
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._interval)
                    await asyncio.sleep(self._debounce)
                    self._wake.clear()
                    report = await process_dirty(conn)
                    self.rounds += 1
                    for item in report.computed:
                        logger.info(
                            "indicator %s: %s periods in %.0f ms%s",
                            item.indicator,
                            "all" if item.full else item.periods,
                            item.seconds * 1000,
                            f" (error: {item.error})" if item.error else "",
                        )
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("indicator refresher: %s; retrying in 5 s", exc)
                await asyncio.sleep(5)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
