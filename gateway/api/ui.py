"""The web console's files: GET /ui (the single page) and GET /ui/static/{name} (its scripts and styles), served
from the package's gateway/ui/ folder. gateway.proxy mounts ROUTES behind its middleware; the shell
needs no key (the page's API calls carry it). Must not import torch, trainer or reward_serving internals.

Only plain names of files that exist in gateway/ui/ with a known type are served (no folders, no dot files, no
`..`); anything else is a 404. The names are not versioned, so every answer carries an ETag and
`Cache-Control: no-cache`: the browser revalidates (a 304, no body) and never runs a stale script after an
upgrade. The page's Content-Security-Policy allows scripts, styles and fetches from this origin only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import Route, Services
from gateway.errors import NotFoundError

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.[a-z]+")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: Request, services: Services) -> Response:
    return await _serve(request, "index.html")


async def static(request: Request, services: Services) -> Response:
    return await _serve(request, request.path_params["name"])


async def _serve(request: Request, name: str) -> Response:
    suffix = Path(name).suffix
    path = UI_DIR / name
    # The pattern admits no separators or dots in front, so `path` stays inside UI_DIR.
    if not _NAME.fullmatch(name) or suffix not in CONTENT_TYPES or not await run_in_threadpool(path.is_file):
        raise NotFoundError(f"no console file {name!r}", param="name")
    body = await run_in_threadpool(path.read_bytes)
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {**_HEADERS, "ETag": etag}
    if suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=CONTENT_TYPES[suffix], headers=headers)


ROUTES: tuple[Route, ...] = (
    ("/ui", index, "GET"),
    ("/ui/static/{name}", static, "GET"),
)
