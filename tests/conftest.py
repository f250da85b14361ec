"""Shared fixtures: a fresh PostGIS database per test session, a private Mosquitto, the app, a live server.

Tests never touch the `territoire` database: they create `td_test_*` databases and drop them afterwards.
Set TERRITOIRE_TEST_ADMIN_URL to point at another PostgreSQL server (default: 127.0.0.1:5432 as postgres).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.db import migrate as migrations
from territoire_data.db.engine import create_engine
from territoire_data.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
ADMIN_URL = os.environ.get("TERRITOIRE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# The admin key every test database holds (see the `db` fixture).
TEST_ADMIN_KEY = "td_0000test_TestAdminKeyForTheSuiteOnly-notASecret-0123456789ab"
TEST_ADMIN_AUTH = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}

# Tables that tests may fill; truncated between tests (observation partitions follow their parent).
CORE_TABLES = (
    "ingest_rejection, audit_event, api_key_grant, api_key, observation, multi_observation, feature_of_interest, "
    "multi_datastream_observed_property, multi_datastream, datastream, "
    "observed_property, sensor, location_historical_location, historical_location, thing_location, location, "
    "thing, dataset_import, dataset, ngsild_notification, ngsild_subscription, ngsild_context, "
    "ngsild_attribute_instance, ngsild_entity"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _url_for(database: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


async def create_database(name: str) -> str:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _url_for(name)


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def make_settings(database_url: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "mqtt_url": os.environ.get("TERRITOIRE_TEST_MQTT_URL", "mqtt://127.0.0.1:1883"),
        "base_url": "http://testserver",
    }
    values.update(extra)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for the session, migrated to head."""
    name = f"td_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = asyncio.run(create_database(name))
    migrations.upgrade(make_settings(url))
    os.environ["TD_TEST_DATABASE_URL"] = url  # for helpers that are handed only an HTTP client (catalog_helpers)
    yield url
    asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def settings(database_url: str, mqtt_url: str) -> Settings:
    return make_settings(database_url, mqtt_url=mqtt_url)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings, pool_size=5)
    yield engine
    await engine.dispose()


async def reset_database(connection: asyncpg.Connection) -> None:
    """Empty the core tables, drop the typed dataset tables, and add the known admin key (TEST_ADMIN_AUTH)."""
    await connection.execute(f"TRUNCATE {CORE_TABLES} RESTART IDENTITY CASCADE")
    # A known admin key, through the real key path: tests send TEST_ADMIN_AUTH to write.
    await connection.execute(
        "INSERT INTO api_key (prefix, key_hash, name, role) VALUES ($1, $2, 'test admin (fixture)', 'admin')",
        TEST_ADMIN_KEY.split("_")[1],
        hashlib.sha256(TEST_ADMIN_KEY.encode()).hexdigest(),
    )
    await connection.execute("DROP SCHEMA IF EXISTS datasets CASCADE; CREATE SCHEMA datasets")


