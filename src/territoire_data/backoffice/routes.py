"""The publishers' back-office at /admin: server-rendered French pages, no script, no external asset.

Sign in with an API key (publisher or admin) or through the city's OpenID Connect provider; then: my datasets
with their status and warnings, create one (metadata first), upload a CSV or GeoJSON and read its report with the
rejected lines, edit metadata, publish or unpublish, restrict, grant a key, read the import history and the
rejected MQTT messages. Every action goes through the same catalog, import and publishing functions as the API,
under the signed-in principal (so the access policy and the audit trail are the API's); every form carries the
session's CSRF token and a cross-origin POST is refused.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.datastructures import FormData, UploadFile

from territoire_data.auth.audit import record
from territoire_data.auth.deps import client_address
from territoire_data.auth.keys import grant_to_key, key_id_of_prefix, resolve
from territoire_data.auth.policy import Principal, can_write
from territoire_data.backoffice import oidc_login, sessions
from territoire_data.catalog import publishing, store
from territoire_data.catalog.admin import publishing_defaults, validation_message
from territoire_data.catalog.datasets import DatasetMeta
from territoire_data.catalog.metadata import (
    FREQUENCIES,
    LICENCES,
    THEMES,
    DatasetCreate,
    DatasetPublic,
    DatasetUpdate,
    dataset_public,
)
from territoire_data.catalog.schema import parse_table_schema
from territoire_data.errors import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    TerritoireError,
    ValidationFailedError,
)
from territoire_data.ingest.files import history
from territoire_data.ingest.files.geojson import GeoJsonSource
from territoire_data.ingest.files.loader import MODES, ImportFailedError, ImportOptions, import_with_settings
from territoire_data.ingest.files.routes import format_of, spool_upload
from territoire_data.ingest.files.sources import CsvSource, RowSource
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
router = APIRouter(prefix="/admin", include_in_schema=False)
_env = Environment(
    loader=PackageLoader("territoire_data.backoffice", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
METADATA_FIELDS = (
    "title",
    "description",
    "keywords",
    "themes",
    "licence",
    "publisher",
    "contact_name",
    "contact_email",
    "update_frequency",
    "spatial_coverage",
    "conforms_to",
)


def install_backoffice(app: FastAPI) -> None:
    app.mount("/static/admin", StaticFiles(directory=STATIC_DIR), name="admin-assets")
    app.include_router(router)


# --- plumbing: pages, sessions, forms ----------------------------------------------------------------------------


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(
        licences=LICENCES,
        themes=THEMES,
        frequencies=FREQUENCIES,
        modes=MODES,
        format_time=lambda value: value.astimezone(_PARIS).strftime("%d/%m/%Y à %H:%M") if value else "",
        **context,
    )
    # Nothing of the back-office may be kept by a shared cache or the browser's history cache.
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


_PARIS = ZoneInfo("Europe/Paris")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


async def _raw(conn: AsyncConnection) -> asyncpg.Connection:
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    return raw


def _secure_cookie(response: Response, name: str, value: str, *, max_age: int, samesite: str = "strict") -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/admin",
        secure=True,
        httponly=True,
        samesite=samesite,  # type: ignore[arg-type]
    )


async def _session(request: Request) -> sessions.Session | None:
    async with _engine(request).begin() as conn:
        return await sessions.session_of(await _raw(conn), request.cookies.get(sessions.COOKIE))


def _same_origin(request: Request) -> bool:
    """A POST must come from our own pages: its Origin (or Referer) names this server, or it sends none."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent:
        return True
    origin = urlsplit(sent)
    allowed = {f"{request.url.scheme}://{request.url.netloc}", str(_settings(request).base_url).rstrip("/")}
    return f"{origin.scheme}://{origin.netloc}" in allowed


async def _form(request: Request, session: sessions.Session, *, files: int = 0) -> FormData:
    """The POSTed form after the CSRF checks (same origin, the session's token), else 403."""
    if not _same_origin(request):
        raise ForbiddenError("formulaire envoyé depuis un autre site : refusé")
    form = await request.form(max_files=files, max_fields=40)
    value = form.get("csrf")
    if not sessions.csrf_matches(session, value if isinstance(value, str) else None):
        raise ForbiddenError("jeton de formulaire absent ou périmé : rechargez la page et recommencez")
    return form


