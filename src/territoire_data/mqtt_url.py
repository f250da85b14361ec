"""Parsing of TERRITOIRE_MQTT_URL into what paho-mqtt needs, and the credentials and TLS every client uses."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from territoire_data.errors import ConfigurationError


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    def __repr__(self) -> str:  # never show the password
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"BrokerAddress({scheme}://{user}{self.host}:{self.port})"


def parse_mqtt_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def tls_context(ca_file: str | None, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate checked (against `ca_file`, else the system's CAs), its name
    checked, and our certificate offered when the broker requires one."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def configure_client(
    client: mqtt.Client,
    address: BrokerAddress,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Credentials and TLS for a paho client, the same way for every process that talks to the broker.

    TLS is on for `mqtts://` and whenever a CA or client certificate is configured; explicit credentials win over
    the URL's. A missing or unreadable certificate file is a clear ConfigurationError, never a traceback.
    """
    user = username or address.username
    if user:
        client.username_pw_set(user, password or address.password)
    if address.tls or ca_file or cert_file:
        try:
            client.tls_set_context(tls_context(ca_file, cert_file, key_file))
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (ca_file, cert_file, key_file) if f) or "the system CAs"
            raise ConfigurationError(f"cannot load the MQTT TLS files ({files}): {exc}") from None
