"""Database URLs with one or several hosts, in the form each driver wants.

A Patroni cluster (or any primary with hot standbys) is reached through one URL naming every node, the way libpq
writes it: `postgresql://user:pw@10.0.0.1:5432,10.0.0.2:5432/territoire?target_session_attrs=read-write`. The
client tries the hosts in turn and keeps the first that matches the session attributes, so after a failover a new
connection lands on the new primary without any change of configuration.

asyncpg and libpq (psycopg) read that form as it is. SQLAlchemy's URL parser does not (a comma in the port), but
its asyncpg and psycopg dialects take the same hosts as repeated `host=` query parameters
(`postgresql+asyncpg://user:pw@/territoire?host=10.0.0.1:5432&host=10.0.0.2:5432`), so we rewrite to that.
With several hosts and no `target_session_attrs`, writers get `read-write` (a standby accepts connections but
refuses writes) and readers `prefer-standby`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode

Driver = Literal["asyncpg", "psycopg"]
Role = Literal["write", "read"]
SESSION_ATTRS = ("any", "primary", "standby", "read-write", "read-only", "prefer-standby")
_DEFAULT_ATTRS: dict[Role, str] = {"write": "read-write", "read": "prefer-standby"}
_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg")


class DatabaseUrlError(ValueError):
    """A database URL that cannot name a PostgreSQL server (the message says what is wrong)."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL: credentials, one or several (host, port), database, the other parameters."""

    user: str | None
    password: str | None
    hosts: tuple[tuple[str, int | None], ...]
    database: str
    params: tuple[tuple[str, str], ...]

    @property
    def multi_host(self) -> bool:
        return len(self.hosts) > 1

    @property
    def target_session_attrs(self) -> str | None:
        return dict(self.params).get("target_session_attrs")

    def for_role(self, role: Role) -> DatabaseUrl:
        """This URL with the session attributes a writer or a reader needs, when several hosts are named and
        the URL does not say which it wants."""
        if not self.multi_host or self.target_session_attrs is not None:
            return self
        return DatabaseUrl(
            self.user,
            self.password,
            self.hosts,
            self.database,
            (*self.params, ("target_session_attrs", _DEFAULT_ATTRS[role])),
        )

    def _userinfo(self) -> str:
        if self.user is None:
            return ""
        user = quote(self.user, safe="")
        return f"{user}:{quote(self.password, safe='')}@" if self.password is not None else f"{user}@"

    @staticmethod
    def _hostport(host: str, port: int | None) -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port}" if port is not None else shown

    def libpq(self) -> str:
        """The libpq form (`host1:port1,host2:port2` in the netloc), which asyncpg and psycopg read."""
        hosts = ",".join(self._hostport(host, port) for host, port in self.hosts)
        query = f"?{urlencode(self.params)}" if self.params else ""
        return f"postgresql://{self._userinfo()}{hosts}/{quote(self.database, safe='')}{query}"

    def sqlalchemy(self, driver: Driver = "asyncpg") -> str:
        """The form SQLAlchemy's dialect wants: one host in the netloc, several as repeated `host=`."""
        database = quote(self.database, safe="")
        if not self.multi_host:
            (host, port), *_ = self.hosts
            query = f"?{urlencode(self.params)}" if self.params else ""
            return f"postgresql+{driver}://{self._userinfo()}{self._hostport(host, port)}/{database}{query}"
        params = [("host", self._hostport(host, port)) for host, port in self.hosts] + list(self.params)
        return f"postgresql+{driver}://{self._userinfo()}/{database}?{urlencode(params)}"

    def redacted(self) -> str:
        """The libpq form with the password hidden (for logs and messages)."""
        hidden = DatabaseUrl(
            self.user, "***" if self.password is not None else None, self.hosts, self.database, self.params
        )
        return hidden.libpq().replace("%2A%2A%2A", "***")


def parse_database_url(url: str) -> DatabaseUrl:
    """Parse a postgresql:// URL with one or several `host[:port]` (comma-separated, or as `host=` parameters)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise DatabaseUrlError("must start with postgresql://")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        userinfo, hostlist = "", netloc
    user: str | None = None
    password: str | None = None
    if at:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name)
        password = unquote(secret) if colon else None
    params: list[tuple[str, str]] = []
    hosts: list[tuple[str, int | None]] = [_host_port(item) for item in hostlist.split(",") if item]
    query_hosts: list[str] = []
    query_ports: list[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "host":
            query_hosts += value.split(",")
        elif key == "port":
            query_ports += value.split(",")
        else:
            params.append((key, value))
    if query_hosts:
        if hosts:
            raise DatabaseUrlError("names hosts twice (in the address and as host=)")
        if query_ports and len(query_ports) not in (1, len(query_hosts)):
            raise DatabaseUrlError("has a port= list that does not match its host= list")
        for index, item in enumerate(query_hosts):
            host, port = _host_port(item)
            if port is None and query_ports:
                port = _port(query_ports[index if len(query_ports) > 1 else 0])
            hosts.append((host, port))
    elif query_ports:
        if len(hosts) != 1 or hosts[0][1] is not None:
            raise DatabaseUrlError("has a port= parameter that does not match its hosts")
        hosts = [(hosts[0][0], _port(query_ports[0]))]
    if not hosts:
        raise DatabaseUrlError("must name a host, e.g. postgresql://user@127.0.0.1:5432/territoire")
    database = unquote(path.strip("/"))
    if not database:
        raise DatabaseUrlError("must name a database, e.g. postgresql://user@127.0.0.1:5432/territoire")
    attrs = dict(params).get("target_session_attrs")
    if attrs is not None and attrs not in SESSION_ATTRS:
        raise DatabaseUrlError(f"has target_session_attrs={attrs!r}: use one of {', '.join(SESSION_ATTRS)}")
    return DatabaseUrl(user, password, tuple(hosts), database, tuple(params))


def _host_port(item: str) -> tuple[str, int | None]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, after = item[1:].partition("]")
        return host, _port(after[1:]) if after.startswith(":") else None
    host, colon, port = item.partition(":")
    if not host:
        raise DatabaseUrlError(f"has an empty host in {item!r}")
    return host, _port(port) if colon else None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DatabaseUrlError(f"has a malformed port {text!r}")
    return int(text)
