"""The collector: turns request events and host statistics into stream messages.

- :class:`MetricsCollector` aggregates requests, errors, rate limits and KV
  cache counters over rolling windows and publishes the seed's messages to a
  :class:`Publisher` (the stream hub).
- :class:`MetricsMiddleware` records every request of a FastAPI/Starlette app.
- :class:`DemoTraffic` and :func:`run_demo` generate a plausible workload.
- :class:`EngineScraper` adds inference engines' own Prometheus figures
  (vLLM, SGLang, TGI) to the stream.
"""

from ._aggregate import DEFAULT_SERVICE, OTHER, CollectorSnapshot
from ._collector import CostPeriod, MetricsCollector, Publisher
from ._demo import DEFAULT_PROFILES, DemoTraffic, ModelProfile, run_demo
from ._errors import InvalidMetricError
from ._middleware import UNMATCHED, MetricsMiddleware
from ._prices import DEFAULT_PRICES, ModelPrice, load_prices
from ._scrape import EngineScraper, EngineStatus
from ._system import SystemSample, SystemSampler
from ._window import LatencyStats

__all__ = [
    "DEFAULT_PRICES",
    "DEFAULT_PROFILES",
    "DEFAULT_SERVICE",
    "OTHER",
    "UNMATCHED",
    "CollectorSnapshot",
    "CostPeriod",
    "DemoTraffic",
    "EngineScraper",
    "EngineStatus",
    "InvalidMetricError",
    "LatencyStats",
    "MetricsCollector",
    "MetricsMiddleware",
    "ModelPrice",
    "ModelProfile",
    "Publisher",
    "SystemSample",
    "SystemSampler",
    "load_prices",
    "run_demo",
]
