"""Run the HTTP server: one uvicorn process, or several workers that each listen on a socket of their own.

With uvicorn's own `--workers`, every worker waits on one shared listening socket and whichever wakes first
accepts: the same worker tends to win every race, so a client pool's keep-alive connections, opened one after
the other or in a burst, end up 12/4, 15/1 or 16/0 on two workers (measured with `ss` during
`bench/sta_queries.py` and `wrk`). A keep-alive connection never moves: one worker then queues all the requests
while the other idles, which showed as p99 latencies many times the mean. Here each worker gets a socket of its
own, bound to the same address with SO_REUSEPORT, and the kernel spreads new connections over them by a hash of
the connection's addresses and ports: no worker is favoured.

The supervisor restarts a worker that dies (on the same socket: connections the kernel sends to it meanwhile
wait in its backlog), replaces one that stops answering its health ping (sent every second over a pipe and
answered through the worker's event loop, so a loop blocked by a runaway request counts as hung, where uvicorn's
ping is answered by a thread of its own), and stops all of them on SIGINT or SIGTERM. Without SO_REUSEPORT (not
Linux or BSD), or with one worker, uvicorn runs as it always did.

With several workers, the run gets a directory for prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR:
`/metrics` adds up every worker) and a shared-memory table for the rate limits (TERRITOIRE_SHARED_LIMITS_FILE:
a limit holds once, not once per worker), both made before the first worker starts and removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import Config

logger = logging.getLogger("uvicorn.error")

_PR_SET_PDEATHSIG = 1  # prctl(2)
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that could not start (the app, or its socket)
_spawn = multiprocessing.get_context("spawn")
DEFAULT_HEALTH_TIMEOUT = 20.0  # seconds without an answer to the health ping before a worker is replaced
STARTUP_GRACE = 60.0  # seconds a new worker has to answer its first ping (imports, opening its pools)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SHARED_LIMITS_ENV = "TERRITOIRE_SHARED_LIMITS_FILE"


def default_workers() -> int:
    """Half the cores this process may run on, at least one.

    The API shares its machine with PostgreSQL in the usual deployments (the quickstart, the compose file), and a
    request's CPU time is mostly the database's: on two cores with both busy (bench/sta_queries.py, 16 clients),
    one worker answered with a lower p99 than two on every query measured (a day of one Datastream: 52-55 ms
    against 55-61 ms; the latest value: 7-9 against 10-12 ms), two Python processes taking the cores from the
    database backends. `serve --workers N` says otherwise where the database runs elsewhere.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def run(
    app: str, *, host: str, port: int, workers: int, health_timeout: float = DEFAULT_HEALTH_TIMEOUT, **options: Any
) -> None:
    """Serve the app (an import string of a factory) on host:port with this many worker processes."""
    if workers <= 1:
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)
        return
    with shared_run_state():
        if not hasattr(socket, "SO_REUSEPORT"):
            uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)
            return
        config = Config(app, factory=True, host=host, port=port, workers=workers, **options)
        ReusePortSupervisor(config, workers, health_timeout=health_timeout).run()


@contextlib.contextmanager
def shared_run_state() -> Iterator[Path]:
    """The state the workers of one run share: a multiprocess metrics directory (the operator's, emptied, when
    PROMETHEUS_MULTIPROC_DIR is set) and the rate-limit table; in the environment the workers inherit."""
    from territoire_data.api.sharedlimits import create_file

    run_dir = Path(tempfile.mkdtemp(prefix="territoire-serve-"))
    given = os.environ.get(MULTIPROC_ENV)
    metrics_dir = Path(given) if given else run_dir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):  # samples of an earlier run would add up with ours
        stale.unlink()
    limits = run_dir / "limits"
    create_file(limits)
    previous = {name: os.environ.get(name) for name in (MULTIPROC_ENV, SHARED_LIMITS_ENV)}
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    os.environ[SHARED_LIMITS_ENV] = str(limits)
    try:
        yield run_dir
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(run_dir, ignore_errors=True)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT (the worker's uvicorn server calls listen on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _exit_with_parent() -> None:
    """Linux: SIGTERM this process when the supervisor dies, even by SIGKILL (no orphaned workers)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, keeping a reference to its event loop for the health ping."""

    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)


def _answer_pings(conn: Connection, server: _Server) -> None:  # pragma: no cover - a thread of the child
    """Answer each ping once the worker's event loop has run a callback: a blocked loop answers nothing."""
    while True:
        try:
            conn.recv()
            loop = server.loop
            if loop is not None:
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result()
            conn.send(True)
        except Exception:  # the pipe or the loop is closed: the worker is stopping
            return