def _to_login() -> RedirectResponse:
    return RedirectResponse("/admin/connexion", status_code=303)


def _error_page(session: sessions.Session | None, exc: TerritoireError) -> HTMLResponse:
    return _page("error.html", status_code=exc.status, session=session, error=exc, missing=exc.extra.get("missing"))


Handler = Callable[[Request, sessions.Session], Awaitable[Response]]


async def _signed_in(request: Request, handler: Handler) -> Response:
    """Run a page for a signed-in publisher or admin; errors become a French page with the same status."""
    session = await _session(request)
    if session is None:
        return _to_login()
    try:
        return await handler(request, session)
    except TerritoireError as exc:
        return _error_page(session, exc)


def _may_publish(principal: Principal) -> None:
    if principal.role not in ("admin", "publisher"):
        raise ForbiddenError("le back-office est réservé aux producteurs de données (rôle publisher ou admin)")


async def _writable_dataset(conn: AsyncConnection, principal: Principal, slug: str) -> dict[str, Any]:
    """The dataset row when this principal may write it: 404 when hidden from it, 403 when only readable."""
    row = await store.get_dataset(conn, principal, slug)
    if not can_write(principal, int(row["id"])):
        raise ForbiddenError("vous pouvez lire ce jeu de données mais pas le modifier")
    return row


def _view(row: dict[str, Any], settings: Settings) -> DatasetPublic:
    return dataset_public(row, str(settings.base_url), publisher_view=True)


# --- signing in and out -------------------------------------------------------------------------------------------


@router.get("/connexion")
async def login_page(request: Request) -> Response:
    if await _session(request) is not None:
        return RedirectResponse("/admin", status_code=303)
    settings = _settings(request)
    return _page("login.html", session=None, oidc=bool(settings.oidc_issuer and settings.oidc_client_id))


@router.post("/connexion")
async def login_with_key(request: Request) -> Response:
    settings = _settings(request)
    oidc = bool(settings.oidc_issuer and settings.oidc_client_id)
    if not _same_origin(request):
        return _page("login.html", 403, session=None, oidc=oidc, error="Formulaire envoyé depuis un autre site.")
    form = await request.form(max_files=0, max_fields=5)
    key = str(form.get("key") or "").strip()
    async with _engine(request).begin() as conn:
        principal = await resolve(conn, key) if key and len(key) < 200 else None
        if principal is None or principal.role not in ("admin", "publisher"):
            reason = (
                "Clé inconnue, révoquée ou expirée."
                if principal is None
                else "Cette clé n'est pas celle d'un producteur."
            )
            return _page("login.html", 401, session=None, oidc=oidc, error=reason)
        token = await sessions.open_session(await _raw(conn), principal, timedelta(hours=settings.admin_session_hours))
        await record(conn, principal, "backoffice.login", "web_session", None, remote_addr=client_address(request))
    response = RedirectResponse("/admin", status_code=303)
    _secure_cookie(response, sessions.COOKIE, token, max_age=settings.admin_session_hours * 3600)
    return response


@router.get("/connexion/oidc")
async def login_with_oidc(request: Request) -> Response:
    settings = _settings(request)
    if not (settings.oidc_issuer and settings.oidc_client_id):
        raise NotFoundError("no OpenID Connect sign-in configured")
    found = await oidc_login.endpoints(settings.oidc_issuer, settings.oidc_http_timeout_seconds)
    verifier, challenge = oidc_login.pkce_pair()
    state = secrets.token_urlsafe(24)
    async with _engine(request).begin() as conn:
        token = await sessions.start_login(await _raw(conn), sessions.PendingLogin(state, verifier))
    target = oidc_login.authorization_url(
        found.authorization,
        client_id=settings.oidc_client_id,
        redirect_uri=f"{str(settings.base_url).rstrip('/')}/admin/oidc/retour",
        state=state,
        challenge=challenge,
    )
    response = RedirectResponse(target, status_code=303)
    # Lax, not Strict: it must come back with the provider's redirect (a cross-site navigation); `state` guards it.
    _secure_cookie(
        response, sessions.PENDING_COOKIE, token, max_age=int(sessions.PENDING_LIFETIME.total_seconds()), samesite="lax"
    )
    return response


