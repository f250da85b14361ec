"""The portal's "Indicateurs" pages: cards, a page per indicator (choropleth, series, table, methodology, sources,
downloads), a page per territorial unit, and an embeddable view. Server-rendered, anonymous, no script."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from territoire_data.auth.policy import ANONYMOUS
from territoire_data.catalog.metadata import LICENCES
from territoire_data.deps import EngineDep, SettingsDep
from territoire_data.errors import NotFoundError
from territoire_data.indicators import divisions, read, store, svg
from territoire_data.indicators.routes import _read

STATIC_DIR = Path(__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)
# The embeddable view may be framed by any site; it runs no script and loads only our stylesheet.
EMBED_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors *"
)


def install(app: FastAPI) -> None:
    """Mount the pages and their stylesheet."""
    app.mount("/static/indicators", StaticFiles(directory=STATIC_DIR), name="indicators-assets")
    app.include_router(router)


_env = Environment(
    loader=PackageLoader("territoire_data.indicators", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["num"] = svg.fmt

STATUS_TEXT = {
    "atteint": ("Objectif atteint", "met", "✔"),
    "non atteint": ("Objectif non atteint", "missed", "✖"),
    "sans donnée": ("Pas de donnée pour juger", "nodata", "?"),
}
PERIOD_TEXT = {"day": "jour", "week": "semaine", "month": "mois", "quarter": "trimestre", "year": "année"}
FUNCTION_TEXT = {
    "count": "nombre d'enregistrements",
    "sum": "somme",
    "mean": "moyenne",
    "min": "minimum",
    "max": "maximum",
    "percentile": "centile",
    "days_above": "nombre de jours dont la moyenne journalière dépasse un seuil",
    "share": "part des enregistrements (en %) remplissant une condition",
}


def _render(settings: Any, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(template).render(
        site_title=settings.catalog_title, status_text=STATUS_TEXT, period_text=PERIOD_TEXT, **context
    )
    return HTMLResponse(html, status_code=status_code, headers={"Content-Language": "fr"})


async def _shapes(
    conn: asyncpg.Connection, division: divisions.Division, values: dict[str, float | None]
) -> tuple[list[svg.Shape], tuple[float, float, float, float]] | None:
    """The division's polygons as SVG paths (longitudes scaled by cos(latitude): shapes keep their proportions)."""
    extent = await conn.fetchrow(
        f"SELECT ST_XMin(e) AS x0, ST_YMin(e) AS y0, ST_XMax(e) AS x1, ST_YMax(e) AS y1 "
        f"FROM (SELECT ST_Extent(geom) AS e FROM {division.table}) s"
    )
    if extent is None or extent["x0"] is None:
        return None
    k = math.cos(math.radians((extent["y0"] + extent["y1"]) / 2))
    tolerance = (extent["y1"] - extent["y0"]) / 1500
    rows = await conn.fetch(
        f"SELECT {division.code_sql} AS code, {division.name_sql} AS name, "
        f"ST_AsSVG(ST_Scale(ST_SimplifyPreserveTopology(u.geom, $1), $2, 1), 0, 6) AS path "
        f"FROM {division.table} u WHERE u.geom IS NOT NULL ORDER BY 2",
        tolerance,
        k,
    )
    shapes = [svg.Shape(r["code"], r["name"], r["path"], values.get(r["code"])) for r in rows]
    margin = (extent["y1"] - extent["y0"]) * 0.02
    box = (
        extent["x0"] * k - margin,
        -extent["y1"] - margin,
        (extent["x1"] - extent["x0"]) * k + 2 * margin,
        extent["y1"] - extent["y0"] + 2 * margin,
    )
    return shapes, box


async def _card(conn: asyncpg.Connection, row: store.IndicatorRow) -> dict[str, Any]:
    latest = await read.latest(conn, row)
    values = [v for v in latest["values"] if v["value"] is not None]
    d = row.definition
    card: dict[str, Any] = {"row": row, "d": d, "latest": latest, "with_values": values}
    if d.breakdown is None and latest["values"]:
        only = latest["values"][0]
        card["value"] = only["value"]
        card["change"] = only["change_percent"]
        card["status"] = only["status"]
    elif values:
        card["low"] = min(v["value"] for v in values)
        card["high"] = max(v["value"] for v in values)
        summary = latest["summary"] or {}
        card["meeting"] = summary.get("units_meeting_target")
        card["judged"] = sum(1 for v in latest["values"] if v["status"] in ("atteint", "non atteint"))
    return card


@router.get("/indicateurs", response_class=HTMLResponse)
async def indicators_page(engine: EngineDep, settings: SettingsDep) -> HTMLResponse:
    async with _read(engine) as conn:
        rows = await store.list_visible(conn, ANONYMOUS)
        cards = [await _card(conn, row) for row in rows]
    return _render(settings, "indicators.html", cards=cards, path="/indicateurs")


