"""Logging: a request id in every line, plain text or JSON lines."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from territoire_data.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"


def configure_logging(settings: Settings) -> None:
    """Install handlers once per process; uvicorn's loggers go through the same format."""
    formatter: dict[str, Any]
    if settings.log_json:
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FORMAT,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"correlation_id": {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": "-"}},
            "formatters": {"default": formatter},
            "handlers": {
                "console": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "filters": ["correlation_id"],
                }
            },
            "root": {"handlers": ["console"], "level": settings.log_level},
            "loggers": {
                "uvicorn": {"handlers": ["console"], "level": settings.log_level, "propagate": False},
                "uvicorn.error": {"level": settings.log_level},
                "uvicorn.access": {"handlers": ["console"], "level": "WARNING", "propagate": False},
                "sqlalchemy.engine": {"level": "WARNING"},
            },
        }
    )