@router.get("/oidc/retour")
async def oidc_callback(request: Request, code: str = "", state: str = "") -> Response:
    settings = _settings(request)
    verifier = request.app.state.oidc
    if not (settings.oidc_issuer and settings.oidc_client_id) or verifier is None:
        raise NotFoundError("no OpenID Connect sign-in configured")
    async with _engine(request).begin() as conn:
        pending = await sessions.finish_login(await _raw(conn), request.cookies.get(sessions.PENDING_COOKIE))
    if pending is None or not code or not secrets.compare_digest(pending.state.encode(), state.encode()):
        return _page("login.html", 401, session=None, oidc=True, error="Connexion expirée ou altérée : recommencez.")
    try:
        found = await oidc_login.endpoints(settings.oidc_issuer, settings.oidc_http_timeout_seconds)
        access_token = await oidc_login.exchange_code(
            found.token,
            code=code[:2000],
            verifier=pending.verifier,
            client_id=settings.oidc_client_id,
            redirect_uri=f"{str(settings.base_url).rstrip('/')}/admin/oidc/retour",
            wait_s=settings.oidc_http_timeout_seconds,
        )
        claims = await verifier.verify(access_token)
    except TerritoireError as exc:
        return _page("login.html", exc.status, session=None, oidc=True, error=f"Connexion refusée : {exc.detail}")
    identity = verifier.identity(claims)
    if identity.role not in ("admin", "publisher"):
        return _page("login.html", 403, session=None, oidc=True, error="Votre compte n'a pas le rôle de producteur.")
    name = f"oidc:{identity.username} [{identity.subject}]" if identity.username else f"oidc:{identity.subject}"
    principal = Principal(name=name[:300], role=identity.role, subject=identity.subject)
    async with _engine(request).begin() as conn:
        token = await sessions.open_session(
            await _raw(conn),
            principal,
            timedelta(hours=settings.admin_session_hours),
            read_slugs=identity.read_slugs,
            write_slugs=identity.write_slugs,
        )
        await record(conn, principal, "backoffice.login", "web_session", None, remote_addr=client_address(request))
    # A page of our own, not a redirect: the session cookie is SameSite=Strict, and a redirect that ends a
    # navigation started on the provider's site would not carry it.
    response = _page("signed_in.html", session=None)
    _secure_cookie(response, sessions.COOKIE, token, max_age=settings.admin_session_hours * 3600)
    response.delete_cookie(sessions.PENDING_COOKIE, path="/admin")
    return response


@router.post("/deconnexion")
async def logout(request: Request) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        await _form(request, session)
        async with _engine(request).begin() as conn:
            await sessions.close_session(await _raw(conn), request.cookies.get(sessions.COOKIE))
        response = _to_login()
        response.delete_cookie(sessions.COOKIE, path="/admin")
        return response

    return await _signed_in(request, handler)


# --- pages -----------------------------------------------------------------------------------------------------


@router.get("")
async def dashboard(request: Request) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        principal = session.principal
        _may_publish(principal)
        only = None if principal.is_admin else tuple(sorted(principal.writable))
        async with _engine(request).connect() as conn:
            result = await store.search_datasets(conn, principal, store.SearchQuery(only_ids=only, limit=100))
        items = [_view(row, _settings(request)) for row in result.rows]
        return _page("dashboard.html", session=session, items=items, total=result.total)

    return await _signed_in(request, handler)


@router.get("/jeux/nouveau")
async def new_dataset_page(request: Request) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        _may_publish(session.principal)
        settings = _settings(request)
        defaults = {"licence": settings.default_licence, "publisher": settings.catalog_publisher}
        return _page("new.html", session=session, values=defaults, error=None)

    return await _signed_in(request, handler)


def _metadata(form: FormData) -> dict[str, Any]:
    """The metadata fields of a form: text trimmed, empty as absent, lists from repeated fields or commas."""
    values: dict[str, Any] = {}
    for name in METADATA_FIELDS:
        if name == "themes":
            values[name] = [str(v) for v in form.getlist("themes") if str(v)]
        elif name == "keywords":
            raw = str(form.get("keywords") or "")
            values[name] = [w.strip() for w in raw.split(",") if w.strip()]
        else:
            text = str(form.get(name) or "").strip()
            values[name] = text or None
    return values


