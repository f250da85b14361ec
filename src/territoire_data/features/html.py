"""Server-rendered HTML pages of the OGC API (conformance class HTML): small templates, no CDN, no script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    template: str, request: Request, *, body: dict[str, Any], headers: dict[str, str] | None = None
) -> HTMLResponse:
    """One page from its template, with the JSON body it presents."""
    page = _ENV.get_template(template).render(body=body, base=str(request.app.state.settings.base_url).rstrip("/"))
    return HTMLResponse(page, headers=headers)