async def _detail(conn: asyncpg.Connection, slug: str, unit: str | None, *, label_prefix: str) -> dict[str, Any]:
    row = await store.get(conn, ANONYMOUS, slug)
    d = row.definition
    card = await _card(conn, row)
    latest = card["latest"]
    context: dict[str, Any] = {"row": row, "d": d, "card": card, "latest": latest}
    division = None
    if d.breakdown is not None:
        division_id = await conn.fetchval("SELECT division_dataset_id FROM indicator WHERE id = $1", row.id)
        division = await divisions.by_dataset_id(conn, division_id) if division_id else None
    context["division"] = division
    if division is not None:
        values = {v["unit"]: v["value"] for v in latest["values"]}
        drawn = await _shapes(conn, division, values)
        if drawn is not None:
            shapes, box = drawn
            legend = svg.legend_for(
                [v for v in values.values() if v is not None],
                d.thresholds,
                lower_is_better=bool(d.target and d.target.direction == "at_most"),
            )
            title = f"Carte : {d.title}, {latest['period'] or ''}, par {division.level}"
            context["map"] = svg.choropleth(
                shapes, box, legend, title=title, unit=d.unit, decimals=d.decimals, label_id=f"{label_prefix}map"
            )
            context["legend"] = svg.legend_labels(legend, d.decimals)
    # The series: the whole territory, or one unit (the first with values unless chosen).
    codes = [v["unit"] for v in latest["values"] if v["value"] is not None]
    chosen = unit if unit in {v["unit"] for v in latest["values"]} else (codes[0] if codes else None)
    context["unit"] = chosen
    context["units"] = latest["values"]
    if chosen is not None:
        items, _ = await read.series(conn, row, units=[chosen], start=None, end=None, limit=5000, offset=0)
        items = items[-120:]  # the chart shows the last 120 periods; the downloads have them all
        context["series"] = items
        name = next((v["name"] for v in latest["values"] if v["unit"] == chosen), chosen)
        context["unit_name"] = name
        context["chart"] = svg.series_chart(
            [(i["period_start"], i["value"]) for i in items],
            [i["period"] for i in items],
            target=d.target.value if d.target else None,
            target_label=f"Cible : {svg.fmt(d.target.value, d.decimals)}" if d.target else "",
            title=f"Évolution : {d.title} — {name}",
            unit=d.unit,
            decimals=d.decimals,
            label_id=f"{label_prefix}chart",
        )
    licence = LICENCES.get(d.licence)
    context["licence"] = licence
    context["function_text"] = FUNCTION_TEXT[d.aggregation.function]
    sources = await conn.fetch(
        "SELECT slug, title FROM dataset WHERE slug = ANY($1::text[]) AND access = 'public' ORDER BY title",
        list((await conn.fetchval("SELECT extra->'derived_from' FROM dataset WHERE id = $1", row.dataset_id)) or [])
        if row.dataset_id
        else [],
    )
    context["sources"] = sources
    return context


@router.get("/indicateurs/{slug}", response_class=HTMLResponse)
async def indicator_page(
    slug: str,
    engine: EngineDep,
    settings: SettingsDep,
    unite: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    try:
        async with _read(engine) as conn:
            context = await _detail(conn, slug, unite, label_prefix="ind-")
    except NotFoundError:
        return _render(settings, "not_found.html", status_code=404, path="/indicateurs")
    return _render(settings, "indicator.html", path=f"/indicateurs/{slug}", **context)


@router.get("/indicateurs/unites/{division_slug}/{code}", response_class=HTMLResponse)
async def unit_page(division_slug: str, code: str, engine: EngineDep, settings: SettingsDep) -> HTMLResponse:
    async with _read(engine) as conn:
        try:
            division = await divisions.get(conn, ANONYMOUS, division_slug)
        except NotFoundError:
            return _render(settings, "not_found.html", status_code=404, path="/indicateurs")
        units = {u["code"]: u for u in await divisions.units(conn, division)}
        if code not in units:
            return _render(settings, "not_found.html", status_code=404, path="/indicateurs")
        entries = []
        for row in await store.list_visible(conn, ANONYMOUS):
            if row.definition.breakdown is None or row.definition.breakdown.division != division_slug:
                continue
            latest = await read.latest(conn, row)
            mine = next((v for v in latest["values"] if v["unit"] == code), None)
            entries.append({"row": row, "d": row.definition, "latest": latest, "mine": mine})
    return _render(settings, "unit.html", division=division, unit=units[code], entries=entries, path="/indicateurs")


@router.get("/embed/indicators/{slug}", response_class=HTMLResponse)
async def embed(slug: str, engine: EngineDep, settings: SettingsDep, request: Request) -> HTMLResponse:
    """A self-contained view a city can put in an <iframe> on its own website (no external asset)."""
    try:
        async with _read(engine) as conn:
            context = await _detail(conn, slug, request.query_params.get("unite"), label_prefix="emb-")
    except NotFoundError:
        return _render(settings, "not_found.html", status_code=404, path="/indicateurs")
    response = _render(settings, "embed.html", base_url=settings.base_url, **context)
    # Framing allowed from any site for this page only (the rest of the platform refuses to be framed).
    response.headers["Content-Security-Policy"] = EMBED_POLICY
    response.headers["X-Frame-Options"] = "ALLOWALL"  # not a standard value: old browsers then do not block
    return response
