"""One NGSI-LD request's framing: media types in and out, the @context (Link header or body), tenants, options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from territoire_data.ngsi_ld.contexts import CORE_URL, ActiveContext
from territoire_data.ngsi_ld.errors import (
    BadRequestData,
    InvalidRequest,
    NonexistentTenant,
    NotAcceptable,
    UnsupportedMediaType,
)

LD_JSON = "application/ld+json"
JSON = "application/json"
GEO_JSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
MAX_BODY = 10 * 1024 * 1024
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")


def link_context(header: str | None) -> str | None:
    """The context URL of a `Link: <url>; rel="http://www.w3.org/ns/json-ld#context"` header."""
    if not header:
        return None
    found = []
    for match in _LINK.finditer(header):
        params = match.group(2)
        if re.search(r'rel\s*=\s*"?' + re.escape(CONTEXT_REL) + '"?', params):
            found.append(match.group(1).strip())
    if len(found) > 1:
        raise BadRequestData("more than one JSON-LD context Link header")
    return found[0] if found else None


def check_tenant(headers: Any) -> None:
    tenant = headers.get("ngsild-tenant")
    if tenant:
        raise NonexistentTenant(
            f"tenant {tenant[:60]!r} does not exist: this broker serves one tenant only (no NGSILD-Tenant header)"
        )


def body_context(headers: Any, body: bytes, *, allow_merge_patch: bool = False) -> tuple[Any, Any]:
    """(payload, @context) of a request body after the media type rules of clause 6.3.5."""
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    allowed = {JSON, LD_JSON} | ({MERGE_PATCH} if allow_merge_patch else set())
    if content_type not in allowed:
        raise UnsupportedMediaType(f"Content-Type must be one of {', '.join(sorted(allowed))}")
    if not body:
        raise InvalidRequest("the request needs a JSON body")
    if len(body) > MAX_BODY:
        raise BadRequestData("request body too large")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    link = link_context(headers.get("link"))
    if isinstance(payload, list):  # a batch: each entity's @context is checked with it (item_context)
        if content_type == LD_JSON and link is not None:
            raise BadRequestData("with application/ld+json the @context goes in the body, not in a Link header")
        return payload, link
    if content_type == LD_JSON:
        if link is not None:
            raise BadRequestData("with application/ld+json the @context goes in the body, not in a Link header")
        items = payload if isinstance(payload, list) else [payload]
        contexts = [item.get("@context") for item in items if isinstance(item, dict)]
        if not contexts or any(c is None for c in contexts):
            raise BadRequestData("an application/ld+json body needs its @context")
        return payload, contexts[0]
    items = payload if isinstance(payload, list) else [payload]
    if any(isinstance(item, dict) and "@context" in item for item in items):
        raise BadRequestData("with application/json the @context goes in a Link header, not in the body")
    return payload, link


def accept(headers: Any, *, geo: bool = True) -> str:
    """The response media type: ld+json, json (default) or geo+json; 406 for anything else."""
    header = headers.get("accept") or "*/*"
    offers: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        quality = 1.0
        for param in pieces[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        offers.append((-quality, index, media))
    for _, _, media in sorted(offers):
        if media in (LD_JSON, JSON) or (geo and media == GEO_JSON):
            return media
        if media in ("*/*", "application/*"):
            return JSON
    raise NotAcceptable(
        "the response can be application/json, application/ld+json" + (", application/geo+json" if geo else "")
    )


def link_header(ctx: ActiveContext) -> str:
    url = ctx.link_url or CORE_URL
    return f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'


@dataclass(frozen=True)
class Options:
    form: str = "normalized"
    sys_attrs: bool = False
    no_overwrite: bool = False
    values: frozenset[str] = frozenset()


def parse_options(text: str | None, format_: str | None = None) -> Options:
    values = frozenset(v.strip() for v in (text or "").split(",") if v.strip())
    known = {
        "keyValues",
        "simplified",
        "concise",
        "normalized",
        "sysAttrs",
        "noOverwrite",
        "temporalValues",
        "aggregatedValues",
        "audit",
        "replace",
        "update",
    }
    unknown = values - known
    if unknown:
        raise BadRequestData(f"unknown options: {', '.join(sorted(unknown))}")
    forms = values & {"keyValues", "simplified", "concise", "normalized"}
    if format_:
        forms = forms | {format_}
    if len({"keyValues" if f == "simplified" else f for f in forms}) > 1:
        raise BadRequestData("options ask for more than one representation")
    form = next(iter(forms), "normalized")
    return Options(
        form="keyValues" if form == "simplified" else form,
        sys_attrs="sysAttrs" in values,
        no_overwrite="noOverwrite" in values,
        values=values,
    )


_NAME = re.compile(r"^[A-Za-z_@][A-Za-z0-9_\-:.@/#]*$")


def names(text: str | None, what: str = "attrs") -> list[str] | None:
    """A list of names (`a,b` or `a|b`); an empty member, a brace or a stray character is a 400."""
    if text is None:
        return None
    found = [n.strip() for n in re.split(r"[,|]", text)]
    if not found or any(not n or not _NAME.match(n) for n in found):
        raise BadRequestData(f"{what} must be a list of names separated by , or | (nested projections need join)")
    return found


def item_context(headers: Any, item: Any, batch_context: Any) -> Any:
    """The @context of one entity of a batch, by the same rules as a single entity's body."""
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if not isinstance(item, dict):
        return batch_context
    if content_type == LD_JSON:
        if "@context" not in item:
            raise BadRequestData("an application/ld+json entity needs its @context")
        return item["@context"]
    if "@context" in item:
        raise BadRequestData("with application/json the @context goes in a Link header, not in the body")
    return batch_context


def id_list(text: str | None) -> list[str] | None:
    """The `id` parameter: entity ids separated by commas."""
    if text is None:
        return None
    found = [n.strip() for n in text.split(",")]
    if not found or any(not n for n in found):
        raise BadRequestData("id must be a list of entity ids separated by ,")
    return found
