"""The stream server: hub, replay log, ASGI endpoint, uvicorn runner.

- :class:`MetricsHub` numbers, logs and fans out stream messages and keeps
  the snapshot every connection starts from. It composes three parts:
  :class:`Stream` (numbering, replay log, snapshot), :class:`SubscriberRegistry`
  (the subscribers, each owning its :class:`Outbox`, and the fan-out) and a
  :class:`FrameWriter` per connection (:class:`DirectWriter` to uvicorn's
  transport, :class:`AsgiWriter` through ASGI ``send`` in a task).
- :class:`ReplayLog` / :class:`MemoryReplayLog` keep the recent stream so a
  reconnecting client resumes without loss.
- :func:`create_router` (include in any FastAPI app) and :func:`create_app`
  serve ``/metrics/stream``, ``/healthz`` and ``/metrics``.
- :class:`RedisBackend` makes the hub a node of a stream shared by several
  processes through Redis; :class:`RedisPublisher` publishes into it from
  any process (``pip install 'metricstream[redis]'``); :class:`RedisAggregator`
  publishes the fleet's exact aggregates from one node at a time, and
  :class:`RedisLeasedTask` runs any task on one node at a time.
- :class:`LLMExporter` exports the LLM figures of the published requests
  at ``/metrics`` (Prometheus).
- :class:`StreamServer` and :func:`uvicorn_config` run it on uvicorn;
  :func:`guarded_uvicorn_options` adds the bounds against a hostile network
  below the ASGI app (request size, handshake time, control frames, closes);
  ``metricstream serve`` does all of that from the command line.
"""

from ._app import HubCollector, create_app, create_router
from ._endpoint import StreamEndpoint
from ._hub import DEFAULT_MAX_BUFFER_BYTES, HubStats, MetricsHub
from ._limits import guarded_uvicorn_options
from ._prometheus import LLM_METRIC_NAMES, LLMExporter
from ._redis import RedisAggregator, RedisBackend, RedisLeasedTask, RedisPublisher
from ._registry import Outbox, Subscriber, SubscriberRegistry
from ._replay import LogEntry, MemoryReplayLog, ReplayLog, new_epoch
from ._settings import ServerSettings
from ._stream import Stream
from ._uvicorn import StreamServer, uvicorn_config
from ._wire import DirectWriter, EncodedFrame, text_frame
from ._writers import AsgiWriter, FrameWriter, WriteContext

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "LLM_METRIC_NAMES",
    "AsgiWriter",
    "DirectWriter",
    "EncodedFrame",
    "FrameWriter",
    "HubCollector",
    "HubStats",
    "LLMExporter",
    "LogEntry",
    "MemoryReplayLog",
    "MetricsHub",
    "Outbox",
    "RedisAggregator",
    "RedisBackend",
    "RedisLeasedTask",
    "RedisPublisher",
    "ReplayLog",
    "ServerSettings",
    "Stream",
    "StreamEndpoint",
    "StreamServer",
    "Subscriber",
    "SubscriberRegistry",
    "WriteContext",
    "create_app",
    "create_router",
    "guarded_uvicorn_options",
    "new_epoch",
    "text_frame",
    "uvicorn_config",
]
