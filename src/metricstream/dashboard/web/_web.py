"""Serve the browser dashboard: the page at ``/`` and its assets under ``/static/``.

The assets are plain files shipped inside the package (no build step, no CDN).
They are read once, when the router is created, into an immutable table; a
request can only ever name one of those files, so no path from the URL ever
reaches the file system.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from fastapi.responses import Response

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "WebAsset", "create_web_router", "load_assets"]

#: The package directory holding the page and its assets.
STATIC_DIR = "static"

#: The page's Content-Security-Policy. Everything comes from this origin;
#: there is no inline script or style, so a value from the stream that ever
#: reached the DOM as markup still could not run. ``connect-src`` names the
#: WebSocket schemes because ``'self'`` does not cover ``ws:`` in every browser.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}

# Headers on every response of the router. The token may sit in the page's
# query string, so the referrer never carries the URL anywhere.
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

# Assets are not content-hashed in their names, so browsers revalidate every
# time (a 304 with no body once cached): a package upgrade can never pair a
# new page with stale modules.
_CACHE_CONTROL = "no-cache"


@dataclass(frozen=True, slots=True)
class WebAsset:
    """One static file of the dashboard, held in memory."""

    name: str
    """Path relative to the static directory, with ``/`` separators."""
    body: bytes
    content_type: str
    etag: str
    """A strong validator: a quoted hash of ``body``."""


def _walk(directory: Traversable, prefix: str) -> list[tuple[str, Traversable]]:
    found: list[tuple[str, Traversable]] = []
    for entry in directory.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.extend(_walk(entry, f"{name}/"))
        elif entry.is_file():
            found.append((name, entry))
    return found


def load_assets() -> dict[str, WebAsset]:
    """Read every servable file of the static directory, keyed by relative path.

    Files with an extension outside the known content types are left out, so
    nothing is ever served as an unlabelled (sniffable) blob.
    """
    root = resources.files(__package__).joinpath(STATIC_DIR)
    assets: dict[str, WebAsset] = {}
    for name, entry in _walk(root, ""):
        suffix = name[name.rfind(".") :] if "." in name else ""
        content_type = _CONTENT_TYPES.get(suffix)
        if content_type is None:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = WebAsset(name, body, content_type, etag)
    return assets


def _respond(asset: WebAsset, request: Request) -> Response:
    headers = dict(_SECURITY_HEADERS)
    headers["Cache-Control"] = _CACHE_CONTROL
    headers["ETag"] = asset.etag
    candidates = request.headers.get("if-none-match", "")
    if asset.etag in (tag.strip() for tag in candidates.split(",")) or candidates.strip() == "*":
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.content_type, headers=headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(asset.body))
    return response


def _not_found() -> Response:
    headers = dict(_SECURITY_HEADERS)
    headers["Cache-Control"] = _CACHE_CONTROL
    return Response(b"not found\n", status_code=404, media_type="text/plain", headers=headers)


def create_web_router(*, assets: dict[str, WebAsset] | None = None) -> APIRouter:
    """A FastAPI router serving the dashboard page at ``/`` and assets at ``/static/``.

    Include it next to the stream's router (same prefix) so that the page,
    which dials the stream relative to its own URL (``metrics/stream``),
    finds it: ``app.include_router(create_web_router())``. ``assets`` defaults
    to :func:`load_assets`.
    """
    table = assets if assets is not None else load_assets()
    if "index.html" not in table:
        raise RuntimeError("the dashboard's index.html is missing from the package")
    router = APIRouter()

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index(request: Request) -> Response:
        return _respond(table["index.html"], request)

    @router.api_route("/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(path: str, request: Request) -> Response:
        asset = table.get(path)
        return _not_found() if asset is None else _respond(asset, request)

    return router
