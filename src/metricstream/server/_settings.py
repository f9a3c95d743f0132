"""Settings of the stream endpoint: security and per-connection limits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..exceptions import ConfigError

__all__ = ["ServerSettings"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerSettings:
    """How the ``/metrics/stream`` endpoint guards itself. Validated on construction.

    - ``token``: when set, every connection must present it, as
      ``Authorization: Bearer <token>``, as a ``metricstream.token.<base64url>``
      entry of ``Sec-WebSocket-Protocol`` (what browsers use: they cannot set
      headers) or as the ``token`` query parameter. A missing or wrong token: the connection
      is accepted and closed at once with 4001, nothing else sent.
    - ``allowed_origins``: when set, a handshake whose ``Origin`` header is
      not listed (exact ``scheme://host[:port]`` match, or ``"*"``) is
      refused with HTTP 403 before any WebSocket exists: this is what stops
      cross-site WebSocket hijacking from a page on another site. Handshakes
      without ``Origin`` (non-browser clients) pass unless
      ``allow_missing_origin`` is false.
    - ``max_connections``: connections beyond this are closed with 4029.
    - ``max_message_size``: a client message larger than this many bytes
      closes the connection with 1009.
    - ``inbound_rate`` / ``inbound_burst``: a token bucket per connection
      (messages per second, bucket size). A message that finds the bucket
      empty is dropped and answered with an ``error`` (code
      ``rate_limited``, once per run of drops); ``inbound_burst`` drops in a
      row close the connection with 4029.
    - ``close_timeout``: seconds a closing handshake may take; a peer that
      does not even take the close frame by then is cut off.
    - ``protect_http``: with a ``token``, the HTTP pages that show the
      stream's figures (``/``, the web dashboard, and ``/metrics``) require
      it too (401 otherwise), as ``Authorization: Bearer`` or ``?token=``.
      ``/healthz`` never does: it says nothing secret.
    - ``path``: where the WebSocket endpoint is mounted.
    - ``handshake_timeout``: seconds a new socket may take to send its whole
      request line and headers; a slower one is answered 408 and closed
      (``metricstream serve`` only: the HTTP layer enforces it).
    - ``max_request_line`` / ``max_header_count`` / ``max_header_bytes``:
      bounds of the handshake's request line (answered 414 past it) and of
      its headers (431), both then closed (``metricstream serve`` only).
    - ``max_filter_entries`` / ``max_filter_bytes``: bounds of a filter
      (query parameters or ``subscribe``): at most this many types, this
      many models, and this many bytes of names in all; past them the
      client gets ``invalid_filter``.
    - ``inbound_byte_rate`` / ``inbound_byte_burst``: a second token bucket
      per connection, in bytes: a client may not send more than this,
      however few its messages. The bucket holds at least
      ``max_message_size``, so a message of the largest size can pass. A
      ``subscribe`` also costs several message tokens, as it costs the
      server more than a ``ping``.
    - ``auth_failure_burst`` / ``auth_failure_rate``: failed token checks
      allowed per client address (bucket size, and refill per second);
      past them that address's handshakes are refused with HTTP 403 without
      the token even being looked at, until the bucket refills.
    - ``fd_reserve``: file descriptors kept free below the process's limit
      (``metricstream serve`` only): when open sockets reach the limit minus
      this, the oldest unfinished handshake is closed to make room, so
      ``/healthz`` and new clients are still answered.
    - ``direct_write``: on uvicorn (sans-I/O websockets, no compression),
      write stream frames straight to the connection's transport instead of
      through ASGI ``send`` (see :class:`DirectWriter`); off, every frame
      goes through ASGI.
    """

    token: str | None = None
    allowed_origins: Sequence[str] | None = None
    allow_missing_origin: bool = True
    max_connections: int = 10_000
    max_message_size: int = 64 * 1024
    inbound_rate: float = 20.0
    inbound_burst: int = 40
    close_timeout: float = 5.0
    protect_http: bool = True
    path: str = "/metrics/stream"
    direct_write: bool = True
    handshake_timeout: float = 5.0
    max_request_line: int = 8 * 1024
    max_header_count: int = 64
    max_header_bytes: int = 16 * 1024
    max_filter_entries: int = 64
    max_filter_bytes: int = 4 * 1024
    inbound_byte_rate: float = 64 * 1024
    inbound_byte_burst: int = 256 * 1024
    auth_failure_burst: int = 5
    auth_failure_rate: float = 0.2
    fd_reserve: int = 32
    # Normalised origins, for the per-handshake lookup.
    _origins: frozenset[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ConfigError("token must not be empty (use None to disable it)")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {self.max_connections}")
        if self.max_message_size < 64:
            raise ConfigError(
                f"max_message_size must be at least 64 bytes, got {self.max_message_size}"
            )
        if not (math.isfinite(self.inbound_rate) and self.inbound_rate > 0):
            raise ConfigError(f"inbound_rate must be positive, got {self.inbound_rate}")
        if self.inbound_burst < 1:
            raise ConfigError(f"inbound_burst must be at least 1, got {self.inbound_burst}")
        if not (math.isfinite(self.close_timeout) and self.close_timeout > 0):
            raise ConfigError(f"close_timeout must be positive, got {self.close_timeout}")
        for name in ("handshake_timeout", "inbound_byte_rate", "auth_failure_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be positive, got {value}")
        for name in (
            "max_request_line",
            "max_header_count",
            "max_header_bytes",
            "max_filter_entries",
            "max_filter_bytes",
            "inbound_byte_burst",
            "auth_failure_burst",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.fd_reserve < 0:
            raise ConfigError(f"fd_reserve must not be negative, got {self.fd_reserve}")
        if not self.path.startswith("/"):
            raise ConfigError(f"path must start with '/', got {self.path!r}")
        if self.allowed_origins is not None:
            if isinstance(self.allowed_origins, str):
                raise ConfigError("allowed_origins must be a sequence of origins, not one string")
            origins = tuple(self.allowed_origins)
            for origin in origins:
                if origin != "*" and "://" not in origin:
                    raise ConfigError(
                        f"allowed origin {origin!r} must look like 'https://host[:port]' or be '*'"
                    )
            object.__setattr__(self, "allowed_origins", origins)
            object.__setattr__(self, "_origins", frozenset(o.rstrip("/").lower() for o in origins))

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header may proceed."""
        allowed = self._origins
        if allowed is None:
            return True
        if origin is None:
            return self.allow_missing_origin
        return "*" in allowed or origin.rstrip("/").lower() in allowed

    def __repr__(self) -> str:
        # Never print the token itself.
        token = None if self.token is None else "***"
        return (
            f"ServerSettings(token={token!r}, allowed_origins={self.allowed_origins!r}, "
            f"allow_missing_origin={self.allow_missing_origin}, "
            f"max_connections={self.max_connections}, max_message_size={self.max_message_size}, "
            f"inbound_rate={self.inbound_rate}, inbound_burst={self.inbound_burst}, "
            f"close_timeout={self.close_timeout}, protect_http={self.protect_http}, "
            f"path={self.path!r}, "
            f"direct_write={self.direct_write}, handshake_timeout={self.handshake_timeout}, "
            f"max_request_line={self.max_request_line}, "
            f"max_header_count={self.max_header_count}, "
            f"max_header_bytes={self.max_header_bytes}, "
            f"max_filter_entries={self.max_filter_entries}, "
            f"max_filter_bytes={self.max_filter_bytes}, "
            f"inbound_byte_rate={self.inbound_byte_rate}, "
            f"inbound_byte_burst={self.inbound_byte_burst}, "
            f"auth_failure_burst={self.auth_failure_burst}, "
            f"auth_failure_rate={self.auth_failure_rate}, fd_reserve={self.fd_reserve})"
        )
