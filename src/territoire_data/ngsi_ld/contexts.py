"""@context handling: the core context served by us, user contexts stored or cached, never fetched unless allowed.

Terms are expanded and IRIs compacted by pyld's own context processing (`process_context`, then its IRI expansion
and compaction against the active context), never by a hand-made expander. Processing a context costs about 13 ms
(pyld, measured 2026-12-05), so active contexts are kept by their JSON text in a bounded LRU; their expansions and
compactions are memoised.

A remote context (a URL in a `Link` header or an inline `@context` list) is resolved, in order, from: the core
context's known URLs (our committed copy of ETSI's document), the contexts stored through
`/ngsi-ld/v1/jsonldContexts` or cached before (table `ngsild_context`), and, only for URLs under a prefix the
operator listed in `TERRITOIRE_NGSILD_CONTEXT_ALLOW`, a fetch whose result is cached in that table. Anything else
is a 503 LdContextNotAvailable: the platform never calls out on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pyld import jsonld

from territoire_data.ngsi_ld.errors import BadRequestData, LdContextNotAvailable

logger = logging.getLogger(__name__)

CORE_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
# The URLs under which ETSI published the core context: all resolve to our copy of v1.8, a superset of the terms
# of the earlier ones with the same IRIs.
CORE_URLS = frozenset(
    [CORE_URL, "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"]
    + [f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.{minor}.jsonld" for minor in range(0, 10)]
)
NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_VOCAB = NGSI_LD + "default-context/"
MAX_CONTEXT_BYTES = 1_048_576
_FETCH_TIMEOUT = 5.0
_ACTIVE_CACHE_SIZE = 256


@cache
def core_document() -> dict[str, Any]:
    """ETSI's core context (see contexts/PROVENANCE.md), read once."""
    path = Path(__file__).parent / "contexts" / "ngsi-ld-core-context-v1.8.jsonld"
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


class ActiveContext:
    """A processed context: expands terms and compacts IRIs with pyld, memoised."""

    def __init__(self, value: list[Any], processed: dict[str, Any], output: Any = None) -> None:
        self.value = value  # the contexts processed, the core context last
        # what responses carry as @context: the request's own (it holds the core context, or implies it), else core
        self.output = output if output is not None else CORE_URL
        self._processed = processed
        self._processor = jsonld.JsonLdProcessor()
        self._expanded: dict[str, str] = {}
        self._compacted: dict[str, str] = {}
        self._lock = threading.Lock()

    def expand(self, term: str) -> str:
        found = self._expanded.get(term)
        if found is None:
            with self._lock:
                found = str(self._processor._expand_iri(self._processed, term, vocab=True))
            self._expanded[term] = found
        return found

    def compact(self, iri: str) -> str:
        found = self._compacted.get(iri)
        if found is None:
            with self._lock:
                found = str(self._processor._compact_iri(self._processed, iri, vocab=True))
            self._compacted[iri] = found
        return found

    @property
    def link_url(self) -> str | None:
        """The URL of the request's own context when it is one URL (for a `Link` header), else None."""
        if isinstance(self.output, str):
            return self.output
        if isinstance(self.output, list):
            urls = [u for u in self.output if isinstance(u, str) and u not in CORE_URLS]
            if len(urls) == 1 and all(isinstance(u, str) for u in self.output):
                return urls[0]
        return None


