"""The browser dashboard: static page, JavaScript stream client and its router.

:func:`create_web_router` serves ``/`` (the page) and ``/static/`` (its CSS
and JavaScript modules) with a strict Content-Security-Policy; ``metricstream
serve`` includes it beside the stream.
"""

from ._web import CONTENT_SECURITY_POLICY, STATIC_DIR, WebAsset, create_web_router, load_assets

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "WebAsset", "create_web_router", "load_assets"]