@router.post("/jeux/nouveau")
async def create_dataset(request: Request) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        principal = session.principal
        _may_publish(principal)
        form = await _form(request, session)
        values = {k: v for k, v in _metadata(form).items() if v not in (None, [])}
        values.update(slug=str(form.get("slug") or "").strip(), kind=str(form.get("kind") or "table"))
        values["access"] = "restricted" if form.get("access") == "restricted" else "public"
        try:
            data = DatasetCreate(**values)
        except ValidationError as exc:
            return _page("new.html", 422, session=session, values=values, error=validation_message(exc))
        async with _engine(request).begin() as conn:
            await store.create_dataset(conn, data, actor=principal.name)
            created = await store.dataset_access(conn, data.slug)
            if created is not None and principal.role == "publisher" and principal.key_id is not None:
                await grant_to_key(conn, principal.key_id, created[0], "write")  # it owns what it creates
        if principal.role == "publisher" and principal.key_id is None:
            # Through OpenID Connect the provider grants datasets: say so rather than lose sight of it.
            return _page("created_oidc.html", session=session, slug=data.slug)
        return RedirectResponse(f"/admin/jeux/{data.slug}", status_code=303)

    return await _signed_in(request, handler)


@router.get("/jeux/{slug}")
async def dataset_page(request: Request, slug: str) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        principal = session.principal
        _may_publish(principal)
        async with _engine(request).connect() as conn:
            row = await _writable_dataset(conn, principal, slug)
            imports = await history.list_imports(conn, int(row["id"]))
            rejections = await history.list_rejections(conn, int(row["id"])) if row["kind"] == "sensors" else []
        return _page(
            "dataset.html",
            session=session,
            item=_view(row, _settings(request)),
            imports=imports,
            rejections=rejections,
            notice=request.query_params.get("ok"),
        )

    return await _signed_in(request, handler)


def _action(path: str, work: Callable[[Request, sessions.Session, str, FormData], Awaitable[str]]) -> None:
    """A POST on a dataset: CSRF checked, the dataset writable by the signed-in principal, then back to its page
    with a notice (`work` returns the notice's key)."""

    async def endpoint(request: Request, slug: str) -> Response:
        async def handler(request: Request, session: sessions.Session) -> Response:
            _may_publish(session.principal)
            form = await _form(request, session)
            notice = await work(request, session, slug, form)
            return RedirectResponse(f"/admin/jeux/{slug}?ok={notice}", status_code=303)

        return await _signed_in(request, handler)

    router.add_api_route(f"/jeux/{{slug}}/{path}", endpoint, methods=["POST"], name=f"admin_{path}")


async def _update_metadata(request: Request, session: sessions.Session, slug: str, form: FormData) -> str:
    values = _metadata(form)
    try:
        data = DatasetUpdate(**values)
    except ValidationError as exc:
        raise ValidationFailedError(validation_message(exc)) from None
    async with _engine(request).begin() as conn:
        await _writable_dataset(conn, session.principal, slug)
        await store.update_dataset(conn, slug, data, actor=session.principal.name)
    return "metadonnees"


async def _publish(request: Request, session: sessions.Session, slug: str, form: FormData) -> str:
    async with _engine(request).begin() as conn:
        await _writable_dataset(conn, session.principal, slug)
        defaults = publishing_defaults(_settings(request))
        await publishing.publish(conn, slug, actor=session.principal.name, defaults=defaults)
    return "publie"


async def _unpublish(request: Request, session: sessions.Session, slug: str, form: FormData) -> str:
    async with _engine(request).begin() as conn:
        await _writable_dataset(conn, session.principal, slug)
        await publishing.unpublish(conn, slug, actor=session.principal.name)
    return "depublie"


async def _set_access(request: Request, session: sessions.Session, slug: str, form: FormData) -> str:
    access = str(form.get("access") or "")
    if access not in ("public", "restricted"):
        raise BadRequestError("accès : public ou restricted")
    async with _engine(request).begin() as conn:
        await _writable_dataset(conn, session.principal, slug)
        await store.update_dataset(conn, slug, DatasetUpdate(access=access), actor=session.principal.name)
    return "acces"


