"""The citizens' portal: server-rendered pages (search, a page per dataset) and the two small JSON feeds its
map and chart read. Anonymous only: restricted datasets answer 404 here like everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Cookie, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from territoire_data.auth.policy import ANONYMOUS
from territoire_data.catalog import store
from territoire_data.catalog.metadata import FREQUENCIES, LICENCES, THEMES, DatasetPublic, dataset_public
from territoire_data.deps import ConnDep, SettingsDep
from territoire_data.errors import NotFoundError
from territoire_data.web import data
from territoire_data.web.i18n import choose_language, translator

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
VENDOR_FILES = ("leaflet/leaflet.js", "leaflet/leaflet.css", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css")
PAGE_SIZE = 20
FACETS = ("theme", "licence", "publisher", "format")

router = APIRouter(include_in_schema=False)

_env = Environment(
    loader=PackageLoader("territoire_data.web", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def vendor_assets_built() -> bool:
    """Whether scripts/build-assets has installed the map and chart libraries."""
    return all((STATIC_DIR / "vendor" / f).is_file() for f in VENDOR_FILES)


def install_portal(app: FastAPI) -> None:
    """Mount the portal's routes and its static files (our CSS/JS and the vendored libraries)."""
    app.mount("/static/portal", StaticFiles(directory=STATIC_DIR), name="portal-assets")
    app.include_router(router)


LangQuery = Annotated[str | None, Query(alias="lang", pattern="^(fr|en)$")]
LangCookie = Annotated[str | None, Cookie(alias="lang")]


def _render(
    request: Request, template: str, lang: str, query_lang: str | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    t = translator(lang)
    other = "en" if lang == "fr" else "fr"
    html = _env.get_template(template).render(
        t=t,
        lang=lang,
        other_lang=other,
        other_lang_url=f"{request.url.path}?{urlencode([*_kept_params(request), ('lang', other)])}",
        path=request.url.path,
        format_date=lambda value: value.strftime("%d/%m/%Y") if lang == "fr" else value.strftime("%Y-%m-%d"),
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    if query_lang:
        response.set_cookie("lang", lang, max_age=365 * 24 * 3600, samesite="lax", httponly=True)
    response.headers["Content-Language"] = lang
    return response


def _kept_params(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]


@router.get("/", response_class=HTMLResponse)
async def home(
    request: Request,
    conn: ConnDep,
    settings: SettingsDep,
    query_lang: LangQuery = None,
    cookie_lang: LangCookie = None,
    q: Annotated[str | None, Query(max_length=500)] = None,
    theme: Annotated[list[str], Query()] = [],  # noqa: B006
    licence: Annotated[list[str], Query()] = [],  # noqa: B006
    publisher: Annotated[list[str], Query()] = [],  # noqa: B006
    format: Annotated[list[str], Query()] = [],  # noqa: B006
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> HTMLResponse:
    """Search with facets; every control is a plain form, so it works without JavaScript."""
    lang = choose_language(query_lang, cookie_lang)
    selected = {"theme": theme, "licence": licence, "publisher": publisher, "format": format}
    query = store.SearchQuery(
        q=q,
        themes=theme,
        licences=licence,
        publishers=publisher,
        formats=[f for f in format if f in store.FORMAT_CONDITIONS],
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )
    result = await store.search_datasets(conn, ANONYMOUS, query)
    datasets = [dataset_public(row, settings.base_url) for row in result.rows]
    facets = {
        name: [
            {"value": v, "label": store.facet_label(name, v, lang), "count": n, "checked": v in selected[name]}
            for v, n in values
        ]
        for name, values in result.facets.items()
    }
    # Keep chosen values visible even when the current results no longer contain them.
    for name in FACETS:
        present = {f["value"] for f in facets[name]}
        for value in selected[name]:
            if value not in present:
                label = store.facet_label(name, value, lang)
                facets[name].append({"value": value, "label": label, "count": 0, "checked": True})
    pages = max(1, -(-result.total // PAGE_SIZE))
    base_params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "lang")]

    def page_link(number: int) -> str:
        return "/?" + urlencode([*base_params, ("page", str(number))])

    return _render(
        request,
        "home.html",
        lang,
        query_lang,
        title=settings.catalog_title,
        publisher=settings.catalog_publisher,
        q=q or "",
        datasets=datasets,
        total=result.total,
        facets=facets,
        facet_order=FACETS,
        themes=THEMES,
        page=page,
        pages=pages,
        prev_url=page_link(page - 1) if page > 1 else None,
        next_url=page_link(page + 1) if page < pages else None,
        filtered=bool(q or any(selected.values())),
    )


async def _visible(conn: ConnDep, slug: str) -> dict[str, Any] | None:
    try:
        return await store.get_dataset(conn, ANONYMOUS, slug)
    except NotFoundError:
        return None


def _not_found(request: Request, lang: str, query_lang: str | None, title: str) -> HTMLResponse:
    return _render(request, "not_found.html", lang, query_lang, status_code=404, title=title)


@router.get("/datasets/{slug}", response_class=HTMLResponse)
async def dataset_page(
    slug: str,
    request: Request,
    conn: ConnDep,
    settings: SettingsDep,
    query_lang: LangQuery = None,
    cookie_lang: LangCookie = None,
) -> HTMLResponse:
    """Everything about one dataset: metadata, licence in plain words, downloads, previews, API examples."""
    lang = choose_language(query_lang, cookie_lang)
    row = await _visible(conn, slug)
    if row is None:
        return _not_found(request, lang, query_lang, settings.catalog_title)
    dataset: DatasetPublic = dataset_public(row, settings.base_url)
    columns, rows = await data.table_preview(conn, row)
    series = await data.recent_series(conn, row) if row["kind"] == "sensors" else []
    licence = LICENCES.get(dataset.licence.id) if dataset.licence else None
    frequency = FREQUENCIES.get(dataset.update_frequency or "")
    has_map = bool(dataset.bbox) or row["kind"] == "sensors"
    return _render(
        request,
        "dataset.html",
        lang,
        query_lang,
        title=settings.catalog_title,
        ds=dataset,
        licence=licence,
        licence_plain=(licence.plain_en if lang == "en" else licence.plain_fr) if licence else None,
        theme_labels=[THEMES[th.code][1 if lang == "en" else 0] for th in dataset.themes],
        frequency_label=(frequency[1] if lang == "en" else frequency[0]) if frequency else None,
        columns=columns,
        rows=rows,
        series=series,
        refresh_seconds=settings.portal_refresh_seconds,
        has_map=has_map,
        assets_built=vendor_assets_built(),
        base_url=settings.base_url,
        downloads=[d for d in dataset.distributions if d.kind == "download"],
        apis=[d for d in dataset.distributions if d.kind == "api"],
    )


@router.get("/datasets/{slug}/preview.geojson")
async def dataset_geojson(slug: str, conn: ConnDep) -> Response:
    """The map's data: up to 5,000 geometries of the dataset, as GeoJSON."""
    row = await _visible(conn, slug)
    if row is None:
        raise NotFoundError(f"no dataset {slug!r}")
    return Response(await data.map_geojson(conn, row), media_type="application/geo+json")


@router.get("/datasets/{slug}/recent.json")
async def dataset_recent(slug: str, conn: ConnDep) -> Response:
    """The chart's data: the last 24 hours of the dataset's datastreams."""
    import orjson

    row = await _visible(conn, slug)
    if row is None or row["kind"] != "sensors":
        raise NotFoundError(f"no sensor dataset {slug!r}")
    return Response(orjson.dumps(await data.recent_series(conn, row)), media_type="application/json")
