"""What ``serve`` and ``proxy`` share: the stream server's options and its uvicorn set-up.

Both commands run the same stream server (``/metrics/stream``, ``/``,
``/metrics``, ``/healthz``) on uvicorn, so the options that mean the same in
both (network, TLS, security, limits, logging, engine scraping) are defined
once here and appear in each command's ``OPTIONS`` table, and
:func:`stream_server` builds the one uvicorn configuration both run on: TLS,
forwarded headers, root path, logging, the guarded protocols and the token
registered as a secret.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

from .._logging import LOG_FORMATS, LOG_LEVELS
from .._options import Option, check_port, check_positive, check_range
from ..protocol.constants import DEFAULT_SERVER_HEARTBEAT_INTERVAL

if TYPE_CHECKING:
    from ._hub import MetricsHub
    from ._settings import ServerSettings
    from ._uvicorn import StreamServer

__all__ = [
    "DATA",
    "INTERVAL",
    "LIMIT_OPTIONS",
    "LOGGING_OPTIONS",
    "NETWORK_OPTIONS",
    "SCRAPE_OPTIONS",
    "SECURITY_OPTIONS",
    "log_started",
    "stream_hub",
    "stream_server",
    "stream_settings",
]

logger = logging.getLogger("metricstream.server")


def _check_token(value: Any) -> str | None:
    if not value.strip():
        return "must not be empty"
    if any(c in value for c in "\r\n"):
        return "must not contain line breaks"
    return None


def _check_origins(value: Any) -> str | None:
    for origin in value:
        if origin != "*" and "://" not in origin:
            return f"origin {origin!r} must look like 'https://host[:port]' or be '*'"
    return None


def _check_root_path(value: Any) -> str | None:
    if value and (not value.startswith("/") or value.endswith("/")):
        return f"must start with '/' and not end with one, got {value!r}"
    return None


_NET = "network"
_SEC = "security"
_LIM = "limits"
_LOG = "logging"
#: Group of the options that say what is published.
DATA = "data"

NETWORK_OPTIONS: tuple[Option, ...] = (
    Option(name="host", kind="str", default="127.0.0.1", help="address to bind", group=_NET),
    Option(name="port", kind="int", default=8765, help="TCP port", check=check_port, group=_NET),
    Option(
        name="ssl_certfile",
        kind="str",
        default=None,
        metavar="FILE",
        help="PEM certificate (chain): serve HTTPS and wss://",
        group=_NET,
    ),
    Option(
        name="ssl_keyfile",
        kind="str",
        default=None,
        metavar="FILE",
        help="PEM private key of --ssl-certfile (when not in that file)",
        group=_NET,
    ),
    Option(
        name="ssl_keyfile_password",
        kind="str",
        default=None,
        secret=True,
        # Not from the TOML file: a password written beside the settings (and
        # often beside the key it unlocks) protects the key from nobody.
        in_file=False,
        metavar="PASSWORD",
        help="password of an encrypted TLS key; prefer the environment variable, as a flag "
        "shows in the process list",
        group=_NET,
    ),
    Option(
        name="proxy_headers",
        kind="bool",
        default=False,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a reverse proxy)",
        group=_NET,
    ),
    Option(
        name="forwarded_allow_ips",
        kind="str",
        default="127.0.0.1",
        metavar="IPS",
        help="comma-separated proxy addresses (or *) whose X-Forwarded-* headers are trusted",
        group=_NET,
    ),
    Option(
        name="root_path",
        kind="str",
        default="",
        metavar="PATH",
        help="URL prefix the app is served under by a proxy that strips it, e.g. /metricstream",
        check=_check_root_path,
        group=_NET,
    ),
)

SECURITY_OPTIONS: tuple[Option, ...] = (
    Option(
        name="token",
        kind="str",
        default=None,
        secret=True,
        metavar="TOKEN",
        help="require this bearer token on the stream (header, subprotocol or ?token=)",
        check=_check_token,
        group=_SEC,
    ),
    Option(
        name="protect_http",
        kind="bool",
        default=True,
        help="with --token, also require it on / (the web page) and /metrics",
        group=_SEC,
    ),
    Option(
        name="allowed_origins",
        kind="list",
        default=[],
        metavar="ORIGIN",
        help="accept browser handshakes from these origins only (repeatable or "
        "comma-separated), e.g. https://dash.example.com",
        check=_check_origins,
        group=_SEC,
        aliases=("--allowed-origin",),
    ),
)

LIMIT_OPTIONS: tuple[Option, ...] = (
    Option(
        name="max_connections",
        kind="int",
        default=10_000,
        help="stream connections plus sockets still in their handshake; more are refused",
        check=check_range(1, 10_000_000),
        group=_LIM,
    ),
    Option(
        name="max_message_size",
        kind="int",
        default=64 * 1024,
        help="largest client message in bytes",
        check=check_range(64, 2**31),
        group=_LIM,
    ),
    Option(
        name="max_buffer_bytes",
        kind="int",
        default=512 * 1024,
        help="per-client outbound buffer bound in bytes",
        check=check_positive,
        group=_LIM,
    ),
    Option(
        name="heartbeat_interval",
        kind="float",
        default=DEFAULT_SERVER_HEARTBEAT_INTERVAL,
        help="seconds between server heartbeats",
        check=check_positive,
        group=_LIM,
    ),
    Option(
        name="handshake_timeout",
        kind="float",
        default=5.0,
        help="seconds a new connection may take to send its request (408 after)",
        check=check_positive,
        group=_LIM,
    ),
    Option(
        name="ws_per_message_deflate",
        kind="bool",
        default=False,
        help="negotiate permessage-deflate (it costs CPU and memory)",
        group=_LIM,
    ),
)

INTERVAL = Option(
    name="interval",
    kind="float",
    default=1.0,
    help="seconds between state updates",
    check=check_positive,
    group=DATA,
)

SCRAPE_OPTIONS: tuple[Option, ...] = (
    Option(
        name="scrape",
        kind="list",
        default=[],
        metavar="URL",
        help="an inference engine's Prometheus endpoint (vLLM, SGLang, TGI) whose figures "
        "to publish, e.g. http://localhost:8000/metrics (repeatable)",
        group=DATA,
    ),
    Option(
        name="scrape_interval",
        kind="float",
        default=1.0,
        help="seconds between two scrapes of an engine",
        check=check_positive,
        group=DATA,
    ),
)

LOGGING_OPTIONS: tuple[Option, ...] = (
    Option(
        name="log_level",
        kind="str",
        default="info",
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="lowest level logged (to stderr)",
        group=_LOG,
    ),
    Option(
        name="log_format",
        kind="str",
        default="text",
        choices=LOG_FORMATS,
        metavar="FORMAT",
        help="text lines, or one JSON object per line for log shippers",
        group=_LOG,
    ),
    Option(
        name="access_log",
        kind="bool",
        default=True,
        help="log every HTTP request and WebSocket handshake (tokens redacted)",
        group=_LOG,
    ),
)


def stream_settings(args: argparse.Namespace) -> ServerSettings:
    """The stream server's settings from the resolved options in ``args``.

    Registers the token as a secret first, so no later log line shows it;
    :class:`~metricstream.exceptions.ConfigError` for a key without a certificate.
    """
    from .._logging import add_secret
    from ..exceptions import ConfigError
    from ._settings import ServerSettings

    if args.ssl_keyfile and not args.ssl_certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    if args.ssl_keyfile_password:
        # Registered before anything can log it (an error quoting the value).
        add_secret(args.ssl_keyfile_password)
        if not args.ssl_certfile:
            raise ConfigError("--ssl-keyfile-password needs --ssl-certfile")
    if args.token:
        add_secret(args.token)
    return ServerSettings(
        token=args.token or None,
        allowed_origins=tuple(args.allowed_origins) if args.allowed_origins else None,
        max_connections=args.max_connections,
        max_message_size=args.max_message_size,
        protect_http=args.protect_http,
        handshake_timeout=args.handshake_timeout,
    )


def stream_hub(args: argparse.Namespace) -> MetricsHub:
    """The hub, bounded by the resolved options in ``args``."""
    from ._hub import MetricsHub

    return MetricsHub(
        max_buffer_bytes=args.max_buffer_bytes, heartbeat_interval=args.heartbeat_interval
    )


def stream_server(
    app: Any,
    hub: MetricsHub,
    settings: ServerSettings,
    args: argparse.Namespace,
    **uvicorn_options: Any,
) -> StreamServer:
    """The uvicorn server running ``app`` as the resolved options in ``args`` say.

    TLS, forwarded headers, root path, the access log and the log level
    (records left to the CLI's handler), and the guarded protocols for
    ``hub`` and ``settings``; ``uvicorn_options`` add to or override them.
    A TLS certificate or key that cannot be used is a
    :class:`~metricstream.exceptions.ConfigError`, not a traceback.
    """
    from .._logging import uvicorn_log_options
    from ._limits import guarded_uvicorn_options
    from ._uvicorn import StreamServer, uvicorn_config

    tls: dict[str, Any] = {}
    if args.ssl_certfile:
        tls = {
            "ssl_certfile": args.ssl_certfile,
            "ssl_keyfile": args.ssl_keyfile,
            "ssl_keyfile_password": args.ssl_keyfile_password or None,
        }
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "max_message_size": settings.max_message_size,
        "ws_per_message_deflate": args.ws_per_message_deflate,
        "proxy_headers": args.proxy_headers,
        "forwarded_allow_ips": args.forwarded_allow_ips,
        "root_path": args.root_path,
        "access_log": args.access_log,
        **uvicorn_log_options(args.log_level),
        **tls,
        **guarded_uvicorn_options(hub, settings),
    }
    options.update(uvicorn_options)
    config = uvicorn_config(app, **options)
    if args.ssl_certfile:
        _load_tls(config, args)
    return StreamServer(config, hub, close_timeout=settings.close_timeout)


# How a PEM file marks an encrypted private key: PKCS#8 ("BEGIN ENCRYPTED
# PRIVATE KEY") or the traditional OpenSSL header ("Proc-Type: 4,ENCRYPTED").
_ENCRYPTED_PEM = ("-----BEGIN ENCRYPTED PRIVATE KEY-----", "Proc-Type: 4,ENCRYPTED")


def _load_tls(config: Any, args: argparse.Namespace) -> None:
    """Load and check the certificate and key now: a wrong path, a wrong
    password or a key that does not match is a configuration error, not a
    traceback when the first client connects."""
    import ssl

    from ..exceptions import ConfigError

    keyfile: str = args.ssl_keyfile or args.ssl_certfile
    try:
        with open(keyfile, encoding="ascii", errors="replace") as file:
            encrypted = any(mark in file.read() for mark in _ENCRYPTED_PEM)
    except OSError:
        encrypted = False  # the load below says what is wrong with the path
    if encrypted and not args.ssl_keyfile_password:
        # Without a password OpenSSL would ask for one on the terminal, and a
        # server must not wait on a prompt nobody sees.
        raise ConfigError(
            f"the TLS key {keyfile} is encrypted: give its password with "
            "METRICSTREAM_SSL_KEYFILE_PASSWORD or --ssl-keyfile-password"
        )
    try:
        config.load()
    except ssl.SSLError as exc:
        if encrypted and "MISMATCH" not in str(exc).upper():
            raise ConfigError(
                f"cannot decrypt the TLS key {keyfile}: wrong password "
                "(METRICSTREAM_SSL_KEYFILE_PASSWORD / --ssl-keyfile-password)"
            ) from None
        raise ConfigError(f"cannot use the TLS certificate or key: {exc}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot use the TLS certificate or key: {exc}") from None


def log_started(args: argparse.Namespace, settings: ServerSettings) -> None:
    """Log where the stream is and how it is guarded (never the token)."""
    logger.info(
        "stream at %s%s over %s, token %s",
        args.root_path,
        settings.path,
        "TLS (wss://)" if args.ssl_certfile else "plain ws://",
        "required" if settings.token else "not required",
    )
