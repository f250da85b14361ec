"""`serve --workers N`: each worker listens on a socket of its own (SO_REUSEPORT), so keep-alive connections
spread over the workers instead of piling up on whichever wins the accept race; a worker that dies is replaced."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from territoire_data.settings import Settings
from tests.conftest import LiveServer

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT") or not Path("/proc/net/tcp").exists(), reason="Linux SO_REUSEPORT and /proc"
)


def socket_targets(pid: int) -> list[str]:
    """What the process's file descriptors point at; none when it has exited meanwhile (a replaced worker, a
    multiprocessing helper): /proc/<pid>/fd vanishes with it."""
    targets = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return []
    for fd in fds:
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return targets


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def established_on(pid: int, port: int) -> int:
    """How many established TCP connections to `port` the process holds (its fds, matched in /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    return sum(1 for target in socket_targets(pid) if target.startswith("socket:[") and target[8:-1] in inodes)


def keep_alive_get(port: int) -> socket.socket:
    """A connection that asked for /health and was answered, left open (keep-alive)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return sock


def workers_of(server: LiveServer, count: int, gone: int | None = None) -> set[int]:
    """The worker processes (children listening on the port), once there are `count` of them (`gone` not one)."""
    assert server.process is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # the workers are the children that serve (multiprocessing may add a helper process)
        found = {pid for pid in children(server.process.pid) if Path(f"/proc/{pid}/fd").exists()}
        serving = {pid for pid in found if any(True for _ in _listening_fds(pid, server.port))}
        if len(serving) == count and gone not in serving:
            return serving
        time.sleep(0.2)
    raise AssertionError(f"expected {count} workers, found {found}")


def _listening_fds(pid: int, port: int) -> list[str]:
    inodes = {
        fields[9]
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A"
    }
    return [target for target in socket_targets(pid) if target.startswith("socket:[") and target[8:-1] in inodes]


def test_keep_alive_connections_spread_over_the_workers_and_a_dead_worker_is_replaced(settings: Settings) -> None:
    server = LiveServer(settings, workers=2)
    server.start()
    try:
        workers = workers_of(server, 2)
        # each worker listens on a socket of its own, not on one shared socket
        assert len({fd for pid in workers for fd in _listening_fds(pid, server.port)}) == 2
        # opened one after the other, as a client pool does: with a shared socket they all went to one worker
        connections = [keep_alive_get(server.port) for _ in range(24)]
        spread = {pid: established_on(pid, server.port) for pid in workers}
        assert sum(spread.values()) == 24, spread
        assert all(n > 0 for n in spread.values()), spread  # all on one worker: 2 chances in 2**24
        for sock in connections:
            sock.close()

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = workers_of(server, 2, gone=victim)
        assert len(replaced & workers) == 1
        for _ in range(10):  # whichever socket the kernel picks, a worker answers
            keep_alive_get(server.port).close()

        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)  # as uvicorn's supervisor: replace every worker, one by one
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            renewed = workers_of(server, 2)
            if not renewed & replaced:
                break
            time.sleep(0.2)
        assert not renewed & replaced, (renewed, replaced)
        for _ in range(10):
            keep_alive_get(server.port).close()
        replaced = renewed
    finally:
        server.stop()
    assert server.process is None  # the supervisor exited on SIGTERM (stop() waits for it)...
    for pid in replaced:  # ...after stopping and reaping its workers
        assert not Path(f"/proc/{pid}").exists(), pid


def test_workers_exit_when_the_supervisor_is_killed(settings: Settings) -> None:
    server = LiveServer(settings, workers=2)
    server.start()
    assert server.process is not None
    workers = workers_of(server, 2)
    server.process.kill()  # SIGKILL: no chance to stop its workers itself
    server.process.wait(10)
    server.process = None
    deadline = time.monotonic() + 15
    while any(_state(pid) != "Z" for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in workers if _state(pid) != "Z"]
    for pid in orphans:  # leave nothing running when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not orphans  # gone (or a zombie awaiting its new parent's wait)


def _state(pid: int) -> str:
    """The process state letter from /proc; "Z" when it is gone too."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
