"""The citizens' portal: server-rendered pages (search, a page per dataset) and the two small JSON feeds its
map and chart read. Anonymous only: restricted datasets answer 404 here like everywhere.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Cookie, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from territoire_data.auth.policy import ANONYMOUS
from territoire_data.catalog import store
from territoire_data.catalog.metadata import FREQUENCIES, LICENCES, THEMES, DatasetPublic, dataset_public
from territoire_data.deps import ConnDep, SettingsDep
from territoire_data.errors import NotFoundError
from territoire_data.settings import basemap_style
from territoire_data.web import data, units
from territoire_data.web.i18n import choose_language, translator

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
VENDOR_FILES = (
    "maplibre/maplibre-gl-csp.js",
    "maplibre/maplibre-gl-csp-worker.js",
    "maplibre/maplibre-gl.css",
    "uplot/uPlot.iife.min.js",
    "uplot/uPlot.min.css",
)
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
    periode: Annotated[str | None, Query(max_length=8)] = None,
) -> HTMLResponse:
    """Everything about one dataset: metadata, licence in plain words, downloads, previews, API examples; for a
    sensor dataset, what each sensor measures where, its latest value, charts over a chosen period."""
    lang = choose_language(query_lang, cookie_lang)
    row = await _visible(conn, slug)
    if row is None:
        return _not_found(request, lang, query_lang, settings.catalog_title)
    dataset: DatasetPublic = dataset_public(row, settings.base_url)
    columns, rows = await data.table_preview(conn, row)
    period = periode if periode in data.PERIODS else "24h"
    streams = await data.sensor_streams(conn, row) if row["kind"] == "sensors" else []
    series = await data.period_series(conn, row, period) if row["kind"] == "sensors" else []
    licence = LICENCES.get(dataset.licence.id) if dataset.licence else None
    frequency = FREQUENCIES.get(dataset.update_frequency or "")
    has_map = bool(dataset.bbox) or row["kind"] == "sensors"
    basemap, attribution = basemap_style(settings)
    # Tables are drawn from our own vector tiles (any size, no feature cap); sensors from their few locations.
    tiles = (
        f"/ogcapi/collections/{slug}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}"
        if row["kind"] == "table" and dataset.geometry_type
        else None
    )
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
        places=_places(streams, lang),
        streams=streams,
        period=period,
        periods=[(key, value[1] if lang == "en" else value[0]) for key, value in data.PERIODS.items()],
        refresh_seconds=settings.portal_refresh_seconds,
        has_map=has_map,
        map_tiles=tiles,
        map_bbox=orjson.dumps(dataset.bbox).decode() if dataset.bbox else "",
        basemap=basemap or "",
        basemap_attribution=attribution or "",
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


def _places(streams: list[dict[str, Any]], lang: str) -> list[dict[str, Any]]:
    """The dataset's Datastreams grouped by place, each as a line people read: sensor, quantity with its unit,
    latest value written the French way and how long ago it was measured."""
    now = datetime.now(UTC)
    places: dict[str, list[dict[str, Any]]] = {}
    for s in streams:
        symbol, words = units.unit_of(s["unit"])
        places.setdefault(s["place"], []).append(
            {
                "id": s["id"],
                "thing": s["thing"],
                "label": units.label(s["quantity"], symbol),
                "unit_words": words,
                "value": units.value_fr(s["latest_value"], symbol),
                "time": s["latest_time"],
                "age": units.age_fr(s["latest_time"], now),
            }
        )
    return [{"name": name, "rows": rows} for name, rows in places.items()]


def _chart_series(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in series:
        symbol, words = units.unit_of(s["unit"])
        out.append(
            {
                "id": s["id"],
                "name": s["name"],
                "label": units.label(s["quantity"], symbol),
                "thing": s["thing"],
                "unit": symbol,
                "unit_words": words,
                "times": s["times"],
                "values": s["values"],
            }
        )
    return out


@router.get("/datasets/{slug}/recent.json")
async def dataset_recent(
    slug: str, conn: ConnDep, periode: Annotated[str, Query(pattern="^(24h|7j|30j|1an)$")] = "24h"
) -> Response:
    """The charts' data: mean values of the dataset's Datastreams over the period, from the rollups."""
    row = await _visible(conn, slug)
    if row is None or row["kind"] != "sensors":
        raise NotFoundError(f"no sensor dataset {slug!r}")
    series = _chart_series(await data.period_series(conn, row, periode))
    return Response(orjson.dumps(series), media_type="application/json")


@router.get("/datasets/{slug}/telechargement")
async def sensor_download(
    slug: str,
    conn: ConnDep,
    periode: Annotated[str, Query(pattern="^(24h|7j|30j|1an|tout)$")] = "30j",
    format: Annotated[str, Query(pattern="^(csv|parquet)$")] = "csv",
    serie: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The download form of a sensor page (works without JavaScript): to the streamed export of the whole dataset,
    or of one of its Datastreams, from the start of the chosen period."""
    row = await _visible(conn, slug)
    if row is None or row["kind"] != "sensors":
        raise NotFoundError(f"no sensor dataset {slug!r}")
    params = {}
    if periode != "tout":
        start = datetime.now(UTC) - data.PERIODS[periode][2]
        params["start"] = start.replace(microsecond=0).isoformat()
    base = f"/api/v1/datastreams/{serie}" if serie is not None else f"/api/v1/datasets/{slug}"
    query = f"?{urlencode(params)}" if params else ""
    return RedirectResponse(f"{base}/exports/{format}{query}", status_code=303)
