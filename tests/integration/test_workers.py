"""`serve --workers 2`: one set of metrics for all workers, rate limits held once, a hung worker replaced.

The real command on a free port; every request opens a new connection, so SO_REUSEPORT spreads them over both
workers (checked: each worker leaves its own sample files in the multiprocess directory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from territoire_data.api.sharedlimits import SharedWindowCounter, create_file
from territoire_data.settings import Settings
from tests.conftest import LiveServer

pytestmark = [pytest.mark.db, pytest.mark.slow]


def _get(url: str) -> httpx.Response:
    """One request on a connection of its own."""
    return httpx.get(url, timeout=10, headers={"Connection": "close"})


def _sample(body: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, values)
    return values[0]


def _worker_files(directory: Path, kind: str) -> set[str]:
    """The worker pids that wrote samples of this kind (counter_<pid>.db, histogram_<pid>.db...)."""
    return {p.stem.split("_")[1] for p in directory.glob(f"{kind}_*.db")}


def _children(pid: int) -> set[int]:
    """The worker processes of a supervisor (not multiprocessing's resource tracker)."""
    pids = {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    return {p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    return tmp_path / "prometheus"


def test_metrics_add_up_across_workers(settings: Settings, db: asyncpg.Connection, metrics_dir: Path) -> None:
    server = LiveServer(settings, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, workers=2)
    server.start()
    try:
        for _ in range(120):
            assert _get(f"{server.url}/health").status_code == 200
        requests = 121  # and the one LiveServer.start waited for
        assert len(_worker_files(metrics_dir, "counter")) == 2, "both workers answered"
        line = 'territoire_http_requests_total{method="GET",route="/health",status="200"}'
        # whichever worker answers the scrape, it counts every worker's requests
        for _ in range(6):
            body = _get(f"{server.url}/metrics").text
            assert _sample(body, line) == requests
            assert _sample(body, 'territoire_http_request_duration_seconds_count{method="GET",route="/health"}') == (
                requests
            )
            assert _sample(body, "territoire_read_pool_size") == 2 * settings.db_pool_size  # livesum of two pools
            assert _sample(body, "territoire_database_up") == 1
            assert _sample(body, "territoire_database_size_bytes") > 1_000_000
            assert _sample(body, "territoire_observation_partitions") >= 1
            assert "territoire_read_pool_wait_seconds_bucket" in body
    finally:
        server.stop()


def test_rate_limit_holds_once_across_workers(settings: Settings, db: asyncpg.Connection, metrics_dir: Path) -> None:
    limit = 40
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "TERRITOIRE_RATE_LIMIT_PER_MINUTE": str(limit)}
    server = LiveServer(settings, env=env, workers=2)
    server.start()
    try:
        statuses = [_get(f"{server.url}/api/v1/datasets").status_code for _ in range(100)]
    finally:
        server.stop()
    assert len(_worker_files(metrics_dir, "counter")) == 2, "both workers answered"
    # In one minute (the estimate of the window before counts nothing, a fresh table): exactly the limit passes.
    if time.time() % 60 > 1:  # not across a minute boundary, where the sliding estimate moves
        assert statuses.count(200) == limit, statuses
    assert statuses.count(200) + statuses.count(429) == 100
    assert statuses.count(429) >= 100 - limit - 1


def test_a_hung_worker_is_replaced(settings: Settings, db: asyncpg.Connection) -> None:
    server = LiveServer(settings, workers=2, args=("--health-timeout", "2"))
    server.start()
    assert server.process is not None
    stopped: int | None = None
    try:
        deadline = time.monotonic() + 15
        while len(workers := _children(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # both have answered a first ping (until then a starting worker has longer)
        stopped = sorted(workers)[0]
        os.kill(stopped, signal.SIGSTOP)  # alive, answering nothing: what a stuck event loop looks like outside
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = _children(server.process.pid)
            if stopped not in now and len(now) == 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the stopped worker was not replaced: {server.log.read_text()[-2000:]}")
        assert "did not answer a health ping" in server.log.read_text()
        assert all(_get(f"{server.url}/health").status_code == 200 for _ in range(30))
    finally:
        if stopped is not None:
            with_suppressed_kill(stopped)
        server.stop()


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def test_shared_counter_counts_one_identity_across_handles(tmp_path: Path) -> None:
    """Two workers' handles on one table see the same counts; identities stay apart; windows slide."""
    path = tmp_path / "limits"
    create_file(path)
    first, second = SharedWindowCounter(path), SharedWindowCounter(path)
    try:
        now = 6_000_000.5  # 0.5 s into a minute
        allowed = [(first if n % 2 else second).hit("ip:198.51.100.7", 10, now) == 0 for n in range(15)]
        assert allowed.count(True) == 10
        assert second.hit("ip:198.51.100.7", 10, now) == 60  # retry at the end of the window (rounded up)
        assert first.hit("ip:203.0.113.9", 10, now) == 0  # someone else
        # half a window later, half of the previous window still counts: 10 * 0.5 = 5 more allowed
        later = now + 60 + 29.5
        assert sum(first.hit("ip:198.51.100.7", 10, later) == 0 for _ in range(10)) == 5
        # two windows later, nothing of the old counts is left
        assert sum(second.hit("ip:198.51.100.7", 10, now + 180) == 0 for _ in range(12)) == 10
    finally:
        first.close()
        second.close()


def test_shared_counter_refuses_a_file_that_is_not_its_table(tmp_path: Path) -> None:
    path = tmp_path / "other"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="not a rate-limit table"):
        SharedWindowCounter(path)
