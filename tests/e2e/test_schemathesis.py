"""Property-based fuzzing of every operation of our own contract (openapi/openapi.json) with schemathesis.

A live `territoire-data serve` runs on a throwaway database loaded with the demo territory (two hours of sensor
history), and schemathesis sends generated requests with the admin key, so writes are exercised too. Checks: no
5xx, status codes and content types the contract declares, bodies that match the declared schemas. Bounded and
deterministic (derandomized hypothesis, a fixed number of examples per operation) to stay within a few minutes.
TERRITOIRE_FUZZ_EXAMPLES raises the number of examples for a longer local run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from territoire_data.db import migrate as migrations
from territoire_data.demo import load_demo
from tests.conftest import ROOT, TEST_ADMIN_AUTH, TEST_ADMIN_KEY, LiveServer, create_database, drop_database
from tests.conftest import make_settings as _make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.db, pytest.mark.slow]

EXAMPLES = int(os.environ.get("TERRITOIRE_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json")


async def _prepare(url: str) -> None:
    settings_ = _make_settings(url)
    await load_demo(settings_, history_hours=2)
    conn = await asyncpg.connect(url)
    try:
        # The admin key with an id no generated path will name: DELETE /api/v1/keys/{id} must not revoke it.
        await conn.execute(
            "INSERT INTO api_key (id, prefix, key_hash, name, role) OVERRIDING SYSTEM VALUE "
            "VALUES (987654321, $1, $2, 'fuzz admin', 'admin')",
            TEST_ADMIN_KEY.split("_")[1],
            hashlib.sha256(TEST_ADMIN_KEY.encode()).hexdigest(),
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[LiveServer]:
    """A live server on a database of its own (writes from the fuzzer never reach other tests)."""
    name = f"td_test_fuzz_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = asyncio.run(create_database(name))
    try:
        migrations.upgrade(_make_settings(url))
        asyncio.run(_prepare(url))
        # No rate limit: the fuzzer sends hundreds of requests a minute from one address.
        server = LiveServer(
            _make_settings(url), env={"TERRITOIRE_RATE_LIMIT_PER_MINUTE": "0", "TERRITOIRE_LOG_LEVEL": "WARNING"}
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        asyncio.run(drop_database(name))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_honours_the_contract(case: schemathesis.Case, fuzz_server: LiveServer) -> None:
    case.call_and_validate(base_url=fuzz_server.url, headers=dict(TEST_ADMIN_AUTH), checks=CHECKS, timeout=30)
