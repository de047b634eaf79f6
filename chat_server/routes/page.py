"""The chat page: plain HTML, CSS and JavaScript from this package, no build step and nothing from a CDN.

Its policy allows scripts, styles and connections from this server only, so even text that slipped past the
page's escaping could not run a script or send what it read elsewhere.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

router = APIRouter()
FILES = {"chat.html": "text/html; charset=utf-8", "chat.js": "text/javascript; charset=utf-8",
         "chat.css": "text/css; charset=utf-8", "chat.svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("chat_server") / "static" / name).read_bytes()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("chat")  # relative: right behind a proxy that mounts the server under a path


@router.get("/chat", summary="The chat page", response_class=Response)
async def page() -> Response:
    return Response(_read("chat.html"), media_type=FILES["chat.html"], headers=HEADERS)


@router.get("/chat/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in FILES or name == "chat.html":
        raise HTTPException(404, "Not Found")
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)