def _worker(config: Config, sock: socket.socket, pings: Connection) -> None:  # pragma: no cover - child process
    _exit_with_parent()
    config.configure_logging()
    server = _Server(config)
    threading.Thread(target=_answer_pings, args=(pings, server), name="health-ping", daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C reaches the whole process group: exit quietly
        server.run(sockets=[sock])


class ReusePortSupervisor:
    """Starts one worker process per socket, restarts those that die, replaces them one by one on SIGHUP, stops
    them all on SIGINT, SIGTERM or SIGQUIT (as uvicorn's own supervisor does; SIGUSR1/2 are ignored)."""

    def __init__(self, config: Config, workers: int, *, health_timeout: float = DEFAULT_HEALTH_TIMEOUT) -> None:
        self.config = config
        self.health_timeout = health_timeout
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(workers):
                self.sockets.append(listening_socket(config.host, config.port))
        except OSError as exc:
            logger.error(exc)
            sys.exit(STARTUP_FAILURE)
        self.processes: list[SpawnProcess | None] = [None] * workers
        self.pipes: list[Connection | None] = [None] * workers
        self.pinged: list[float | None] = [None] * workers  # when the unanswered ping was sent
        self.last_ping = [0.0] * workers
        self.answered = [False] * workers  # a worker starting up (imports, pools) has longer to answer first
        self.should_exit = threading.Event()
        self.should_restart = False

    def _start(self, index: int) -> None:
        ours, theirs = _spawn.Pipe()
        process = _spawn.Process(target=_worker, args=(self.config, self.sockets[index], theirs), daemon=False)
        process.start()
        theirs.close()
        if self.pipes[index] is not None:
            self.pipes[index].close()  # type: ignore[union-attr]
        self.processes[index] = process
        self.pipes[index] = ours
        self.pinged[index] = None
        self.last_ping[index] = time.monotonic()
        self.answered[index] = False

    def _ended(self, process: SpawnProcess) -> None:
        """A worker is gone: its live gauges leave the metrics."""
        if process.pid is not None and os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]

    def _check_health(self, index: int, process: SpawnProcess) -> bool:
        """Ping the worker every second; False when its last ping went unanswered for `health_timeout`."""
        pipe = self.pipes[index]
        if pipe is None:
            return True
        now = time.monotonic()
        try:
            while pipe.poll():
                pipe.recv()
                self.pinged[index] = None
                self.answered[index] = True
            sent = self.pinged[index]
            limit = self.health_timeout if self.answered[index] else max(self.health_timeout, STARTUP_GRACE)
            if sent is None and now - self.last_ping[index] >= 1.0:
                pipe.send(True)
                self.pinged[index] = self.last_ping[index] = now
            elif sent is not None and now - sent > limit:
                return False
        except (OSError, EOFError):  # the worker is dying: the loop's liveness check restarts it
            return True
        return True

    def _restart(self, _signum: int, _frame: object) -> None:
        self.should_restart = True  # seen by the loop within half a second

    def _replace_all(self) -> None:
        """Each worker in turn: stopped gracefully (it finishes its requests), then started again."""
        for index, process in enumerate(self.processes):
            if process is not None and process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
                process.join()
                self._ended(process)
            self._start(index)

    def run(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, lambda *_: self.should_exit.set())
        signal.signal(signal.SIGHUP, self._restart)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        logger.info(
            "Uvicorn running on http://%s:%d with %d workers (SO_REUSEPORT), parent process [%d]",
            self.config.host,
            self.config.port,
            len(self.sockets),
            os.getpid(),
        )
        for index in range(len(self.sockets)):
            self._start(index)
        while not self.should_exit.wait(0.5):
            if self.should_restart:
                self.should_restart = False
                logger.info("Received SIGHUP, replacing the workers one by one")
                self._replace_all()
                continue
            for index, process in enumerate(self.processes):
                if process is None:
                    continue
                if process.is_alive():
                    if self._check_health(index, process) or process.pid is None:
                        continue
                    logger.error(
                        "Child process [%s] did not answer a health ping within %g s: killing and replacing it",
                        process.pid,
                        self.health_timeout,
                    )
                    os.kill(process.pid, signal.SIGKILL)
                    process.join()
                    self._ended(process)
                    self._start(index)
                    continue
                process.join()
                self._ended(process)
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("Child process [%s] failed to start, stopping the parent process.", process.pid)
                    self.should_exit.set()
                    break
                logger.info("Child process [%s] died (exit code %s), starting another", process.pid, process.exitcode)
                time.sleep(0.1)
                self._start(index)
        for process in self.processes:
            if process is not None and process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            if process is not None:
                process.join()
        for sock in self.sockets:
            sock.close()
        logger.info("Stopping parent process [%d]", os.getpid())
