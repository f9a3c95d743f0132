"""Dashboards over a metrics stream.

- :mod:`metricstream.dashboard.tui` — the Textual terminal dashboard
  (``metricstream dashboard``; needs the ``tui`` extra).
- :mod:`metricstream.dashboard.web` — the browser dashboard the stream server
  serves at ``/`` (needs the ``server`` extra).

This package imports neither, so the server does not pull in Textual and the
terminal UI does not pull in the server.
"""