@pytest.fixture
async def db(engine: AsyncEngine, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A clean core schema for the test (tables emptied, typed dataset tables dropped) and a raw connection."""
    connection = await asyncpg.connect(database_url)
    await reset_database(connection)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def client(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app, in process, over a clean database."""
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


# --- MQTT ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mqtt_url() -> Iterator[str]:
    """A private Mosquitto on a free port when the binary is installed, else the configured broker."""
    if "TERRITOIRE_TEST_MQTT_URL" in os.environ or not shutil.which("mosquitto"):
        yield os.environ.get("TERRITOIRE_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
        return
    broker = MosquittoProcess()
    broker.start()
    yield broker.url
    broker.stop()


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the CA the broker trusts for client certificates, its own certificate and key (PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    require_certificate: bool = False  # clients must present a certificate signed by the CA
    use_identity_as_username: bool = False  # ... and the certificate's CN is their user name (no password)


def mosquitto_password_line(user: str, password: str) -> str:
    """One password_file line, from mosquitto_passwd when installed, else in its `$6$` (salted SHA-512) format."""
    tool = shutil.which("mosquitto_passwd")
    if tool:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "passwd"
            subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, capture_output=True)
            return path.read_text().strip()
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class MosquittoProcess:
    """A Mosquitto of our own, with the broker configuration we ship, restartable for failure tests.

    Optionally with users (a password_file, anonymous clients refused) and a TLS listener (`tls`).
    """

    def __init__(
        self, port: int | None = None, *, users: dict[str, str] | None = None, tls: BrokerTls | None = None
    ) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="td-mosquitto-"))
        # Mosquitto started as root drops to the `mosquitto` user: it must be able to write its persistence here.
        self.dir.chmod(0o777)
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = tls
        listener = f"listener {self.port} 127.0.0.1\n"
        if tls is not None:
            self._write("ca.pem", tls.ca_pem)
            self._write("server.pem", tls.cert_pem)
            self._write("server.key", tls.key_pem)
            listener += (
                f"cafile {self.dir}/ca.pem\ncertfile {self.dir}/server.pem\nkeyfile {self.dir}/server.key\n"
                f"require_certificate {str(tls.require_certificate).lower()}\n"
                f"use_identity_as_username {str(tls.use_identity_as_username).lower()}\n"
            )
        anonymous = users is None and not (tls and tls.use_identity_as_username)
        access = f"allow_anonymous {str(anonymous).lower()}\n"
        if users:
            lines = [mosquitto_password_line(user, password) for user, password in users.items()]
            self._write("passwd", ("\n".join(lines) + "\n").encode())
            access += f"password_file {self.dir}/passwd\n"
        shipped = (ROOT / "deploy" / "mosquitto" / "territoire.conf").read_text()
        (self.dir / "mosquitto.conf").write_text(
            f"{listener}{access}persistence true\npersistence_location {self.dir}/\n{shipped}"
        )
        self.log = self.dir / "mosquitto.log"

    def _write(self, name: str, data: bytes) -> None:
        (self.dir / name).write_bytes(data)
        (self.dir / name).chmod(0o644)  # readable by the `mosquitto` user; a throwaway test key

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [shutil.which("mosquitto") or "mosquitto", "-c", str(self.dir / "mosquitto.conf")],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def topic_prefix() -> str:
    """A per-test topic prefix so concurrent tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:10]}"


# --- a live server, for outside clients ------------------------------------------------------------------


class LiveServer:
    def __init__(
        self, settings: Settings, env: dict[str, str] | None = None, workers: int = 1, args: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.workers = workers
        self.args = args
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TERRITOIRE_DATABASE_URL": settings.database_url,
            "TERRITOIRE_MQTT_URL": settings.mqtt_url,
            "TERRITOIRE_BASE_URL": self.url,
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="td-server-", suffix=".log")[1])

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "territoire_data.cli", "serve"),
                    *("--port", str(self.port), "--workers", str(self.workers)),
                    *self.args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


@pytest.fixture
def live_server(settings: Settings, db: asyncpg.Connection) -> Iterator[LiveServer]:
    """The real `territoire-data serve` on a free port, over the test database."""
    server = LiveServer(settings)
    server.start()
    yield server
    server.stop()


# --- a TCP proxy that can cut a real connection, for outage tests ----------------------------------------


class TcpProxy:
    """Forwards a local port to a target; `cut()` drops every connection and refuses new ones until `heal()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def heal(self) -> None:
        await self.start()


# --- API keys --------------------------------------------------------------------------------------------


async def make_key(engine: AsyncEngine, role: str, grants: list[tuple[str, str]] | None = None) -> str:
    """Create an API key of `role` with grants [(dataset slug, 'read'|'write')]; returns the clear key."""
    from territoire_data.auth.keys import create_key

    async with engine.begin() as conn:
        return (await create_key(conn, name=f"test {role}", role=role, grants=grants)).key


@pytest.fixture
async def admin_key(engine: AsyncEngine, db: asyncpg.Connection) -> str:
    return await make_key(engine, "admin")
