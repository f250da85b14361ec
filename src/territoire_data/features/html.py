"""Server-rendered HTML pages of the OGC API (conformance class HTML), with the portal's styles: French by default
(English with `?lang=en`), values written for people (oui/non, decimal commas), a map of the items; no CDN.

The JSON documents keep the standard's (English) link titles; these pages name links by their relation instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

# (French, English) for every text of the pages.
_TEXT: dict[str, tuple[str, str]] = {
    "skip": ("Aller au contenu", "Skip to content"),
    "home": ("Accueil", "Home"),
    "collections": ("Collections", "Collections"),
    "conformance": ("Conformité", "Conformance"),
    "api": ("Documentation de l'API", "API documentation"),
    "portal": ("Portail", "Portal"),
    "other_language": ("English", "Français"),
    "links": ("Liens", "Links"),
    "identifier": ("Identifiant", "Identifier"),
    "title": ("Titre", "Title"),
    "description": ("Description", "Description"),
    "browse": ("Parcourir les objets", "Browse the features"),
    "extent": ("Emprise (ouest, sud, est, nord)", "Extent (west, south, east, north)"),
    "period": ("Période", "Period"),
    "licence": ("Licence", "Licence"),
    "returned": ("{n} objets affichés", "{n} features shown"),
    "returned_one": ("{n} objet affiché", "{n} feature shown"),
    "matched": (" sur {n}", " of {n}"),
    "feature": ("objet", "feature"),
    "geometry": ("Géométrie", "Geometry"),
    "map": ("Carte des objets de cette page", "Map of the features of this page"),
    "map_features": ("{n} objets sur la carte.", "{n} features on the map."),
    "map_features_one": ("{n} objet sur la carte.", "{n} feature on the map."),
    "next": ("Page suivante", "Next page"),
    "prev": ("Page précédente", "Previous page"),
    "queryables": ("propriétés interrogeables", "queryable properties"),
    "name": ("Nom", "Name"),
    "type": ("Type", "Type"),
    "conformance_title": ("Classes de conformité", "Conformance classes"),
    "yes": ("oui", "yes"),
    "no": ("non", "no"),
    "footer": (
        "Données publiées avec territoire-data, logiciel libre. Aucun traceur, aucune ressource externe.",
        "Data published with territoire-data, free software. No tracker, no external resource.",
    ),
}
# Link relations named for people (the JSON's titles stay the standard's).
_RELATIONS: dict[str, tuple[str, str]] = {
    "self": ("cette page", "this page"),
    "alternate": ("ce document dans un autre format", "this document in another format"),
    "service-desc": ("définition de l'API (OpenAPI)", "API definition (OpenAPI)"),
    "service-doc": ("documentation de l'API", "API documentation"),
    "conformance": ("classes de conformité", "conformance classes"),
    "data": ("collections", "collections"),
    "items": ("objets", "features"),
    "collection": ("la collection", "the collection"),
    "next": ("page suivante", "next page"),
    "prev": ("page précédente", "previous page"),
    "license": ("licence", "licence"),
    "http://www.opengis.net/def/rel/ogc/1.0/queryables": ("propriétés interrogeables", "queryable properties"),
    "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector": ("tuiles vectorielles", "vector tiles"),
}


_MAP_ASSETS = Path(__file__).parents[1] / "web" / "static" / "vendor" / "maplibre" / "maplibre-gl-csp.js"


def language(request: Request) -> str:
    """`?lang=en` (or the portal's language cookie) for English; French otherwise."""
    chosen = request.query_params.get("lang") or request.cookies.get("lang")
    return "en" if chosen == "en" else "fr"


def readable(value: Any, lang: str = "fr") -> str:
    """A property value as a person reads it: oui/non, decimal comma in French, JSON for structures."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return _TEXT["yes" if value else "no"][1 if lang == "en" else 0]
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.6f}".rstrip("0").rstrip(".")
        return text.replace(".", ",") if lang == "fr" else text
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def render(
    template: str, request: Request, *, body: dict[str, Any], headers: dict[str, str] | None = None
) -> HTMLResponse:
    """One page from its template, with the JSON body it presents, in the reader's language."""
    lang = language(request)
    index = 1 if lang == "en" else 0

    def t(key: str, **values: Any) -> str:
        count = values.get("n")
        if isinstance(count, int) and f"{key}_one" in _TEXT and (count == 1 or (count == 0 and index == 0)):
            key = f"{key}_one"
        text = _TEXT[key][index]
        return text.format(**values) if values else text

    def relation(rel: str) -> str:
        return _RELATIONS[rel][index] if rel in _RELATIONS else rel

    other = "en" if lang == "fr" else "fr"
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
    page = _ENV.get_template(template).render(
        body=body,
        base=str(request.app.state.settings.base_url).rstrip("/"),
        lang=lang,
        t=t,
        relation=relation,
        readable=lambda value: readable(value, lang),
        other_lang=other,
        other_lang_url=f"{request.url.path}?{urlencode([*kept, ('lang', other)])}",
        map_assets=_MAP_ASSETS.is_file(),
    )
    response = HTMLResponse(page, headers=headers)
    response.headers["Content-Language"] = lang
    return response