class ContextStore:
    """Resolves remote contexts (core, stored, allowed) and keeps processed active contexts."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.allow = tuple(allow)
        self._documents: dict[str, Any] = {}
        self._active: OrderedDict[str, ActiveContext] = OrderedDict()
        self._lock = threading.Lock()

    def forget(self, url: str) -> None:
        """A stored context was deleted or replaced: drop it and every active context built from it."""
        self._documents.pop(url, None)
        with self._lock:
            self._active.clear()

    async def active(self, conn: asyncpg.Connection, context: Any) -> ActiveContext:
        """The active context for a request's @context (None or [] means the core context alone)."""
        items = _as_list(context)
        if not any(isinstance(item, str) and item in CORE_URLS for item in items):
            items = [*items, CORE_URL]
        key = json.dumps([context, items], sort_keys=True, separators=(",", ":"))
        with self._lock:
            found = self._active.get(key)
            if found is not None:
                self._active.move_to_end(key)
                return found
        includes_core = await self._resolve(conn, _as_list(context), depth=0)
        processed = self._process(items)
        # responses echo the request's context when it brings the core context itself, else add the core one
        output = context if includes_core else (items if len(items) > 1 else None)
        active = ActiveContext(items, processed, output)
        with self._lock:
            self._active[key] = active
            while len(self._active) > _ACTIVE_CACHE_SIZE:
                self._active.popitem(last=False)
        return active

    def _process(self, items: list[Any]) -> dict[str, Any]:
        processor = jsonld.JsonLdProcessor()
        options = {"documentLoader": self._loader, "processingMode": "json-ld-1.1", "base": None}
        try:
            initial = processor._get_initial_context(options)
            processed: dict[str, Any] = processor.process_context(initial, items, options)
        except jsonld.JsonLdError as exc:
            raise BadRequestData(f"invalid @context: {_jsonld_message(exc)}") from None
        return processed

    def _loader(self, url: str, options: Any = None) -> dict[str, Any]:
        document = core_document() if url in CORE_URLS else self._documents.get(url)
        if document is None:  # _resolve ran first: only a URL nested somewhere pyld found on its own
            raise jsonld.JsonLdError(
                f"context {url} is not available", "jsonld.LoadDocumentError", code="loading remote context failed"
            )
        return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url, "document": document}

    async def _resolve(self, conn: asyncpg.Connection, items: list[Any], depth: int) -> bool:
        """Load every remote context `items` name, however nested; True when the core context is among them."""
        if depth > 8:
            raise BadRequestData("@context nests remote contexts too deeply")
        includes_core = False
        for item in items:
            if isinstance(item, str):
                if item in CORE_URLS:
                    includes_core = True
                    continue
                document = self._documents.get(item)
                if document is None:
                    document = await self._load(conn, item)
                    self._documents[item] = document
                nested = document.get("@context") if isinstance(document, dict) else None
                includes_core |= await self._resolve(conn, _as_list(nested), depth + 1)
            elif isinstance(item, dict):
                for value in item.values():
                    if isinstance(value, dict) and "@context" in value:
                        raise BadRequestData("scoped contexts (@context inside a term definition) are not accepted")
            elif item is not None:
                raise BadRequestData("@context must be a URL, an object or a list of them")
        return includes_core

    async def _load(self, conn: asyncpg.Connection, url: str) -> Any:
        row = await conn.fetchrow(
            "UPDATE ngsild_context SET hits = hits + 1, last_used_at = now() WHERE url = $1 RETURNING body", url
        )
        if row is not None:
            return row["body"]
        if not any(url.startswith(prefix) for prefix in self.allow):
            raise LdContextNotAvailable(
                f"@context {url} is neither the core context nor stored here; store it first (POST "
                "/ngsi-ld/v1/jsonldContexts) or have the operator allow its prefix (TERRITOIRE_NGSILD_CONTEXT_ALLOW)"
            )
        document = await _fetch(url)
        await conn.execute(
            "INSERT INTO ngsild_context (id, url, body, kind) VALUES ($1, $2, $3, 'Cached') "
            "ON CONFLICT (url) DO UPDATE SET body = EXCLUDED.body",
            context_id(url),
            url,
            document,
        )
        return document


def context_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


async def _fetch(url: str) -> Any:
    try:
        async with httpx.AsyncClient(timeout=_FETCH_TIMEOUT, follow_redirects=True) as client:
            response = await client.get(url, headers={"Accept": "application/ld+json, application/json"})
    except httpx.HTTPError as exc:
        raise LdContextNotAvailable(f"@context {url} could not be fetched: {type(exc).__name__}") from None
    if response.status_code != 200 or len(response.content) > MAX_CONTEXT_BYTES:
        raise LdContextNotAvailable(f"@context {url} could not be fetched (HTTP {response.status_code})")
    try:
        document = response.json()
    except ValueError:
        raise LdContextNotAvailable(f"@context {url} is not JSON") from None
    if not isinstance(document, dict) or "@context" not in document:
        raise LdContextNotAvailable(f"@context {url} holds no @context")
    return document


def _as_list(context: Any) -> list[Any]:
    if context is None:
        return []
    return list(context) if isinstance(context, list) else [context]


def _jsonld_message(exc: jsonld.JsonLdError) -> str:
    cause = getattr(exc, "cause", None)
    code = getattr(exc, "code", None)
    return str(code or getattr(cause, "code", None) or exc).splitlines()[0][:300]


def check_document(document: Any) -> dict[str, Any]:
    """A context document: a JSON object with an @context (an object, a URL or a list of them)."""
    if not isinstance(document, dict) or "@context" not in document:
        raise BadRequestData("a @context document is a JSON object with an @context member")
    if not isinstance(document["@context"], dict | list | str):
        raise BadRequestData("@context must be an object, a URL or a list of them")
    checked: dict[str, Any] = document
    return checked


async def store_context(conn: asyncpg.Connection, url: str, document: Any, kind: str) -> str:
    """Keep a context under its URL (`Cached`: a copy of a remote one, brought by the operator; `Hosted`: served
    by us at /ngsi-ld/v1/jsonldContexts/<id>); returns its id."""
    check_document(document)
    identifier = context_id(url)
    await conn.execute(
        "INSERT INTO ngsild_context (id, url, body, kind) VALUES ($1, $2, $3::text::jsonb, $4) "
        "ON CONFLICT (url) DO UPDATE SET body = EXCLUDED.body, kind = EXCLUDED.kind",
        identifier,
        url,
        json.dumps(document),
        kind,
    )
    return identifier
