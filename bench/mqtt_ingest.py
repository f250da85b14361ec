"""MQTT ingest benchmark: our worker against a bare paho subscriber (the limit) and a naive INSERT-per-message worker.

Run:  .venv/bin/python bench/mqtt_ingest.py [-n 200000] [--phases bare,worker,naive,shared,latency]

Unattended; with the defaults it takes about 4-6 minutes on two cores. Options: --phases to run a subset,
--database for the scratch database's name (default td_bench_mqtt_<pid>, dropped at the end).

What it does, in one run, on a private Mosquitto (our shipped broker configuration) and a fresh database:
1. Throughput. For each consumer, its persistent session is created, then N ChirpStack-like uplinks are queued in
   the broker, then the consumer starts and drains them; rate = N / (first message received -> last one done):
   - bare: a paho subscriber that only counts (QoS as given, automatic acknowledgement);
   - worker: `territoire-data ingest mqtt` (a subprocess), done = acknowledged after commit (read on --metrics-port);
   - naive: paho + one INSERT and COMMIT per message, acknowledged after it (on fewer messages: it is slow);
   - two workers on one shared subscription, against the bare subscriber.
2. Latency. A worker runs while uplinks are published live at --latency-rate msgs/s; a poller notes when each
   observation becomes queryable; prints p50/p99 of publish -> queryable.
Counts are checked: every message must arrive (the broker configuration must not drop any), and the rows stored
must be exactly two per message, no duplicate ("!!" lines otherwise); latency counts unseen observations as late.
Each throughput line also gives the CPU microseconds per message of each party (consumer, the worker's storing
child, broker, database backends), read from /proc between the first message and the last: on a busy machine
these move much less than the rates do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from territoire_data.db import migrate as migrations  # noqa: E402
from territoire_data.ingest.mqtt.config import parse_connector  # noqa: E402
from territoire_data.ingest.mqtt.decoders import decode_payload  # noqa: E402
from territoire_data.mqtt_url import parse_mqtt_url  # noqa: E402
from territoire_data.settings import Settings  # noqa: E402

DEVICES = 200
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    """Direct children of a process (the worker's storing child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def database_backends(dsn: str) -> list[int]:
    """Server processes connected to the bench database (the workers' writers), other than the asking one."""

    async def ask() -> list[int]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    return asyncio.run(ask())


class CpuMeter:
    """CPU seconds spent per message by each party during one drain: consumer, broker, database backends.

    Sampled when the first message arrives and when the last is done, so start-up (imports, connections) is left
    out, as it is from the rates.
    """

    def __init__(self, broker_pid: int) -> None:
        self.broker_pid = broker_pid
        self.start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def begin(self, parties: dict[str, float]) -> None:
        self.start = {**parties, "broker": cpu_seconds(self.broker_pid)}

    def end(self, parties: dict[str, float]) -> None:
        now = {**parties, "broker": cpu_seconds(self.broker_pid)}
        self.used = {name: now[name] - self.start.get(name, 0.0) for name in now}

    def describe(self, n: int) -> str:
        parts = [f"{name} {seconds / n * 1e6:.0f}" for name, seconds in self.used.items() if seconds]
        return f"CPU µs/msg: {', '.join(parts)} (total {sum(self.used.values()) / n * 1e6:.0f})"


def worker_cpu(procs: list[WorkerProcess], dsn: str) -> dict[str, float]:
    """CPU seconds so far of the worker processes, their storing children and their database connections."""
    pids = [proc.process.pid for proc in procs if proc.process is not None]
    kids = [child for pid in pids for child in children(pid)]
    return {
        "worker": sum(map(cpu_seconds, pids)),
        "its storing child": sum(map(cpu_seconds, kids)),
        "database": sum(map(cpu_seconds, database_backends(dsn))),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """A private Mosquitto with the broker configuration we ship."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="td-bench-mosquitto-"))
        self.dir.chmod(0o777)
        shipped = (ROOT / "deploy" / "mosquitto" / "territoire.conf").read_text()
        (self.dir / "mosquitto.conf").write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{shipped}")
        self.process = subprocess.Popen(
            [shutil.which("mosquitto") or "mosquitto", "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def uplink(prefix: str, n: int) -> tuple[str, bytes]:
    """A ChirpStack v4 uplink like a real air-quality sensor's (about 900 bytes, 2 decoded values)."""
    eui = f"a840410000{n % DEVICES:06x}"
    event = {
        "deduplicationId": str(uuid.UUID(int=n)),
        "time": (T0 + timedelta(seconds=n // DEVICES, microseconds=n % DEVICES)).isoformat(),
        "deviceInfo": {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
            "tenantName": "Nantes Métropole",
            "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97",
            "applicationName": "qualite-air",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
            "deviceProfileName": "Elsys ERS",
            "deviceName": f"air-{n % DEVICES}",
            "devEui": eui,
            "tags": {"latitude": "47.2184", "longitude": "-1.5536"},
        },
        "devAddr": "00189440",
        "adr": True,
        "dr": 5,
        "fCnt": n,
        "fPort": 1,
        "confirmed": False,
        "data": "AQDiAikEACcFBgYDCA==",
        "object": {"temperature": 20 + (n % 70) / 10, "humidity": 40 + n % 50},
        "rxInfo": [
            {
                "gatewayId": "0016c001f153a14c",
                "uplinkId": 4217106255,
                "rssi": -36 - n % 60,
                "snr": 10.5,
                "channel": 2,
                "location": {"latitude": 47.21, "longitude": -1.55},
                "context": "E3OWOQ==",
                "metadata": {"region_name": "eu868", "region_common_name": "EU868"},
                "crcStatus": "CRC_OK",
            }
        ],
        "txInfo": {
            "frequency": 867100000,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}},
        },
    }
    return f"{prefix}/application/17c82e96/device/{eui}/event/up", orjson.dumps(event)


def publish(url: str, prefix: str, start: int, count: int, qos: int) -> None:
    """Publish `count` uplinks and wait until the broker has taken every one."""
    address = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(2000)
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port)
    client.loop_start()
    infos = []
    for n in range(start, start + count):
        infos.append(client.publish(*uplink(prefix, n), qos=qos))
        if len(infos) >= 5000:
            for info in infos:
                info.wait_for_publish(60)
            infos.clear()
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


class BareSubscriber:
    """Counts messages; nothing else. The limit of what a paho consumer can take from this broker."""

    def __init__(self, url: str, topic: str, qos: int, client_id: str) -> None:
        self.address = parse_mqtt_url(url)
        self.topic, self.qos = topic, qos
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(self.topic, self.qos)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda c, u, m, r, p: self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now

    def connect(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        self.subscribed.clear()
        self.client.connect(self.address.host, self.address.port, clean_start=False, properties=properties)
        self.client.loop_start()
        self.subscribed.wait(10)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_bare(url: str, prefix: str, n: int, qos: int, meter: CpuMeter) -> float:
    sub = BareSubscriber(url, f"{prefix}/application/+/device/+/event/+", qos, f"bench-bare-{prefix}")
    sub.connect()
    sub.disconnect()
    publish(url, prefix, 0, n, qos)
    meter.begin({"subscriber": time.process_time()})
    sub.connect()
    deadline = time.monotonic() + 600
    while sub.count < n and time.monotonic() < deadline:
        time.sleep(0.01)
    meter.end({"subscriber": time.process_time()})
    sub.disconnect()
    if sub.count != n:
        raise RuntimeError(f"bare subscriber got {sub.count} of {n} messages: the broker dropped some")
    return n / (sub.last - sub.first)


class WorkerProcess:
    """`territoire-data ingest mqtt` as a subprocess, observed through its /metrics."""

    def __init__(self, env: dict[str, str], connector: Path, client_id: str, shared_group: str | None = None) -> None:
        self.env, self.connector, self.client_id, self.shared_group = env, connector, client_id, shared_group
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.log = Path(tempfile.mkstemp(prefix="td-bench-worker-", suffix=".log")[1])

    def start(self, wait: bool = True) -> None:
        command = [
            sys.executable, "-m", "territoire_data.cli", "ingest", "mqtt", str(self.connector),
            "--client-id", self.client_id, "--metrics-port", str(self.port),
        ]  # fmt: skip
        if self.shared_group:
            command += ["--shared-group", self.shared_group]
        self.log.write_text("")
        with self.log.open("w") as out:
            self.process = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while wait and "subscribed to" not in self.log.read_text():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        except httpx.TransportError:
            return {"received": 0.0, "acknowledged": 0.0}  # not serving yet
        values: dict[str, float] = {}
        for name in ("received", "acknowledged"):
            match = re.search(rf"^territoire_ingest_messages_{name}_total\{{[^}}]*\}} (\S+)$", text, re.M)
            values[name] = float(match.group(1)) if match else 0.0
        return values

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None


def run_workers(
    env: dict[str, str],
    connector: Path,
    url: str,
    dsn: str,
    prefix: str,
    n: int,
    qos: int,
    workers: int,
    meter: CpuMeter,
) -> float:
    group = f"bench{prefix[-6:]}" if workers > 1 else None
    procs = [WorkerProcess(env, connector, f"bench-w{i}-{prefix}", group) for i in range(workers)]
    for proc in procs:  # create the persistent sessions (and shared subscription), then go away
        proc.start()
    for proc in procs:
        proc.stop()
    publish(url, prefix, 0, n, qos)
    for proc in procs:  # poll from the start: the first message can come before the log line
        proc.start(wait=False)
    first = None
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            totals = [proc.metrics() for proc in procs]
            now = time.monotonic()
            if first is None and sum(t["received"] for t in totals) > 0:
                first = now
                meter.begin(worker_cpu(procs, dsn))
            if sum(t["acknowledged"] for t in totals) >= n:
                assert first is not None
                rate = n / (now - first)
                meter.end(worker_cpu(procs, dsn))
                return rate
            time.sleep(0.02)
        raise RuntimeError(f"workers did not finish: {totals}")
    finally:
        for proc in procs:
            proc.stop()


def run_naive(
    url: str, dsn: str, connector_data: dict[str, Any], prefix: str, n: int, qos: int, meter: CpuMeter
) -> float:
    """paho + for each message: decode, one INSERT, one COMMIT, then the acknowledgement."""
    config = parse_connector(connector_data)
    address = parse_mqtt_url(url)
    done = 0
    first = last = 0.0
    inbox: asyncio.Queue[mqtt.MQTTMessage] | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert loop is not None
        assert inbox is not None
        loop.call_soon_threadsafe(inbox.put_nowait, message)

    async def main() -> None:
        nonlocal inbox, loop, done, first, last
        loop = asyncio.get_running_loop()
        inbox = asyncio.Queue()
        conn = await asyncpg.connect(dsn)
        streams = {r["external_key"]: r["id"] for r in await conn.fetch("SELECT id, external_key FROM datastream")}
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-naive-{prefix}", manual_ack=True)
        client.on_message = on_message
        client.on_connect = lambda c, u, f, r, p: c.subscribe(config.topics[0], qos)
        client.connect(address.host, address.port)
        client.loop_start()
        await asyncio.sleep(1)
        await asyncio.to_thread(publish, url, prefix, 0, n, qos)
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        while done < n:
            message = await asyncio.wait_for(inbox.get(), 120)
            if not done:
                first = time.monotonic()
                meter.begin({"naive worker": time.process_time(), "database": cpu_seconds(backend)})
            readings = decode_payload(message.topic, message.payload, config, datetime.now(UTC), 1 << 20)
            assert isinstance(readings, list)
            args: list[Any] = []
            values = []
            for reading in readings:
                key = f"{config.name}:{reading.device.key}/{reading.quantity}"
                values.append(f"(${len(args) + 1}, ${len(args) + 2}, ${len(args) + 3})")
                args += [streams[key], reading.time, float(reading.value)]  # type: ignore[arg-type]
            await conn.execute(
                "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES "
                + ", ".join(values)
                + " ON CONFLICT DO NOTHING",
                *args,
            )
            client.ack(message.mid, message.qos)
            done += 1
            last = time.monotonic()
        meter.end({"naive worker": time.process_time(), "database": cpu_seconds(backend)})
        client.disconnect()
        client.loop_stop()
        await conn.close()

    asyncio.run(main())
    return n / (last - first)


async def measure_latency(dsn: str, url: str, prefix: str, rate: float, seconds: float) -> list[float]:
    """Publish live at `rate` msgs/s (message time = publish time); note when each becomes queryable."""
    conn = await asyncpg.connect(dsn)
    seen: list[float] = []
    stop = threading.Event()
    start_times: dict[datetime, float] = {}

    def publisher() -> None:
        address = parse_mqtt_url(url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-live-{prefix}")
        client.connect(address.host, address.port)
        client.loop_start()
        begin = time.monotonic()
        sent = 0
        while time.monotonic() - begin < seconds:
            ahead = sent / rate - (time.monotonic() - begin)
            if ahead > 0:
                time.sleep(ahead)
            moment = datetime.now(UTC)
            eui = f"b0{sent % DEVICES:014x}"
            event = {
                "time": moment.isoformat(),
                "deviceInfo": {"devEui": eui, "deviceName": f"live-{sent % DEVICES}"},
                "object": {"temperature": 20.5},
            }
            start_times[moment] = time.time()
            client.publish(f"{prefix}/application/live/device/{eui}/event/up", orjson.dumps(event), qos=1)
            sent += 1
        time.sleep(2)
        client.disconnect()
        client.loop_stop()
        stop.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    # Writers commit batches in parallel, so a later commit can hold earlier times: poll a window that overlaps
    # the previous poll by a few seconds and count each observation once.
    found: set[datetime] = set()
    last = datetime.now(UTC) - timedelta(seconds=5)
    while not stop.is_set():
        rows = await conn.fetch(
            "SELECT phenomenon_time FROM observation WHERE phenomenon_time > $1 ORDER BY phenomenon_time",
            last - timedelta(seconds=3),
        )
        now = time.time()
        for row in rows:
            moment = row["phenomenon_time"]
            published = start_times.get(moment)
            if published is not None and moment not in found:
                found.add(moment)
                seen.append(now - published)
        if rows:
            last = max(last, rows[-1]["phenomenon_time"])
        await asyncio.sleep(0.01)
    thread.join()
    await conn.close()
    if len(seen) < len(start_times):
        print(f"  !! latency: only {len(seen):,} of {len(start_times):,} observations seen (the rest count as late)")
        seen += [float("inf")] * (len(start_times) - len(seen))
    return seen


async def declare_indicator(dsn: str, *, trigger: bool) -> None:
    """What the indicators' marking trigger looks up: a daily indicator on the `temperature` quantity."""
    conn = await asyncpg.connect(dsn)
    try:
        prop = await conn.fetchval(
            "INSERT INTO observed_property (name, definition, description, external_key) "
            "VALUES ('temperature', '', '', 'temperature') RETURNING id"
        )
        indicator = await conn.fetchval(
            "INSERT INTO indicator (slug, definition, origin) VALUES ('bench', '{}', 'api') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO indicator_sensor_source VALUES ($1, $2, NULL, 'day', 'Europe/Paris')", indicator, prop
        )
        if not trigger:
            await conn.execute("ALTER TABLE observation DISABLE TRIGGER observation_indicator_inserted")
    finally:
        await conn.close()


async def create_database(admin: str, name: str) -> tuple[str, str]:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name, admin.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def truncate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute("TRUNCATE observation, ingest_rejection")
    await conn.execute("VACUUM ANALYZE observation")
    await conn.close()


async def stored(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    total = await conn.fetchval("SELECT count(*) FROM observation")
    distinct = await conn.fetchval("SELECT count(DISTINCT (datastream_id, phenomenon_time)) FROM observation")
    await conn.close()
    return int(total), int(distinct)


PHASES = ("bare", "worker", "naive", "shared", "latency")


def check_stored(dsn: str, expected: int, what: str) -> str:
    """Rows stored against rows expected: the bench counts what arrived and was committed, never assumes it."""
    total, distinct = asyncio.run(stored(dsn))
    if total != expected or distinct != total:
        print(f"  !! {what}: stored {total:,} rows ({distinct:,} distinct), expected {expected:,}")
    return f"stored {total:,} rows, {distinct:,} distinct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=200_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    # QoS 1 only: the broker does not queue QoS 0 messages for an offline session, which this method relies on.
    parser.add_argument("--qos", type=int, choices=(1,), default=1)
    parser.add_argument("--latency-rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--writers", type=int, help="the connector's parallel database writers (default: its own)")
    parser.add_argument("--database", default=f"td_bench_mqtt_{os.getpid()}", help="scratch database (dropped)")
    parser.add_argument(
        "--indicator",
        choices=("none", "marking", "no-trigger"),
        default="none",
        help="marking: a daily indicator reads the ingested temperatures, so the observation trigger marks its "
        "periods (migration 0014); no-trigger: the same indicator with that trigger disabled (pair the two)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("TERRITOIRE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    n, qos = args.messages, args.qos
    phases = set(args.phases.split(","))
    began = time.monotonic()

    broker = Broker()
    name, dsn = asyncio.run(create_database(args.admin_url, args.database))
    work = Path(tempfile.mkdtemp(prefix="td-bench-"))
    try:
        migrations.upgrade(Settings(_env_file=None, database_url=dsn))  # type: ignore[call-arg]
        if args.indicator != "none":
            asyncio.run(declare_indicator(dsn, trigger=args.indicator == "marking"))
        env = {
            **os.environ,
            "TERRITOIRE_DATABASE_URL": dsn,
            "TERRITOIRE_MQTT_URL": broker.url,
            "TERRITOIRE_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT / "src"),
        }

        def connector(prefix: str) -> tuple[Path, dict[str, Any]]:
            data = {
                "name": "bench",
                "decoder": "chirpstack-v4",
                "topics": [f"{prefix}/application/+/device/+/event/+"],
                "qos": qos,
                "dataset": {"slug": "bench", "title": "Bench"},
                "quantities": {"temperature": {"unit": "Cel"}, "humidity": {"unit": "%"}},
            }
            if args.writers:
                data["writers"] = args.writers
            path = work / f"{prefix}.yaml"
            path.write_text(yaml.safe_dump(data))
            return path, data

        print(
            f"MQTT ingest benchmark: {n:,} ChirpStack-like uplinks at QoS {qos}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f}, indicator: {args.indicator}"
        )
        rates: dict[str, float] = {}
        meter = CpuMeter(broker.process.pid)
        if "bare" in phases:
            rates["bare"] = run_bare(broker.url, "bare", n, qos, meter)
            print(f"  bare paho subscriber (counts only) : {rates['bare']:10,.0f} msgs/s   {meter.describe(n)}")

        if "worker" in phases:
            path, _ = connector("one")
            rates["worker"] = run_workers(env, path, broker.url, dsn, "one", n, qos, 1, meter)
            counts = check_stored(dsn, 2 * n, "one worker")
            print(f"  our worker, end to end (committed) : {rates['worker']:10,.0f} msgs/s   {meter.describe(n)}")
            print(f"{'':40}{counts}")

        if "naive" in phases:
            asyncio.run(truncate(dsn))
            path, data = connector("naive")
            naive_n = min(n, args.naive_messages)
            rates["naive"] = run_naive(broker.url, dsn, data, "naive", naive_n, qos, meter)
            check_stored(dsn, 2 * naive_n, "naive worker")
            print(
                f"  naive worker (INSERT+COMMIT each)  : {rates['naive']:10,.0f} msgs/s   {meter.describe(naive_n)}"
                f" (on {naive_n:,} messages)"
            )

        if "shared" in phases:
            asyncio.run(truncate(dsn))
            path, _ = connector("shared")
            rates["shared"] = run_workers(env, path, broker.url, dsn, "shared", n, qos, 2, meter)
            counts = check_stored(dsn, 2 * n, "two workers")
            print(f"  two workers, shared subscription   : {rates['shared']:10,.0f} msgs/s   {meter.describe(n)}")
            print(f"{'':40}{counts}")

        ratios = []
        if "bare" in rates and "worker" in rates:
            ratios.append(f"worker/bare = {rates['worker'] / rates['bare']:.0%} (target >= 80%)")
        if "naive" in rates and "worker" in rates:
            ratios.append(f"worker/naive = {rates['worker'] / rates['naive']:.1f}x (target >= 10x)")
        if "bare" in rates and "shared" in rates:
            ratios.append(f"two workers/bare = {rates['shared'] / rates['bare']:.0%}")
        if ratios:
            print(f"  ratios: {', '.join(ratios)}")

        if "latency" in phases:
            asyncio.run(truncate(dsn))
            path, _ = connector("live")
            proc = WorkerProcess(env, path, "bench-live")
            proc.start()
            try:
                delays = asyncio.run(measure_latency(dsn, broker.url, "live", args.latency_rate, args.latency_seconds))
            finally:
                proc.stop()
            if delays:
                delays.sort()
                p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
                print(
                    f"  latency publish -> queryable at {args.latency_rate:,.0f} msgs/s: p50 "
                    f"{statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
                    f"{delays[-1] * 1000:.0f} ms ({len(delays):,} observations; target p99 < 1 s)"
                )
    finally:
        broker.stop()
        asyncio.run(drop_database(args.admin_url, name))
        shutil.rmtree(work, ignore_errors=True)
    print(f"  bench ran {time.monotonic() - began:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
