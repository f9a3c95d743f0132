"""The Textual terminal dashboard (``metricstream dashboard``) and its widgets.

Widgets are plain views over a :class:`~metricstream.store.MetricsStore`; they
never do networking themselves.
"""

from ._app import MetricsDashboard
from ._widgets import (
    STATE_COLOURS,
    ConnectionBadge,
    ConnectionStats,
    ConnectionStatus,
    CostPanel,
    ErrorFeed,
    KVCachePanel,
    MetricsOverview,
    ModelTable,
    RateLimitPanel,
    RequestTable,
    SystemHealthPanel,
    TrendPanel,
)

__all__ = [
    "STATE_COLOURS",
    "ConnectionBadge",
    "ConnectionStats",
    "ConnectionStatus",
    "CostPanel",
    "ErrorFeed",
    "KVCachePanel",
    "MetricsDashboard",
    "MetricsOverview",
    "ModelTable",
    "RateLimitPanel",
    "RequestTable",
    "SystemHealthPanel",
    "TrendPanel",
]
