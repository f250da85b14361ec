"""Streamed bodies that a HEAD request does not produce.

`api.head.HeadMiddleware` answers HEAD by running the GET handler and marks the request with `HEAD_ONLY`; a
streamed export then sends its headers and stops before its generator opens a database cursor, so a HEAD on a
million-row export (what data.gouv.fr's link checker sends to each download URL) costs as little as a 404.
"""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

HEAD_ONLY = "territoire.head_only"


class StreamedResponse(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope.get(HEAD_ONLY):
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        close = getattr(self.body_iterator, "aclose", None)
        if close is not None:  # never started: closing it releases nothing but the generator itself
            await close()
