"""The collector's one error type (defined with the others in ``exceptions``)."""

from __future__ import annotations

from ..exceptions import InvalidMetricError

__all__ = ["InvalidMetricError"]
