"""Every error leaves as RFC 9457 application/problem+json, mapped from the TerritoireError hierarchy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from territoire_data.api.failover import mark_failover
from territoire_data.db.failover import is_connect_error, is_failover_error
from territoire_data.errors import InvalidTokenError, TerritoireError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://territoire-data.fr/problems/"


class ProblemResponse(Response):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_slug: str | None = None,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    body: dict[str, Any] = {
        # a slug of ours, or a standard's own absolute type (NGSI-LD's https://uri.etsi.org/ngsi-ld/errors/...)
        "type": (type_slug if "://" in type_slug else PROBLEM_BASE + type_slug) if type_slug else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=dict(headers) if headers else None)


async def _territoire_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TerritoireError)
    if exc.status >= 500:
        logger.error("%s on %s: %s", type(exc).__name__, request.url.path, exc.detail)
    headers = None
    if exc.status == 401:
        # RFC 6750 §3.1: `invalid_token` tells an OAuth client to get a new token rather than give up.
        challenge = 'Bearer realm="territoire-data"' + (
            ', error="invalid_token"' if isinstance(exc, InvalidTokenError) else ""
        )
        headers = {"WWW-Authenticate": challenge}
    return problem(
        exc.status,
        exc.title,
        exc.detail,
        type_slug=exc.type_slug,
        instance=request.url.path,
        headers=headers,
        **exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden"}.get(
        exc.status_code, "HTTP error"
    )
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"nothing at {request.url.path}"
    return problem(exc.status_code, title, detail, instance=request.url.path, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"location": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", "")}
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"location": "?", "message": "invalid request"}
    return problem(
        400 if any(e["location"].startswith(("query", "path", "header")) for e in errors) else 422,
        "Invalid request",
        f"{first['location']}: {first['message']}",
        type_slug="invalid-request",
        instance=request.url.path,
        errors=errors,
    )


QUERY_CANCELED = "57014"  # statement_timeout (or a cancel request)


def _timeout_problem(request: Request) -> Response:
    settings = getattr(request.app.state, "settings", None)
    timeout_ms = getattr(settings, "db_statement_timeout_ms", None)
    logger.warning("statement timeout on %s %s", request.method, request.url.path)
    return problem(
        503,
        "Query took too long",
        f"the query ran past the statement timeout ({timeout_ms} ms, TERRITOIRE_DB_STATEMENT_TIMEOUT_MS); "
        "narrow it (a filter, a bbox, a smaller page) and try again",
        type_slug="statement-timeout",
        instance=request.url.path,
        headers={"Retry-After": "10"},
        limit="TERRITOIRE_DB_STATEMENT_TIMEOUT_MS",
        maximum=timeout_ms,
    )


def _refused_value_problem(request: Request, message: str) -> Response:
    return problem(
        400,
        "Invalid value",
        f"the database refused a value of the request: {message.splitlines()[0][:300]}",
        type_slug="invalid-value",
        instance=request.url.path,
    )


def _failover_problem(request: Request, exc: BaseException) -> Response:
    """The database went away or is changing primary: a 503 the failover middleware may retry (api.failover)."""
    mark_failover(request.scope, exc, connect=is_connect_error(exc))
    return problem(
        503,
        "Database unavailable",
        "the database is unreachable or changing primary (failover); try again in a few seconds",
        type_slug="database-unavailable",
        instance=request.url.path,
        headers={"Retry-After": "2"},
    )


async def _postgres_error(request: Request, exc: Exception) -> Response:
    """A statement timeout is a 503; a data exception (class 22: a NUL character, a malformed number or date)
    comes from a value of the request, so it is a 400; a failover is a 503 (retried when safe); anything else is
    our failure, a 500."""
    if is_failover_error(exc):
        return _failover_problem(request, exc)
    state = getattr(exc, "sqlstate", None) or ""
    if state == QUERY_CANCELED:
        return _timeout_problem(request)
    if state.startswith("22"):
        return _refused_value_problem(request, str(exc))
    return await _unexpected_error(request, exc)


async def _dbapi_error(request: Request, exc: Exception) -> Response:
    """SQLAlchemy wraps the driver's errors: the same mapping applies to the asyncpg error under it."""
    assert isinstance(exc, DBAPIError)
    if is_failover_error(exc):
        return _failover_problem(request, exc)
    cause = exc.orig.__cause__ if exc.orig is not None else None
    if isinstance(cause, asyncpg.PostgresError):
        return await _postgres_error(request, cause)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    if is_failover_error(exc):
        return _failover_problem(request, exc)
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "the server failed; the request id in the logs tells where")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TerritoireError, _territoire_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(asyncpg.PostgresError, _postgres_error)
    app.add_exception_handler(DBAPIError, _dbapi_error)
    # Connection losses (OSError, asyncpg.InterfaceError) are no PostgresError: answered here, not by the
    # catch-all (which runs outside every middleware, too late for the failover retry).
    app.add_exception_handler(OSError, _unexpected_error)
    app.add_exception_handler(asyncpg.InterfaceError, _unexpected_error)
    app.add_exception_handler(Exception, _unexpected_error)


# --- the contract: every error an operation can answer, as problem+json --------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; limits also name the setting (`limit`) and its value (`maximum`)",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_ERROR_TEXT = {
    "400": "Bad request: a parameter, a query option or the body is invalid, or a query is over a limit",
    "401": "The API key is missing, unknown, revoked or expired",
    "403": "The API key does not allow this",
    "404": "Not found (restricted datasets answer 404 too)",
    "409": "Conflicts with what is stored",
    "413": "The request body is too large",
    "414": "The URL is too long",
    "422": "The body does not validate",
    "429": "Too many requests (Retry-After says when to come back)",
    "503": "The database is unavailable or the query ran past the statement timeout",
}
_WRITES = ("post", "put", "patch", "delete")


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """The error statuses an operation can answer, from what the middleware and the handlers do."""
    statuses = ["400", "401", "414", "429", "503"]
    if "{" in path:
        statuses.append("404")
    if method in _WRITES or path.startswith(("/api/v1/keys", "/api/v1/audit")):
        statuses.append("403")
    if method in _WRITES:
        statuses += ["404", "409", "413", "422"]
    if "requestBody" in operation:
        statuses += ["413", "422"]
    return statuses


def document_problems(document: dict[str, Any]) -> dict[str, Any]:
    """Declare, on every operation, the problem+json errors it can answer (in place; running it again changes
    nothing): FastAPI documents only its own 422 as application/json, which the app never sends."""
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in _statuses(path, method, operation):
                responses.setdefault(status, {"description": _ERROR_TEXT[status]})
            for status, response in responses.items():
                if status[0] in "45":
                    if status == "422" or not response.get("content"):
                        response["content"] = content
                    if response.get("description") in (None, "", "Validation Error"):
                        response["description"] = _ERROR_TEXT.get(status, "Error")
            operation["responses"] = dict(sorted(responses.items()))
    document["components"]["schemas"].pop("HTTPValidationError", None)
    document["components"]["schemas"].pop("ValidationError", None)
    return document
