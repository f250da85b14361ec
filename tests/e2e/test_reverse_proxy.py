"""The nginx configuration we ship (deploy/nginx/territoire.conf), run by a real nginx in front of the real server:
the client's address, not the proxy's, reaches the per-IP rate limit and the audit log, and only through a proxy
listed in TERRITOIRE_TRUSTED_PROXIES.

Clients are told apart by their source address: the whole of 127.0.0.0/8 is loopback, so one client connects
from 127.0.0.2 and another from 127.0.0.3.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from territoire_data.settings import Settings
from tests.conftest import ROOT, TEST_ADMIN_AUTH, LiveServer, free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.db,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)"),
]
LIMIT = 5  # requests per minute per IP, for the test


class Nginx:
    """nginx with the shipped server block, its upstream lines pointed at our API process."""

    def __init__(self, api_port: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="td-nginx-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        shipped = (ROOT / "deploy" / "nginx" / "territoire.conf").read_text()
        assert "server 127.0.0.1:8000 " in shipped and "listen 80;" in shipped, "the shipped file changed shape"
        site = (
            shipped.replace("127.0.0.1:8000 ", f"127.0.0.1:{api_port} ")
            .replace("127.0.0.1:8001 ", f"127.0.0.1:{api_port} ")
            .replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        )
        (self.dir / "territoire.conf").write_text(site)
        temp = {name: self.dir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir()
            path.chmod(0o777)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n  access_log {self.dir}/access.log;\n"
            f"  client_body_temp_path {temp['body']};\n  proxy_temp_path {temp['proxy']};\n"
            f"  fastcgi_temp_path {temp['fastcgi']};\n  uwsgi_temp_path {temp['uwsgi']};\n"
            f"  scgi_temp_path {temp['scgi']};\n"
            f"  include {self.dir}/territoire.conf;\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert NGINX is not None
        check = subprocess.run(
            [NGINX, "-t", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError((self.dir / "error.log").read_text())

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def client_from(address: str, base_url: str) -> httpx.Client:
    """An HTTP client whose connections come from `address` (a loopback address of its own)."""
    return httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=address), timeout=10)


def statuses(address: str, base_url: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    with client_from(address, base_url) as http:
        return [http.get("/sta/v1.1", headers=headers).status_code for _ in range(count)]


@pytest.fixture
def behind_nginx(
    settings: Settings, db: asyncpg.Connection, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    """(nginx's URL, the API's own URL); the API trusts nginx's address unless the test says otherwise."""
    trusted = getattr(request, "param", '["127.0.0.1"]')
    env = {"TERRITOIRE_RATE_LIMIT_PER_MINUTE": str(LIMIT), "TERRITOIRE_TRUSTED_PROXIES": trusted}
    server = LiveServer(settings, env=env)
    server.start()
    proxy = Nginx(server.port)
    try:
        proxy.start()
        yield proxy.url, server.url
    finally:
        proxy.stop()
        server.stop()


def test_each_client_behind_the_proxy_has_its_own_rate_limit(behind_nginx: tuple[str, str]) -> None:
    proxy, _ = behind_nginx
    assert statuses("127.0.0.2", proxy, LIMIT + 1) == [200] * LIMIT + [429]
    # another client behind the same proxy is not held back by the first one's traffic
    assert statuses("127.0.0.3", proxy, 1) == [200]
    # and the first cannot get round its limit by claiming another address: nginx appends the real one
    assert statuses("127.0.0.2", proxy, 1, {"X-Forwarded-For": "203.0.113.7"}) == [429]


def test_a_client_talking_to_the_api_directly_cannot_claim_an_address(behind_nginx: tuple[str, str]) -> None:
    _, api = behind_nginx
    spoofed = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(LIMIT + 1)]
    with client_from("127.0.0.2", api) as http:  # 127.0.0.2 is no trusted proxy: its header is ignored
        answers = [http.get("/sta/v1.1", headers=headers).status_code for headers in spoofed]
    assert answers == [200] * LIMIT + [429]


@pytest.mark.parametrize("behind_nginx", ["[]"], indirect=True)
def test_without_trusted_proxies_every_client_looks_like_the_proxy(behind_nginx: tuple[str, str]) -> None:
    proxy, _ = behind_nginx
    assert statuses("127.0.0.2", proxy, LIMIT) == [200] * LIMIT
    assert statuses("127.0.0.3", proxy, 1) == [429]  # what TERRITOIRE_TRUSTED_PROXIES is for


async def test_the_audit_log_records_the_client_not_the_proxy(
    behind_nginx: tuple[str, str], db: asyncpg.Connection
) -> None:
    proxy, _ = behind_nginx
    async with httpx.AsyncClient(
        base_url=proxy, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.4"), timeout=10
    ) as http:
        created = await http.post(
            "/sta/v1.1/Things", json={"name": "behind nginx", "description": "d"}, headers=TEST_ADMIN_AUTH
        )
    assert created.status_code == 201, created.text
    remote = await db.fetchval("SELECT host(remote_addr) FROM audit_event ORDER BY id DESC LIMIT 1")
    assert remote == "127.0.0.4"
