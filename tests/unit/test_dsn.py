"""Database URLs naming several hosts (a Patroni cluster) reach each driver in the form it reads."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from territoire_data.dsn import DatabaseUrlError, parse_database_url
from territoire_data.errors import ConfigurationError
from territoire_data.settings import load_settings

CLUSTER = "postgresql://app:s%40cret@10.0.0.1:5432,10.0.0.2:5433/territoire"


def test_several_hosts_keep_their_ports_and_writers_ask_for_the_primary() -> None:
    url = parse_database_url(CLUSTER)
    assert url.hosts == (("10.0.0.1", 5432), ("10.0.0.2", 5433))
    assert url.password == "s@cret"
    writer = url.for_role("write")
    assert writer.libpq() == (
        "postgresql://app:s%40cret@10.0.0.1:5432,10.0.0.2:5433/territoire?target_session_attrs=read-write"
    )
    assert url.for_role("read").target_session_attrs == "prefer-standby"


def test_sqlalchemy_gets_the_hosts_as_repeated_host_parameters() -> None:
    text = parse_database_url(CLUSTER).for_role("write").sqlalchemy("asyncpg")
    parsed = make_url(text)  # SQLAlchemy's own parser reads it back
    assert parsed.drivername == "postgresql+asyncpg"
    assert parsed.host is None
    assert parsed.query["host"] == ("10.0.0.1:5432", "10.0.0.2:5433")
    assert parsed.query["target_session_attrs"] == "read-write"
    assert parsed.password == "s@cret"
    assert parse_database_url(CLUSTER).sqlalchemy("psycopg").startswith("postgresql+psycopg://app:")


def test_a_single_host_url_is_left_as_it_was() -> None:
    url = parse_database_url("postgresql://me@127.0.0.1:5432/territoire?sslmode=require")
    assert url.for_role("write") == url  # one host: no session attribute added
    assert url.sqlalchemy() == "postgresql+asyncpg://me@127.0.0.1:5432/territoire?sslmode=require"
    assert url.libpq() == "postgresql://me@127.0.0.1:5432/territoire?sslmode=require"


def test_an_explicit_target_session_attrs_wins() -> None:
    url = parse_database_url(CLUSTER + "?target_session_attrs=any")
    assert url.for_role("write").target_session_attrs == "any"


def test_hosts_as_query_parameters_and_ipv6() -> None:
    url = parse_database_url("postgresql://me@/db?host=a,b&port=5432,5433")
    assert url.hosts == (("a", 5432), ("b", 5433))
    assert parse_database_url("postgresql://me@[::1]:5432,h/db").hosts == (("::1", 5432), ("h", None))
    assert "[::1]:5432,h/db" in parse_database_url("postgresql://me@[::1]:5432,h/db").libpq()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "postgresql://"),
        ("postgresql://h1:5432,h2:x/db", "malformed port"),
        ("postgresql://h1,h2/", "must name a database"),
        ("postgresql:///db", "must name a host"),
        ("postgresql://h1,h2/db?target_session_attrs=master", "target_session_attrs"),
        ("postgresql://h1/db?host=h2", "names hosts twice"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError, match=message):
        parse_database_url(url)


def test_settings_carry_the_forms_and_hide_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", CLUSTER)
    monkeypatch.setenv("TERRITOIRE_DATABASE_READ_URL", "postgresql://app:pw@10.0.0.2:5433,10.0.0.3:5432/territoire")
    settings = load_settings(_env_file=None)
    assert settings.asyncpg_dsn.endswith("?target_session_attrs=read-write")
    assert "host=10.0.0.1%3A5432&host=10.0.0.2%3A5433" in settings.sqlalchemy_url
    assert settings.asyncpg_read_dsn is not None
    assert settings.asyncpg_read_dsn.endswith("?target_session_attrs=prefer-standby")
    assert "s%40cret" not in settings.redacted_database_url()
    assert "***" in settings.redacted_database_url()
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", "postgresql://h1:5432,h2:99999/db")
    with pytest.raises(ConfigurationError, match="TERRITOIRE_DATABASE_URL is invalid: has a malformed port"):
        load_settings(_env_file=None)
