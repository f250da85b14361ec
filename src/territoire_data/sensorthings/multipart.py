"""The batch request of SensorThings 1.1 (section 11.2) in its standard form: OData 4.0 multipart/mixed.

A batch is a `multipart/mixed` body whose parts are single requests (`application/http`) or change sets (a nested
`multipart/mixed` whose requests carry a `Content-ID`). Requests run in order on one connection; a change set
runs in one transaction, so it commits whole or not at all, and a later request of the batch may use `$<Content-ID>`
(at the start of its URL, or as a nested `{"@iot.id": "$<Content-ID>"}`) for an entity created before it.

Parsing turns the parts into the items of the JSON batch (one change set = one atomicity group), so both forms
share `service.run_batch`; the answer is a `multipart/mixed` body in the same shape: one `application/http` part
per request, one nested `multipart/mixed` per change set, or a single response for a change set that failed.
"""

from __future__ import annotations

import re
import uuid
from email.message import Message
from http import HTTPStatus
from typing import Any

import asyncpg
import orjson

from territoire_data.errors import BadRequestError
from territoire_data.sensorthings import read
from territoire_data.sensorthings.service import Reply, WriteAuth, run_batch

MAX_PARTS = 1000  # requests in one batch: a bound on the work one HTTP request can ask for
_LINE_END = re.compile(rb"\r?\n")


def boundary_of(content_type: str) -> str:
    """The `boundary` parameter of a multipart Content-Type; a 400 when there is none."""
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BadRequestError("a multipart/mixed batch needs a boundary parameter in its Content-Type")
    return boundary


def split_parts(body: bytes, boundary: str, where: str) -> list[bytes]:
    """The parts between `--boundary` delimiter lines (RFC 2046), up to the closing `--boundary--`."""
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : match.start()])
        if match.group(1):  # the close delimiter
            return parts
        start = match.end()
    raise BadRequestError(f"{where}: no closing delimiter --{boundary}--")


def _headers(block: bytes, where: str) -> tuple[dict[str, str], bytes]:
    """Header lines up to the first empty line, then the rest."""
    headers: dict[str, str] = {}
    rest = block
    while True:
        match = _LINE_END.search(rest)
        line, rest = (rest, b"") if match is None else (rest[: match.start()], rest[match.end() :])
        if not line:
            return headers, rest
        name, colon, value = line.decode("utf-8", "replace").partition(":")
        if not colon:
            raise BadRequestError(f"{where}: malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
        if match is None:
            return headers, b""


def _request(part: bytes, where: str, group: str | None, ordinal: int) -> dict[str, Any]:
    """One `application/http` part -> a JSON batch item (id, method, url, body, atomicityGroup)."""
    mime, http = _headers(part, where)
    if not mime.get("content-type", "").lower().startswith("application/http"):
        raise BadRequestError(f"{where}: a part must be application/http or a multipart/mixed change set")
    match = _LINE_END.search(http)
    request_line = (http if match is None else http[: match.start()]).decode("utf-8", "replace").strip()
    pieces = request_line.split()
    if len(pieces) not in (2, 3) or not pieces[0].isalpha():
        raise BadRequestError(f"{where}: expected a request line 'METHOD URL HTTP/1.1', found {request_line[:80]!r}")
    inner, body = _headers(b"" if match is None else http[match.end() :], where)
    content_id = mime.get("content-id") or inner.get("content-id")
    if group is not None and not content_id:
        content_id = f"{group}.{ordinal}"  # OData asks for one; a client that forgot it still gets its answer
    item: dict[str, Any] = {"id": content_id or "", "method": pieces[0].upper(), "url": pieces[1]}
    if group is not None:
        item["atomicityGroup"] = group
    if "prefer" in inner:  # Prefer: return=minimal, per request (as JSON batch items carry it in "headers")
        item["headers"] = {"prefer": inner["prefer"]}
    body = body.strip()
    if body:
        try:
            item["body"] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(f"{where}: the body is not valid JSON: {exc}") from None
    if content_id is not None:
        item["_content_id"] = content_id
    return item


def parse_batch(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """A multipart/mixed batch body -> the items of a JSON batch, change sets as atomicity groups."""
    items: list[dict[str, Any]] = []
    for index, part in enumerate(split_parts(body, boundary_of(content_type), "batch"), start=1):
        where = f"batch part {index}"
        headers, content = _headers(part, where)
        if headers.get("content-type", "").lower().startswith("multipart/mixed"):
            group = f"changeset{index}"
            inner = split_parts(content, boundary_of(headers["content-type"]), where)
            for ordinal, request in enumerate(inner, start=1):
                items.append(_request(request, f"{where}, request {ordinal}", group, ordinal))
        else:
            items.append(_request(part, where, None, 1))
        if len(items) > MAX_PARTS:
            raise BadRequestError(f"a batch holds at most {MAX_PARTS} requests")
    return items


# --- the answer --------------------------------------------------------------------------------------------


def _http_part(response: dict[str, Any], content_id: str | None) -> bytes:
    status = int(response["status"])
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id is not None:
        lines.append(f"Content-ID: {content_id}")
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines += ["", f"HTTP/1.1 {status} {phrase}".rstrip()]
    payload = b""
    if "location" in response:
        lines.append(f"Location: {response['location']}")
    if "preference-applied" in response:
        lines.append(f"Preference-Applied: {response['preference-applied']}")
    body = response.get("body")
    if body is not None:
        if status >= 400 and isinstance(body, dict):
            lines.append("Content-Type: application/problem+json")
            payload = read.dumps({"status": status, **body})
        elif isinstance(body, str):
            lines.append("Content-Type: text/plain; charset=utf-8")
            payload = body.encode()
        else:
            lines.append("Content-Type: application/json; charset=utf-8")
            payload = read.dumps(body)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload + b"\r\n"


def _multipart(parts: list[bytes], boundary: str) -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\n" + part for part in parts)
    return out + b"--" + boundary.encode() + b"--\r\n"


def render_batch(
    items: list[dict[str, Any]], groups: list[tuple[list[dict[str, Any]], int | None]]
) -> tuple[bytes, str]:
    """The multipart/mixed answer to the parsed `items`, from `run_batch`'s responses; body and Content-Type."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    parts: list[bytes] = []
    position = 0
    for responses, failed in groups:
        group_items = items[position : position + len(responses)]
        position += len(responses)
        is_changeset = "atomicityGroup" in group_items[0]
        if not is_changeset:
            parts.append(_http_part(responses[0], group_items[0].get("_content_id")))
        elif failed is not None:  # OData: a failed change set answers one response, that of the failed request
            parts.append(_http_part(responses[failed], group_items[failed].get("_content_id")))
        else:
            inner_boundary = f"changesetresponse_{uuid.uuid4()}"
            inner = [_http_part(r, i.get("_content_id")) for r, i in zip(responses, group_items, strict=True)]
            parts.append(
                f"Content-Type: multipart/mixed; boundary={inner_boundary}\r\n\r\n".encode()
                + _multipart(inner, inner_boundary)
            )
    return _multipart(parts, boundary), f"multipart/mixed; boundary={boundary}"


async def multipart_batch(
    conn: asyncpg.Connection,
    ctx: read.Context,
    auth: WriteAuth,
    body: bytes,
    content_type: str,
    authorization: str | None,
) -> Reply:
    """Serve one multipart/mixed batch request."""
    items = parse_batch(body, content_type)
    if not items:
        raise BadRequestError("the batch holds no request")
    groups = await run_batch(conn, ctx, auth, items, authorization)
    payload, media_type = render_batch(items, groups)
    return Reply(200, payload, {"content-type": media_type})
