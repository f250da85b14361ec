"""A Patroni cluster of our own for the drills: one etcd, two PostgreSQL nodes, on loopback ports.

The nodes run `deploy/patroni/patroni.yml`, the file we ship, with only what differs on this machine changed
(ports, folders, passwords, the synchronous-mode setting). Started as root, Patroni and PostgreSQL run as the
`postgres` user (PostgreSQL refuses root). Every process is ours and stopped at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "patroni" / "patroni.yml"
SUPER_PASSWORD = "drill-super"  # a throwaway cluster on loopback
REPLICATION_PASSWORD = "drill-replication"
APP_USER, APP_PASSWORD, APP_DB = "territoire", "drill-app", "territoire"


def pg_bin_dir() -> Path:
    """The PostgreSQL server binaries (Debian keeps them under /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if found:
        return found[-1].parent
    postgres = shutil.which("postgres")
    if postgres is None:
        raise RuntimeError("PostgreSQL server binaries not found")
    return Path(postgres).parent


def missing_tools() -> list[str]:
    return [tool for tool in ("patroni", "patronictl", "etcd") if shutil.which(tool) is None]


def _ports() -> Iterator[int]:
    base = os.environ.get("TERRITOIRE_DRILL_PORT_BASE")
    if base:
        yield from range(int(base), int(base) + 100)
    from tests.conftest import free_port

    while True:
        yield free_port()


_PORTS = _ports()


def port_source() -> Iterator[int]:
    """Ports for the drills: consecutive from TERRITOIRE_DRILL_PORT_BASE when set (one range shared by every
    caller), else free ones."""
    return _PORTS


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to `postgres` (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class Node:
    name: str
    pg_port: int
    rest_port: int
    data_dir: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def role(self) -> str | None:
        """'primary', 'replica' or None (down), from Patroni's REST API."""
        try:
            answer = httpx.get(f"{self.rest}/patroni", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return None
        if answer.get("state") != "running":
            return None
        role = answer.get("role")
        return "primary" if role in ("master", "primary") else str(role)


@dataclass
class PatroniCluster:
    synchronous: bool = True
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="td-patroni-")))
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    etcd_port: int = 0

    def start(self) -> None:
        ports = port_source()
        self.base.chmod(0o755)
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.base, postgres.pw_uid, postgres.pw_gid)
        self.etcd_port, peer_port = next(ports), next(ports)
        etcd_log = (self.base / "etcd.log").open("ab")
        self.etcd = subprocess.Popen(
            [
                shutil.which("etcd") or "etcd",
                *("--name", "drill", "--data-dir", str(self.base / "etcd")),
                *("--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}"),
                *("--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}"),
                *("--listen-peer-urls", f"http://127.0.0.1:{peer_port}"),
                *("--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}"),
                *("--initial-cluster", f"drill=http://127.0.0.1:{peer_port}"),
            ],
            stdout=etcd_log,
            stderr=subprocess.STDOUT,
        )
        self._wait(lambda: self._etcd_healthy(), 30, "etcd to start")
        for index in (1, 2):
            self.nodes.append(self._configure(f"pg{index}", next(ports), next(ports)))
        self._launch(self.nodes[0])
        self._wait(lambda: self.nodes[0].role() == "primary", 90, "the first node to bootstrap as primary")
        self._launch(self.nodes[1])
        self.wait_healthy()

    def _etcd_healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.etcd_port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _configure(self, name: str, pg_port: int, rest_port: int) -> Node:
        config: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
        config["scope"] = f"drill-{self.base.name}"
        config["name"] = name
        config["restapi"] = {"listen": f"127.0.0.1:{rest_port}", "connect_address": f"127.0.0.1:{rest_port}"}
        config["etcd3"] = {"hosts": f"127.0.0.1:{self.etcd_port}"}
        config["bootstrap"]["dcs"]["synchronous_mode"] = self.synchronous
        config["bootstrap"]["post_bootstrap"] = str(SHIPPED.parent / "post_bootstrap.sh")
        # Loopback only, a 1-second loop (the shipped 2 s leaves failovers a little longer).
        config["bootstrap"]["dcs"]["loop_wait"] = 1
        config["bootstrap"]["pg_hba"] = [
            "local all all trust",
            "host replication replicator 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        data_dir = self.base / name
        postgresql = config["postgresql"]
        postgresql.update(
            {
                "listen": f"127.0.0.1:{pg_port}",
                "connect_address": f"127.0.0.1:{pg_port}",
                "data_dir": str(data_dir),
                "bin_dir": str(pg_bin_dir()),
                "pgpass": str(self.base / f"{name}.pgpass"),
            }
        )
        postgresql["authentication"]["superuser"]["password"] = SUPER_PASSWORD
        postgresql["authentication"]["replication"]["password"] = REPLICATION_PASSWORD
        postgresql["authentication"]["rewind"] = {"username": "postgres", "password": SUPER_PASSWORD}
        postgresql["parameters"] = {"unix_socket_directories": str(self.base)}
        path = self.base / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        return Node(name, pg_port, rest_port, data_dir, path, self.base / f"{name}.log")

    def _launch(self, node: Node) -> None:
        log = node.log.open("ab")
        env = {**os.environ, "PATRONICTL_CONFIG_FILE": str(node.config), "TERRITOIRE_DB_PASSWORD": APP_PASSWORD}
        node.process = subprocess.Popen(
            [shutil.which("patroni") or "patroni", str(node.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.base,
            **_run_as(),
        )

    def superuser_url(self, node: Node, database: str = "postgres") -> str:
        return f"postgresql://postgres:{SUPER_PASSWORD}@127.0.0.1:{node.pg_port}/{database}"

    def url(self) -> str:
        """The application's URL: every node, the primary chosen by target_session_attrs (added by the app)."""
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.nodes)
        return f"postgresql://{APP_USER}:{APP_PASSWORD}@{hosts}/{APP_DB}"

    def cluster_state(self) -> dict[str, Any]:
        for node in self.nodes:
            try:
                state: dict[str, Any] = httpx.get(f"{node.rest}/cluster", timeout=1).json()
                return state
            except (httpx.HTTPError, ValueError):
                continue
        return {}

    def primary(self) -> Node | None:
        for node in self.nodes:
            if node.role() == "primary":
                return node
        return None

    def healthy(self) -> bool:
        """One leader, every other member streaming, and the synchronous standby in place when asked for."""
        members = self.cluster_state().get("members", [])
        if len(members) != len(self.nodes):
            return False
        leaders = [m for m in members if m.get("role") == "leader"]
        others = [m for m in members if m.get("role") != "leader"]
        if len(leaders) != 1 or any(m.get("state") not in ("streaming", "running") for m in others):
            return False
        if self.synchronous:
            return any(m.get("role") == "sync_standby" for m in members)
        return all(m.get("role") == "replica" for m in others)

    def wait_healthy(self, seconds: float = 120) -> None:
        self._wait(self.healthy, seconds, "the cluster to be whole (leader + streaming standby)")

    def kill_primary_postgres(self) -> Node:
        """SIGKILL the primary's postmaster: the crash the failover drill is about."""
        primary = self.primary()
        assert primary is not None, "no primary to kill"
        os.kill(primary.postmaster_pid(), signal.SIGKILL)
        return primary

    def switchover(self, candidate: Node) -> subprocess.CompletedProcess[str]:
        leader = self.primary()
        assert leader is not None
        return subprocess.run(
            [
                shutil.which("patronictl") or "patronictl",
                *("-c", str(leader.config), "switchover", "--leader", leader.name),
                *("--candidate", candidate.name, "--force"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def replay_process(self, node: Node) -> int:
        """The pid of a standby's startup process (the one that applies WAL)."""
        postmaster = node.postmaster_pid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if parent == postmaster and "startup" in command:
                return int(entry.name)
        raise LookupError(f"no startup process under {node.name}'s postmaster (is it a standby?)")

    @contextlib.contextmanager
    def replay_frozen(self, node: Node) -> Iterator[None]:
        """Stop a standby from applying WAL (SIGSTOP of its startup process) while it still receives it: the
        replication delay grows as the primary takes writes. (`pg_wal_replay_pause()` does not last: Patroni
        resumes a paused replay.)"""
        pid = self.replay_process(node)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def logs(self) -> str:
        return "\n".join(f"--- {node.name}\n{node.log.read_text()[-3000:]}" for node in self.nodes if node.log.exists())

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()  # Patroni stops its PostgreSQL
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(60)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(10)
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
                os.kill(node.postmaster_pid(), signal.SIGKILL)  # a postgres left behind (Patroni killed)
        if self.etcd is not None:
            self.etcd.terminate()
            self.etcd.wait(20)
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def _wait(check: Any, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}")


async def add_admin_key(url: str) -> None:
    """The test suite's admin key (tests.conftest.TEST_ADMIN_KEY), in the cluster's database."""
    from tests.conftest import TEST_ADMIN_KEY

    conn = await asyncpg.connect(url + "?target_session_attrs=read-write")
    try:
        await conn.execute(
            "INSERT INTO api_key (prefix, key_hash, name, role) VALUES ($1, $2, 'drill admin', 'admin')",
            TEST_ADMIN_KEY.split("_")[1],
            hashlib.sha256(TEST_ADMIN_KEY.encode()).hexdigest(),
        )
    finally:
        await conn.close()


def report(name: str, figures: dict[str, Any]) -> None:
    """Print a drill's figures, and append them as a JSON line to $TERRITOIRE_DRILL_REPORT when set."""
    line = json.dumps({"drill": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), **figures})
    print(f"\n[drill] {line}")
    target = os.environ.get("TERRITOIRE_DRILL_REPORT")
    if target:
        with Path(target).open("a") as out:
            out.write(line + "\n")
