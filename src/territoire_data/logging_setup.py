"""Logging: one format per process, plain text or JSON lines (TERRITOIRE_LOG_JSON), the request id where there is
one (the API), and a report of TERRITOIRE_* variables that no setting reads."""

from __future__ import annotations

import difflib
import logging
import logging.config
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic_settings import BaseSettings, SettingsConfigDict

from territoire_data.settings import ENV_PREFIX, Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_REQUESTS = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_FORMAT_REQUESTS = "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"

# TERRITOIRE_* variables that are no setting but that the platform's own scripts read or set, so never reported.
PLATFORM_VARIABLES = frozenset(
    {
        "TERRITOIRE_PORT",  # scripts/quickstart: the API's port
        "TERRITOIRE_DB_PASSWORD",  # compose.yaml: the database password
        "TERRITOIRE_TEST_ADMIN_URL",  # tests: the PostgreSQL server of the test databases
        "TERRITOIRE_TEST_MQTT_URL",  # tests: a broker instead of a private Mosquitto
        "TERRITOIRE_FUZZ_EXAMPLES",  # tests/e2e/test_schemathesis.py
        "TERRITOIRE_BENCH_ADMIN_URL",  # bench/
        "TERRITOIRE_BENCH_DB",
        "TERRITOIRE_BENCH_DB_SUFFIX",
    }
)

logger = logging.getLogger(__name__)


class LogOptions(Protocol):
    @property
    def log_level(self) -> str: ...

    @property
    def log_json(self) -> bool: ...


class LogSettings(BaseSettings):
    """Only the logging settings: for commands that need no database (simulate)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False


def configure_logging(settings: LogOptions, *, request_ids: bool = False) -> None:
    """Install handlers once per process; uvicorn's, Alembic's and paho's loggers go through the same format.

    `request_ids`: the API's processes put the request id in every line; elsewhere there is none to show.
    """
    formatter: dict[str, Any]
    if settings.log_json:
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FORMAT_REQUESTS if request_ids else JSON_FORMAT,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": TEXT_FORMAT_REQUESTS if request_ids else TEXT_FORMAT}
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "formatter": "default"}
    filters: dict[str, Any] = {}
    if request_ids:
        filters = {"correlation_id": {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": "-"}}
        handler["filters"] = ["correlation_id"]
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": filters,
            "formatters": {"default": formatter},
            "handlers": {"console": handler},
            "root": {"handlers": ["console"], "level": settings.log_level},
            "loggers": {
                "uvicorn": {"handlers": ["console"], "level": settings.log_level, "propagate": False},
                "uvicorn.error": {"level": settings.log_level},
                "uvicorn.access": {"handlers": ["console"], "level": "WARNING", "propagate": False},
                "sqlalchemy.engine": {"level": "WARNING"},
                "alembic": {"level": settings.log_level},
            },
        }
    )


def configure_logging_from_env() -> None:
    """Logging for a command without settings of its own (TERRITOIRE_LOG_LEVEL, TERRITOIRE_LOG_JSON, .env)."""
    configure_logging(LogSettings())


def unknown_variables(environ: Mapping[str, str], env_file: str | Path | None = ".env") -> list[str]:
    """TERRITOIRE_* names in the environment (or the .env file) that no setting reads: misspelt, or newer."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | PLATFORM_VARIABLES
    names = {name for name in environ if name.upper().startswith(ENV_PREFIX)}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        names |= {name for name in dotenv_values(env_file) if name.upper().startswith(ENV_PREFIX)}
    return sorted(name for name in names if name.upper() not in known)


def report_unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one warning per unknown TERRITOIRE_* variable, with the closest setting's name."""
    unknown = unknown_variables(os.environ if environ is None else environ)
    known = sorted(ENV_PREFIX + name.upper() for name in Settings.model_fields)
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else " (a setting of another release?)"
        logger.warning("%s is not a setting of this release and is ignored%s", name, hint)
    return unknown
