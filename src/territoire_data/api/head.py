"""HEAD on every GET resource (RFC 9110 §9.3.2), without producing the body.

Link checkers ask with HEAD: data.gouv.fr's checks the download URLs a DCAT catalog gives, monitoring probes and
`curl -I` do too. FastAPI routes declare GET only, so HEAD answered 405. Here a HEAD runs the GET handler (same
access rules, same status, same headers: a restricted dataset is a 404 exactly as with GET) and only the headers
go out. Streamed exports (`streaming.StreamedResponse`) see the `HEAD_ONLY` mark and do not run their query.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from territoire_data.streaming import HEAD_ONLY


class HeadMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        finished = False

        async def send_headers_only(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and not finished:
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET", HEAD_ONLY: True}, receive, send_headers_only)
