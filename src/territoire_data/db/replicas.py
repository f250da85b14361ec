"""Hot standbys for the read doors, left aside while they lag more than the tolerated replication delay.

`TERRITOIRE_DATABASE_READ_URL` names one or several standbys (libpq's multi-host form; `prefer-standby` unless it
says otherwise, so a promoted standby still serves). Anonymous reads (the portal, harvesters, GIS clients: nearly
all reads) go there; a request that carries a key or a token reads from the primary, so a publisher reading back
what it just wrote gets it (read-your-writes: a standby may be a few milliseconds behind). The same SQL runs on
either node, through the same access rules: a standby holds exactly the primary's rows, restricted datasets too.

A monitor asks the standby how far behind it is every `interval` seconds: nothing to replay means no lag, else
the age of the last transaction replayed (`pg_last_xact_replay_timestamp()`), which is what a reader sees. Beyond
`TERRITOIRE_READ_MAX_LAG_MS`, or when the standby cannot be reached, reads go to the primary until it catches up;
`/metrics` shows the lag, whether the standby is in use, and how many reads went where and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Literal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.db.engine import create_engine
from territoire_data.db.readpool import open_pool
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

Route = Literal["replica", "primary"]
# Why a read went where it went (the label of territoire_db_reads_total).
Reason = Literal["replica", "no_replica", "keyed", "lag", "unreachable"]

LAG_SQL = """
SELECT pg_is_in_recovery() AS standby,
       CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
            ELSE COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0.0)
       END::float8 AS lag
"""


class ReplicaRouter:
    """Decides, per read, between the standby pool and the primary's, and keeps the standby's lag up to date."""

    def __init__(self, settings: Settings, *, interval: float | None = None) -> None:
        self.settings = settings
        self.dsn = settings.asyncpg_read_dsn
        self.max_lag = settings.read_max_lag_ms / 1000
        # Checked often enough to notice a lag at half the tolerance, at most every second, at least every 50 ms.
        self.interval = interval if interval is not None else min(1.0, max(0.05, self.max_lag / 2))
        self.pool: asyncpg.Pool | None = None  # the read doors' asyncpg connections to the standby
        # The doors that read through SQLAlchemy (catalog, portal): the same standby, the same rule.
        self.engine: AsyncEngine | None = None
        if settings.sqlalchemy_read_url is not None:
            self.engine = create_engine(settings, url=settings.sqlalchemy_read_url, application_name="read-replica")
        self.lag: float | None = None  # seconds; None while unknown or unreachable
        self.standby = False  # the node answering is in recovery (False after its promotion)
        self.checked = 0.0  # monotonic time of the last successful check
        self.reads: Counter[tuple[Route, Reason]] = Counter()
        self._monitor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self.dsn is not None

    def usable(self) -> bool:
        """The standby answered lately and lags no more than tolerated."""
        fresh = time.monotonic() - self.checked <= max(3 * self.interval, 2.0)
        return self.pool is not None and self.lag is not None and fresh and self.lag <= self.max_lag

    def route(self, *, keyed: bool) -> Route:
        """Where this read goes, counted with the reason."""
        reason: Reason
        if not self.configured:
            reason = "no_replica"
        elif keyed:
            reason = "keyed"
        elif self.usable():
            reason = "replica"
        elif self.lag is None or self.pool is None:
            reason = "unreachable"
        else:
            reason = "lag"
        route: Route = "replica" if reason == "replica" else "primary"
        self.reads[(route, reason)] += 1
        return route

    def standby_pool(self, *, keyed: bool) -> asyncpg.Pool | None:
        """The standby's pool when this read goes there (counted as `route` does), else None: the primary's."""
        return self.pool if self.route(keyed=keyed) == "replica" else None

    async def start(self) -> None:
        """Open the standby pool (retried by the monitor if the standby is down) and start watching its lag."""
        if not self.configured or self._monitor is not None:
            return
        await self._open()
        self._monitor = asyncio.create_task(self._watch(), name="replica-lag-monitor")

    async def _open(self) -> None:
        async with self._lock:
            if self.pool is not None or self.dsn is None:
                return
            try:
                self.pool = await asyncio.wait_for(open_pool(self.dsn, self.settings), 10)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("read replica not reachable (%s: %s); reads go to the primary", type(exc).__name__, exc)
                return
        await self.check()

    async def check(self) -> None:
        """Measure the standby's lag once."""
        if self.pool is None:
            await self._open()
            return
        try:
            row = await asyncio.wait_for(self.pool.fetchrow(LAG_SQL), max(1.0, self.interval * 4))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.lag is not None:
                logger.warning("read replica unreachable (%s: %s); reads go to the primary", type(exc).__name__, exc)
            self.lag = None
            return
        assert row is not None
        was_usable = self.usable()
        self.lag, self.standby, self.checked = float(row["lag"]), bool(row["standby"]), time.monotonic()
        if was_usable and not self.usable():
            logger.warning(
                "read replica %.0f ms behind (over %.0f ms): reads go to the primary",
                self.lag * 1000,
                self.max_lag * 1000,
            )

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the monitor must outlive any surprise: reads then go to the primary
                logger.exception("read replica check failed")
                self.lag = None

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()
        if self.engine is not None:
            await self.engine.dispose()
