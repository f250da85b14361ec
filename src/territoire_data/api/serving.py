"""Run the HTTP server: one uvicorn process, or several workers that each listen on a socket of their own.

With uvicorn's own `--workers`, every worker waits on one shared listening socket and whichever wakes first
accepts: the same worker tends to win every race, so a client pool's keep-alive connections, opened one after
the other or in a burst, end up 12/4, 15/1 or 16/0 on two workers (measured with `ss` during
`bench/sta_queries.py` and `wrk`). A keep-alive connection never moves: one worker then queues all the requests
while the other idles, which showed as p99 latencies many times the mean. Here each worker gets a socket of its
own, bound to the same address with SO_REUSEPORT, and the kernel spreads new connections over them by a hash of
the connection's addresses and ports: no worker is favoured.

The supervisor restarts a worker that dies (on the same socket: connections the kernel sends to it meanwhile
wait in its backlog) and stops all of them on SIGINT or SIGTERM. Without SO_REUSEPORT (not Linux or BSD), or
with one worker, uvicorn runs as it always did.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn
from uvicorn.config import Config

logger = logging.getLogger("uvicorn.error")

_PR_SET_PDEATHSIG = 1  # prctl(2)
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that could not start (the app, or its socket)
_spawn = multiprocessing.get_context("spawn")


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


def run(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """Serve the app (an import string of a factory) on host:port with this many worker processes."""
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)
        return
    config = Config(app, factory=True, host=host, port=port, workers=workers, **options)
    ReusePortSupervisor(config, workers).run()


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


def _worker(config: Config, sock: socket.socket) -> None:  # pragma: no cover - runs in the child process
    _exit_with_parent()
    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C reaches the whole process group: exit quietly
        uvicorn.Server(config).run(sockets=[sock])


class ReusePortSupervisor:
    """Starts one worker process per socket, restarts those that die, replaces them one by one on SIGHUP, stops
    them all on SIGINT, SIGTERM or SIGQUIT (as uvicorn's own supervisor does; SIGUSR1/2 are ignored)."""

    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(workers):
                self.sockets.append(listening_socket(config.host, config.port))
        except OSError as exc:
            logger.error(exc)
            sys.exit(STARTUP_FAILURE)
        self.processes: list[SpawnProcess | None] = [None] * workers
        self.should_exit = threading.Event()
        self.should_restart = False

    def _start(self, index: int) -> None:
        process = _spawn.Process(target=_worker, args=(self.config, self.sockets[index]), daemon=False)
        process.start()
        self.processes[index] = process

    def _restart(self, _signum: int, _frame: object) -> None:
        self.should_restart = True  # seen by the loop within half a second

    def _replace_all(self) -> None:
        """Each worker in turn: stopped gracefully (it finishes its requests), then started again."""
        for index, process in enumerate(self.processes):
            if process is not None and process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
                process.join()
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
                if process is None or process.is_alive():
                    continue
                process.join()
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
