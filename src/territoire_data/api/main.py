"""Entry point for uvicorn workers: settings from the environment, then the app factory."""

from __future__ import annotations

from fastapi import FastAPI

from territoire_data.api.app import create_app
from territoire_data.logging_setup import configure_logging
from territoire_data.settings import load_settings


def app_factory() -> FastAPI:
    settings = load_settings()
    configure_logging(settings, request_ids=True)
    return create_app(settings)
