"""HTTP validators for read-only resources: ETag / Last-Modified from the data's own modification time, 304s."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from starlette.requests import Request
from starlette.responses import Response

from territoire_data import __version__

CACHE_CONTROL = "public, max-age=60, must-revalidate"
# What a response may differ by: the format, and who asks (a key may see restricted datasets). Requests that
# carry credentials get `private` instead of `public` (api.security.ResponseHeadersMiddleware, for every door).
VARY = "Accept, Accept-Encoding, Authorization, X-API-Key"


def etag_for(*parts: object) -> str:
    """A weak validator over what decides the response (data version, query, format, code version)."""
    digest = hashlib.blake2b(repr((__version__, *parts)).encode(), digest_size=12).hexdigest()
    return f'W/"{digest}"'


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def validators(etag: str | None, modified: datetime | None) -> dict[str, str]:
    headers = {"Cache-Control": CACHE_CONTROL, "Vary": VARY}
    if etag:
        headers["ETag"] = etag
    if modified is not None:
        headers["Last-Modified"] = http_date(modified)
    return headers


def not_modified(request: Request, etag: str | None, modified: datetime | None) -> Response | None:
    """A 304 when the client's copy is current (If-None-Match first, then If-Modified-Since), else None."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        if etag is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers=validators(etag, modified))
        return None
    ims = request.headers.get("if-modified-since")
    if ims and modified is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return None
        if since.tzinfo is not None and modified.replace(microsecond=0) <= since:
            return Response(status_code=304, headers=validators(etag, modified))
    return None
