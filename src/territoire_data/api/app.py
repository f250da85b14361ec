"""The app factory: settings in, a FastAPI app out, with every door mounted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import swagger_ui_bundle
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data import __version__
from territoire_data.api import health
from territoire_data.api.errors import install_error_handlers
from territoire_data.api.metrics import HttpMetrics, MetricsMiddleware, PoolCollector
from territoire_data.catalog import routes as imports
from territoire_data.db.engine import create_engine
from territoire_data.db.migrate import head_revision
from territoire_data.settings import Settings

DESCRIPTION = """
Open, sovereign urban data for French local governments: datasets, sensors and their observations,
served through open standards (OGC SensorThings API 1.1, OGC API – Features, DCAT-AP) and open formats.
"""


def create_app(settings: Settings, *, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the app; the engine is created here unless one is passed (tests, embedding)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_engine:
            await app.state.engine.dispose()

    owns_engine = engine is None
    app = FastAPI(
        title="territoire-data",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        license_info={"name": "EUPL-1.2", "identifier": "EUPL-1.2"},
    )
    app.state.settings = settings
    app.state.engine = engine or create_engine(settings)
    app.state.schema_head = head_revision(settings)
    registry = CollectorRegistry()
    registry.register(PoolCollector(app.state.engine))
    app.state.metrics_registry = registry

    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "OPTIONS", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "If-None-Match"],
            expose_headers=["X-Request-ID", "ETag", "Content-Crs", "Link"],
        )
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")

    app.include_router(health.router)
    app.include_router(imports.router)
    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package, served by us: no CDN."""
    assets = Path(swagger_ui_bundle.swagger_ui_path)
    app.mount("/static/docs", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="territoire-data — API",
            swagger_js_url=f"{root}/static/docs/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/docs/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/docs/favicon-32x32.png",
        )
