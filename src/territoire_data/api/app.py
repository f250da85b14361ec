"""The app factory: settings in, a FastAPI app out, with every door mounted."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import swagger_ui_bundle
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from territoire_data import __version__
from territoire_data.api import health
from territoire_data.api.compression import CompressionMiddleware
from territoire_data.api.errors import document_problems, install_error_handlers
from territoire_data.api.failover import FailoverRetryMiddleware
from territoire_data.api.head import HeadMiddleware
from territoire_data.api.metrics import HttpMetrics, MetricsMiddleware
from territoire_data.api.security import (
    BodyLimitMiddleware,
    QueryLimitMiddleware,
    RateLimitMiddleware,
    ResponseHeadersMiddleware,
    content_security_policy,
)
from territoire_data.api.sharedlimits import SharedWindowCounter
from territoire_data.auth import routes as auth_routes
from territoire_data.auth.oidc import OidcVerifier
from territoire_data.backoffice.routes import install_backoffice
from territoire_data.catalog import api as catalog_api
from territoire_data.db.engine import create_engine
from territoire_data.db.migrate import head_revision
from territoire_data.db.raw import connect_raw
from territoire_data.db.readpool import close_read_pool, read_pool
from territoire_data.db.replicas import ReplicaRouter
from territoire_data.exports.routes import router as exports_router
from territoire_data.features.routes import router as features_router
from territoire_data.indicators.compute import Refresher
from territoire_data.indicators.portal import install as install_indicator_pages
from territoire_data.indicators.routes import router as indicators_router
from territoire_data.ingest.files import routes as imports
from territoire_data.ngsi_ld.notifier import Notifier
from territoire_data.ngsi_ld.routes import router as ngsi_ld_router
from territoire_data.ops import routes as ops_routes
from territoire_data.querylimits import QueryLimits
from territoire_data.sensorthings.routes import fast_get as sensorthings_fast_get
from territoire_data.sensorthings.routes import router as sensorthings_router
from territoire_data.settings import Settings, basemap_origins
from territoire_data.web.portal import install_portal

DESCRIPTION = """
Open, sovereign urban data for French local governments: datasets, sensors and their observations,
served through open standards (OGC SensorThings API 1.1, OGC API – Features, DCAT-AP) and open formats.
"""


logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the app; the engine is created here unless one is passed (tests, embedding)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything imported and built so far lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise show as latency spikes (p99) under load.
        gc.collect()
        gc.freeze()
        # Requests make no lasting garbage cycles worth a collection every 700 allocations: with a threshold of
        # 10,000 a worker serving thousands of SensorThings reads ran no collection at all, where the default
        # ran one every 30 requests (about 9 µs a request, up to 0.7 ms each for the older generations).
        gc.set_threshold(10_000, 10, 10)
        if owns_engine:  # the read pool's connections opened (and warmed) now, not by the first requests
            try:
                await asyncio.wait_for(read_pool(app.state.engine, settings), 10)
            except (OSError, asyncpg.PostgresError) as exc:  # the database is down: /ready says so, retried later
                logger.warning("read pool not opened at startup: %s", exc)
        # The pool gauges of this worker, kept fresh for a scrape answered by another worker.
        sampler = asyncio.create_task(_sample_pools(app))
        refresher = None
        if settings.indicators_live and owns_engine:
            # Touched indicator periods are recomputed as the database notifies them (see indicators.compute).
            refresher = Refresher(lambda: connect_raw(settings, application_name="indicators"))
            refresher.start()
        notifier_stop = asyncio.Event()
        notifier = (
            asyncio.create_task(Notifier(settings).run(notifier_stop), name="ngsi-ld notifier")
            if settings.ngsild_notifier
            else None
        )
        await app.state.replicas.start()  # the standbys of TERRITOIRE_DATABASE_READ_URL, if any, and their lag
        yield
        await app.state.replicas.close()
        notifier_stop.set()
        if notifier is not None:
            await notifier
        if refresher is not None:
            await refresher.stop()
        sampler.cancel()
        await close_read_pool(app.state.engine)
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
    app.state.replicas = ReplicaRouter(settings)
    app.state.schema_head = head_revision(settings)
    # Per process: the identity provider's keys are fetched on the first token, not at start-up.
    app.state.oidc = OidcVerifier(settings) if settings.oidc_issuer else None
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.state.http_metrics = HttpMetrics(registry)

    install_error_handlers(app)
    # Added innermost first: the failover retry (a request that met a primary change runs again), HEAD (GET
    # without the body), security and cache headers, body limit, URL length and query limits, rate limit, CORS,
    # metrics, then the request id outermost.
    app.add_middleware(
        FailoverRetryMiddleware, wait_seconds=settings.db_failover_wait_seconds, max_body=settings.max_body_bytes
    )
    app.add_middleware(HeadMiddleware)
    app.add_middleware(ResponseHeadersMiddleware, csp=content_security_policy(basemap_origins(settings)))
    app.add_middleware(BodyLimitMiddleware, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes)
    app.add_middleware(
        QueryLimitMiddleware, max_url_length=settings.max_url_length, limits=QueryLimits.from_settings(settings)
    )
    if settings.rate_limit_per_minute:
        app.add_middleware(
            RateLimitMiddleware,
            anonymous_per_minute=settings.rate_limit_per_minute,
            key_per_minute=settings.rate_limit_key_per_minute,
            counter=SharedWindowCounter(settings.shared_limits_file) if settings.shared_limits_file else None,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "OPTIONS", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "If-None-Match"],
            expose_headers=["X-Request-ID", "ETag", "Content-Crs", "Link"],
        )
    # Compression negotiated by Accept-Encoding (zstd, brotli, gzip: see api.compression); streamed exports are
    # compressed chunk by chunk. GeoParquet is compressed already: sending it through again would only cost CPU.
    app.add_middleware(CompressionMiddleware, minimum_size=1024, excluded_paths=[r"/exports/parquet$"])
    app.add_middleware(MetricsMiddleware, metrics=app.state.http_metrics)
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID")
    if settings.trusted_proxies:
        # Outermost: behind a reverse proxy (deploy/nginx/territoire.conf) the rate limits, the audit's "from where"
        # and the logs see the client's address from X-Forwarded-For, believed only when the connection comes from
        # one of TERRITOIRE_TRUSTED_PROXIES (uvicorn's middleware: the rightmost address not a trusted proxy).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)

    # First in the routing table: SensorThings reads, the busiest requests, skip FastAPI's route search and
    # parameter resolution (the documented GET route of `sensorthings_router` answers the same way).
    app.add_route(sensorthings_fast_get.path, sensorthings_fast_get.endpoint, methods=["GET"], include_in_schema=False)
    app.include_router(health.router)
    app.include_router(auth_routes.router)
    app.include_router(catalog_api.router)
    app.include_router(catalog_api.dcat_router)
    app.include_router(sensorthings_router)
    app.include_router(features_router)
    app.include_router(exports_router)
    app.include_router(imports.router)
    app.include_router(ops_routes.router)
    app.include_router(indicators_router)
    app.include_router(ngsi_ld_router)
    _mount_docs(app)
    install_portal(app)
    install_indicator_pages(app)
    install_backoffice(app)
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI keeps the document it generated (app.openapi_schema): the problems are declared in it once.
        if app.openapi_schema is None:
            document_problems(generate_openapi())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _sample_pools(app: FastAPI) -> None:
    while True:
        app.state.http_metrics.sample_pools(app.state.engine)
        await asyncio.sleep(1)


DOCS_PAGE = """<!doctype html>
<html lang="fr">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>territoire-data — API</title>
<link rel="stylesheet" href="{root}/static/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/static/docs/favicon-32x32.png">
</head>
<body>
<main id="swagger-ui" data-openapi-url="{root}/openapi.json"></main>
<script src="{root}/static/docs/swagger-ui-bundle.js"></script>
<script src="{root}/static/api/docs-init.js"></script>
</body>
</html>
"""


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle-v2 package, served by us: no CDN, no inline script (CSP)."""
    app.mount("/static/docs", StaticFiles(directory=Path(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")
    app.mount("/static/api", StaticFiles(directory=Path(__file__).parent / "static"), name="api-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(DOCS_PAGE.format(root=root))
