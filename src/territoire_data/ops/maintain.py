"""`territoire-data maintain`: the periodic upkeep, as steps that any part of the platform can register.

A step is a name, a one-line description and an async function of (connection, settings, dry_run) returning a
line for the report. The built-in steps: observation partitions created ahead of need, and the purge of
rejections older than TERRITOIRE_REJECTION_RETENTION_DAYS. Run it daily (a systemd timer or cron; the README
shows one); every step is safe to run again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from territoire_data.db.raw import connect_raw
from territoire_data.ops import rejections
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

StepFn = Callable[[asyncpg.Connection, Settings, bool], Awaitable[str]]


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    run: StepFn


_STEPS: dict[str, Step] = {}


def register(name: str, description: str) -> Callable[[StepFn], StepFn]:
    """Decorator: add a maintenance step (its name must be new)."""

    def add(function: StepFn) -> StepFn:
        if name in _STEPS:
            raise ValueError(f"maintenance step {name!r} is registered twice")
        _STEPS[name] = Step(name, description, function)
        return function

    return add


def steps() -> list[Step]:
    return list(_STEPS.values())


async def run_steps(settings: Settings, *, only: list[str] | None = None, dry_run: bool = False) -> list[str]:
    """Run the steps (all, or those named) in registration order, each in its own transaction."""
    unknown = sorted(set(only or []) - set(_STEPS))
    if unknown:
        raise ValueError(f"no maintenance step {', '.join(unknown)} (known: {', '.join(_STEPS)})")
    report = []
    conn = await connect_raw(settings, application_name="maintain")
    try:
        for step in steps():
            if only and step.name not in only:
                continue
            async with conn.transaction():
                line = await step.run(conn, settings, dry_run)
            logger.info("maintain %s: %s", step.name, line)
            report.append(f"{step.name}: {line}")
    finally:
        await conn.close()
    return report


@register("partitions", "create the observation partitions of the coming months")
async def _partitions(conn: asyncpg.Connection, settings: Settings, dry_run: bool) -> str:
    if dry_run:
        return "would create the partitions missing until three months from now"
    created = await conn.fetchval(
        "SELECT ensure_observation_partitions(date_trunc('month', now()), now() + interval '3 months')"
    )
    return f"{created or 0} partition(s) created"


@register("rejections", "delete rejections older than TERRITOIRE_REJECTION_RETENTION_DAYS")
async def _purge_rejections(conn: asyncpg.Connection, settings: Settings, dry_run: bool) -> str:
    days = settings.rejection_retention_days
    count = await rejections.purge(conn, days, dry_run=dry_run)
    return f"{count} rejection(s) older than {days} days {'would be ' if dry_run else ''}deleted"