async def _grant(request: Request, session: sessions.Session, slug: str, form: FormData) -> str:
    if not session.principal.is_admin:
        raise ForbiddenError("seul un administrateur accorde des droits sur un jeu de données")
    permission = str(form.get("permission") or "")
    if permission not in ("read", "write"):
        raise BadRequestError("droit : read ou write")
    async with _engine(request).begin() as conn:
        row = await _writable_dataset(conn, session.principal, slug)
        key_id = await key_id_of_prefix(conn, str(form.get("prefix") or "")[:64])
        if key_id is None:
            raise NotFoundError("aucune clé active n'a ce préfixe (voir `territoire-data keys list`)")
        await grant_to_key(conn, key_id, int(row["id"]), permission)
        await record(
            conn,
            session.principal,
            "key.grant",
            "api_key",
            key_id,
            remote_addr=client_address(request),
            details={"dataset": slug, "permission": permission},
        )
    return "droit"


_action("metadonnees", _update_metadata)
_action("publier", _publish)
_action("depublier", _unpublish)
_action("acces", _set_access)
_action("droits", _grant)


@router.post("/jeux/{slug}/imports")
async def upload(request: Request, slug: str) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        principal = session.principal
        _may_publish(principal)
        settings = _settings(request)
        async with _engine(request).connect() as conn:
            await _writable_dataset(conn, principal, slug)  # before the body: a refused upload costs nothing
        if not _same_origin(request):
            raise ForbiddenError("formulaire envoyé depuis un autre site : refusé")
        async with request.form(max_files=2, max_fields=20) as form:
            sent = form.get("csrf")
            if not sessions.csrf_matches(session, sent if isinstance(sent, str) else None):
                raise ForbiddenError("jeton de formulaire absent ou périmé : rechargez la page et recommencez")
            upload = form.get("file")
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise BadRequestError("choisissez un fichier CSV ou GeoJSON")
            mode = str(form.get("mode") or "append")
            if mode not in MODES:
                raise BadRequestError(f"mode : {', '.join(MODES)}")
            table_schema = None
            schema_part = form.get("schema")
            if isinstance(schema_part, UploadFile) and schema_part.filename:
                try:
                    table_schema = parse_table_schema(orjson.loads(await schema_part.read(8 * 1024 * 1024)))
                except orjson.JSONDecodeError as exc:
                    raise BadRequestError(f"le schéma n'est pas du JSON valide : {exc}") from None
            kind = format_of(upload, None)
            path = await spool_upload(upload, f".{kind}", settings.import_max_bytes)
            label = Path(upload.filename).name
            options = ImportOptions(
                mode=mode,  # type: ignore[arg-type]
                schema=table_schema,
                meta=DatasetMeta(),
                crs=str(form.get("crs") or "").strip() or None,
                skip_invalid=form.get("skip_invalid") == "on",
            )

        def source() -> RowSource:
            return GeoJsonSource(path, label=label) if kind == "geojson" else CsvSource(path, label=label)

        try:
            report = await import_with_settings(settings, source, slug, options)
        except ImportFailedError as exc:
            report = exc.report
        finally:
            await anyio.Path(path).unlink(missing_ok=True)
        async with _engine(request).begin() as conn:
            await record(
                conn,
                principal,
                "dataset.import",
                "dataset",
                slug,
                remote_addr=client_address(request),
                details={"import_id": report.get("import_id"), "status": report.get("status"), "source": label},
            )
        if report.get("import_id") is None:  # refused before any record could be kept: show it here
            return _page("report.html", 422, session=session, slug=slug, run=None, report=report)
        return RedirectResponse(f"/admin/jeux/{slug}/imports/{report['import_id']}", status_code=303)

    return await _signed_in(request, handler)


@router.get("/jeux/{slug}/imports/{import_id}")
async def import_report(request: Request, slug: str, import_id: int) -> Response:
    async def handler(request: Request, session: sessions.Session) -> Response:
        _may_publish(session.principal)
        async with _engine(request).connect() as conn:
            await _writable_dataset(conn, session.principal, slug)
            run = await history.get_import(conn, session.principal, slug, import_id)
        if run is None:
            raise NotFoundError(f"aucun import {import_id} pour {slug}")
        return _page("report.html", session=session, slug=slug, run=run, report=orjson.loads(run["report"]))

    return await _signed_in(request, handler)


__all__ = ["install_backoffice", "router"]
