"""Browser caching of the files the page shows: thumbnails, previews, maps.

Gradio's file route (``/gradio_api/file=<path>``) answers with an ETag and Last-Modified but no Cache-Control, so
a browser decides by itself how long to trust a thumbnail it has seen, and asks again for the same archive tile on
every search that returns it. The app's files do not change while it serves them (archive tiles; rendered images
named by their content; exports written once to new folders), so their responses say how long they may be reused
without asking: ``max_age`` seconds, after which the ETag revalidates them.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FILE_ROUTE = "/gradio_api/file="
MAX_AGE = 600  # seconds


class FileCacheHeaders:
    """ASGI middleware: ``Cache-Control: public, max-age=<max_age>`` on successful GETs of gradio's file route
    (unless the response already has a Cache-Control); every other request passes untouched."""

    def __init__(self, app: ASGIApp, max_age: int = MAX_AGE) -> None:
        self.app, self.max_age = app, max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or FILE_ROUTE not in scope["path"]:
            await self.app(scope, receive, send)
            return

        async def send_with_cache_control(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                MutableHeaders(scope=message).setdefault("cache-control", f"public, max-age={self.max_age}")
            await send(message)

        await self.app(scope, receive, send_with_cache_control)
