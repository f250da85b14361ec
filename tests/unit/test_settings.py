"""Settings: every knob from TERRITOIRE_*, and one clear line naming the variable when one is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from territoire_data.errors import ConfigurationError
from territoire_data.mqtt_url import parse_mqtt_url
from territoire_data.settings import load_settings, redact_url


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for key in list(os.environ):
        if key.startswith("TERRITOIRE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env file from a checkout


def test_missing_database_url_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"^TERRITOIRE_DATABASE_URL is not set$"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TERRITOIRE_DATABASE_URL", "mysql://localhost/x", "must start with postgresql://"),
        ("TERRITOIRE_DATABASE_URL", "postgresql://localhost", "must name a database"),
        ("TERRITOIRE_MQTT_URL", "http://broker", "must start with mqtt://"),
        ("TERRITOIRE_MQTT_URL", "mqtt://broker:notaport", "malformed port"),
        ("TERRITOIRE_BASE_URL", "data.example.fr", "absolute http"),
        ("TERRITOIRE_DB_POOL_SIZE", "zero", "TERRITOIRE_DB_POOL_SIZE is invalid"),
    ],
)
def test_malformed_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()
    assert variable in excinfo.value.detail
    assert message in excinfo.value.detail


def test_settings_read_every_knob_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", "postgresql://u:secret@db.local:5433/territoire")
    monkeypatch.setenv("TERRITOIRE_MQTT_URL", "mqtts://worker:pw@broker.local")
    monkeypatch.setenv("TERRITOIRE_BASE_URL", "https://data.ville.fr/")
    monkeypatch.setenv("TERRITOIRE_DB_POOL_SIZE", "20")
    monkeypatch.setenv("TERRITOIRE_CORS_ORIGINS", '["https://ville.fr"]')
    settings = load_settings()
    assert settings.base_url == "https://data.ville.fr"
    assert settings.db_pool_size == 20
    assert settings.cors_origins == ["https://ville.fr"]
    assert settings.sqlalchemy_url == "postgresql+asyncpg://u:secret@db.local:5433/territoire"
    assert "secret" not in settings.redacted_database_url()
    broker = parse_mqtt_url(settings.mqtt_url)
    assert (broker.host, broker.port, broker.tls, broker.username) == ("broker.local", 8883, True, "worker")
    assert "pw" not in repr(broker)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://me:pw@h:5432/d") == "postgresql://me:***@h:5432/d"
    assert redact_url("postgresql://me@h/d") == "postgresql://me@h/d"


def test_cli_prints_one_clear_line_not_a_traceback(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRITOIRE_")}
    env["TERRITOIRE_MQTT_URL"] = "ftp://nope"
    env["TERRITOIRE_DATABASE_URL"] = "postgresql://u@127.0.0.1/db"
    result = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=str(tmp_path),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: TERRITOIRE_MQTT_URL is invalid: must start with mqtt:// or mqtts://"
    ]
    assert "Traceback" not in result.stderr


def test_the_catalog_always_has_a_publisher(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """DCAT-AP requires dct:publisher on the catalog: empty, it is the territory's name; .env as quickstart writes."""
    monkeypatch.setenv("TERRITOIRE_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    assert load_settings().catalog_publisher == "Territoire de démonstration"
    monkeypatch.setenv("TERRITOIRE_TERRITORY_NAME", "Nantes Métropole")
    monkeypatch.setenv("TERRITOIRE_CATALOG_PUBLISHER", "  ")
    assert load_settings().catalog_publisher == "Nantes Métropole"
    monkeypatch.delenv("TERRITOIRE_CATALOG_PUBLISHER")
    with open(".env", "w", encoding="utf-8") as env:  # the line scripts/quickstart appends
        env.write('TERRITOIRE_CATALOG_PUBLISHER="Ville d\'Avray"\n')
    assert load_settings().catalog_publisher == "Ville d'Avray"


def test_the_projects_env_file_is_read_wherever_the_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.env` of the checkout (scripts/quickstart writes it) is found from any folder; the current folder's wins."""
    from territoire_data import settings as module

    project = tmp_path / "projet.env"
    project.write_text("TERRITOIRE_DATABASE_URL=postgresql://u@127.0.0.1/depuis_le_projet\n", encoding="utf-8")
    elsewhere = tmp_path / "ailleurs"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("TERRITOIRE_DATABASE_URL", raising=False)
    monkeypatch.setitem(module.Settings.model_config, "env_file", (str(project), ".env"))
    assert module.load_settings().database_url.endswith("/depuis_le_projet")
    (elsewhere / ".env").write_text("TERRITOIRE_DATABASE_URL=postgresql://u@127.0.0.1/ici\n", encoding="utf-8")
    assert module.load_settings().database_url.endswith("/ici")
    assert module.PROJECT_ENV.endswith(".env") and Path(module.PROJECT_ENV).parent.joinpath("pyproject.toml").is_file()
