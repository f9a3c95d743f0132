"""One stream shared by several processes, through Redis.

The stream's sequence, replay log, epoch and snapshot live in Redis, under
keys sharing one prefix:

- ``<prefix>:seq`` the newest sequence, ``<prefix>:epoch`` the epoch;
- ``<prefix>:log`` a Redis stream, one entry per message (fields ``s``
  sequence, ``e`` epoch, ``t`` type, ``m`` model, ``b`` the message encoded
  without its sequence), trimmed by count and by age;
- ``<prefix>:snap`` a hash of the newest state message per key, and
  ``<prefix>:recent:r`` / ``<prefix>:recent:e`` the latest request and error
  events: what a new node's ``init`` is built from;
- ``<prefix>:last`` the ID of the newest log entry, so that a node knows
  where to start reading after loading the snapshot;
- ``<prefix>:agg`` exact request totals (overall and ``<figure>|<model>``),
  summed per batch by the publisher and folded by the same script, and
  ``<prefix>:lease`` which node's aggregator publishes the state messages;
- ``<prefix>:conns`` each live node's connection count and until when it
  counts, summed by the aggregator into the fleet's ``active_connections``;
- ``<prefix>:lease:<name>`` which node runs the task ``name`` (the demo of
  ``serve --demo --redis``): :class:`RedisLeasedTask`;
- ``<prefix>:pub:<id>`` the last batch each publisher had applied, and the
  hole it opened.

One Lua script (:data:`_PUBLISH`) numbers and appends a batch and folds it
into the snapshot, atomically: whichever publisher wins a race, no two
messages share a sequence and none is skipped. A batch carries its
publisher's batch number, so that a batch re-sent after a lost reply is not
applied twice.

:class:`RedisPublisher` validates messages with the in-process stream's own
checks, buffers them (bounded; it counts what it drops) and sends them in
batches. :class:`RedisBackend` makes a :class:`MetricsHub` a *node* of the
shared stream: one reader per process loads the snapshot and then follows
the log with blocking ``XREAD`` in batches, handing each message to
:meth:`MetricsHub.ingest`, which fans it out locally; the hub's ``publish``
goes to the publisher.

When messages are lost (a publisher's buffer overflowed while Redis was
away) the next batch advances the sequence past them. A node that finds such
a hole, or entries trimmed before it read them, or a new epoch (Redis came
back empty), reloads the snapshot and log from Redis and closes its clients
with 1012: each reconnects and resumes where the log still covers it, or
gets a full snapshot. No loss is silent and no client mixes two epochs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..exceptions import ConfigError, ProtocolError, PublishError
from ..protocol import (
    MessageType,
    ModelUpdatePayload,
    WebSocketMessage,
    decode,
    encode,
    make_message,
)
from ._hub import DEFAULT_MAX_BUFFER_BYTES, MetricsHub
from ._replay import new_epoch
from ._stream import number

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..collector import MetricsCollector

__all__ = [
    "RedisAggregator",
    "RedisBackend",
    "RedisLeasedTask",
    "RedisPublisher",
    "RedisStreamKeys",
]

logger = logging.getLogger("metricstream.server.redis")

#: Default key prefix in Redis.
DEFAULT_PREFIX: Final = "metricstream"

# KEYS: seq, epoch, log, last, snap, recent:r, recent:e, pub:<id>, agg
# ARGV: candidate epoch, skip, max entries, max age (ms), recent requests,
#       recent errors, batch number, n, then n * (type, model, kind, field, body),
#       then the number of models and per model (name, requests, errors, prompt
#       tokens, completion tokens, latency ms, cost) summed over the batch
_PUBLISH: Final = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
end
local batchno = tonumber(ARGV[7])
local record = redis.call('GET', KEYS[8])
if record then
  local done, skipped = string.match(record, '(%d+) (%d+)')
  if tonumber(done) >= batchno then
    return {-1, epoch, tonumber(skipped)}
  end
end
local skip = tonumber(ARGV[2])
if skip > 0 then
  redis.call('INCRBY', KEYS[1], skip)
end
local n = tonumber(ARGV[8])
local first = -1
local id = false
for i = 0, n - 1 do
  local b = 9 + i * 5
  local seq = redis.call('INCR', KEYS[1])
  if first < 0 then first = seq end
  id = redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], '*',
    's', seq, 'e', epoch, 't', ARGV[b], 'm', ARGV[b + 1], 'b', ARGV[b + 4])
  local kind = ARGV[b + 2]
  if kind == 's' then
    redis.call('HSET', KEYS[5], ARGV[b + 3], ARGV[b + 4])
  elseif kind == 'r' or kind == 'e' then
    local key = KEYS[6]
    local keep = tonumber(ARGV[5])
    if kind == 'e' then
      key = KEYS[7]
      keep = tonumber(ARGV[6])
    end
    if keep > 0 then
      redis.call('RPUSH', key, ARGV[b + 4])
      redis.call('LTRIM', key, -keep, -1)
    end
  end
end
-- Exact totals across every publisher, summed per model by the publisher
-- over this batch and folded where the batch is numbered: no worker's
-- share is counted twice (batch numbers) or lost.
local a = 9 + n * 5
local models = tonumber(ARGV[a] or '0')
for j = 0, models - 1 do
  local c = a + 1 + j * 7
  local m = '|' .. ARGV[c]
  redis.call('HINCRBY', KEYS[9], 'requests', ARGV[c + 1])
  redis.call('HINCRBY', KEYS[9], 'tokens', ARGV[c + 3] + ARGV[c + 4])
  redis.call('HINCRBYFLOAT', KEYS[9], 'cost', ARGV[c + 6])
  redis.call('HINCRBY', KEYS[9], 'requests' .. m, ARGV[c + 1])
  redis.call('HINCRBY', KEYS[9], 'errors' .. m, ARGV[c + 2])
  redis.call('HINCRBY', KEYS[9], 'prompt' .. m, ARGV[c + 3])
  redis.call('HINCRBY', KEYS[9], 'completion' .. m, ARGV[c + 4])
  redis.call('HINCRBYFLOAT', KEYS[9], 'latency' .. m, ARGV[c + 5])
  redis.call('HINCRBYFLOAT', KEYS[9], 'cost' .. m, ARGV[c + 6])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[3], 'MINID', tostring(now - tonumber(ARGV[4])))
if id then
  redis.call('SET', KEYS[4], id)
end
redis.call('SET', KEYS[8], batchno .. ' ' .. skip, 'EX', 86400)
return {first, epoch, skip}
"""

# KEYS: seq, epoch, log, last, snap, recent:r, recent:e
# ARGV: candidate epoch, max entries
_LOAD: Final = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
end
local seq = redis.call('GET', KEYS[1]) or '0'
local last = redis.call('GET', KEYS[4]) or '0-0'
local entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])
return {epoch, seq, last, redis.call('HVALS', KEYS[5]),
  redis.call('LRANGE', KEYS[6], 0, -1), redis.call('LRANGE', KEYS[7], 0, -1), entries}
"""


# KEYS: lease, agg, conns; ARGV: holder id, ttl (ms), this node's connections
# Every node reports its connections, with a deadline, into one hash; the
# lease holder sums the reports still alive and forgets the rest, so that a
# dead node's connections stop counting within ``ttl``.
_LEASE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3] .. ' ' .. (now + ttl))
if redis.call('PTTL', KEYS[3]) < ttl then
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  return {0, {}, 0}
end
local total = 0
local nodes = redis.call('HGETALL', KEYS[3])
for i = 1, #nodes, 2 do
  local count, deadline = string.match(nodes[i + 1], '(%d+) (%d+)')
  if count and tonumber(deadline) >= now then
    total = total + tonumber(count)
  else
    redis.call('HDEL', KEYS[3], nodes[i])
  end
end
return {1, redis.call('HGETALL', KEYS[2]), total}
"""

# KEYS: lease; ARGV: holder id, ttl (ms)
_HOLD: Final = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease; ARGV: holder id
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


_Counts = tuple[str, bool, int, int, float, float]


class RedisStreamKeys(msgspec.Struct, frozen=True):
    """The Redis keys of one shared stream, all under ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    @property
    def common(self) -> list[str]:
        """seq, epoch, log, last, snap, recent requests, recent errors."""
        p = self.prefix
        return [
            f"{p}:seq",
            f"{p}:epoch",
            f"{p}:log",
            f"{p}:last",
            f"{p}:snap",
            f"{p}:recent:r",
            f"{p}:recent:e",
        ]

    @property
    def log(self) -> str:
        """The Redis stream holding the replay log."""
        return f"{self.prefix}:log"

    @property
    def epoch(self) -> str:
        """The epoch's key."""
        return f"{self.prefix}:epoch"

    @property
    def aggregates(self) -> str:
        """The hash of exact request totals, overall and per model."""
        return f"{self.prefix}:agg"

    @property
    def lease(self) -> str:
        """The aggregator's lease."""
        return f"{self.prefix}:lease"

    @property
    def connections(self) -> str:
        """The hash of each live node's connection count (``count deadline_ms``)."""
        return f"{self.prefix}:conns"

    def task_lease(self, name: str) -> str:
        """The lease of the task ``name`` that runs on one node at a time."""
        return f"{self.prefix}:lease:{name}"


# How each stream type is kept in the snapshot: its hash field (state) or
# its recent list (events).
_STATE_FIELD: Final[dict[MessageType, str | None]] = {
    MessageType.METRICS_UPDATE: "metrics",
    MessageType.MODEL_UPDATE: None,  # one per model
    MessageType.RATE_LIMIT_UPDATE: None,  # one per endpoint
    MessageType.COST_UPDATE: "costs",
    MessageType.KV_CACHE_UPDATE: "kv_cache",
    MessageType.SYSTEM_UPDATE: "system",
}


def _snapshot_slot(message: WebSocketMessage[Any]) -> tuple[str, str]:
    """(kind, field) of a validated stream message: ``s`` state, ``r``/``e`` events."""
    mtype = message.type
    if mtype is MessageType.REQUEST_UPDATE:
        return "r", ""
    if mtype is MessageType.ERROR_UPDATE:
        return "e", ""
    if mtype is MessageType.MODEL_UPDATE:
        return "s", "model:" + message.data.model
    if mtype is MessageType.RATE_LIMIT_UPDATE:
        return "s", "rate_limit:" + message.data.endpoint
    field = _STATE_FIELD[MessageType(mtype)]
    assert field is not None
    return "s", field


def _redis_client(url: str, *, socket_timeout: float | None, single: bool = False) -> Redis:
    try:
        from redis.asyncio import Redis
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ConfigError(
            "a Redis stream needs redis-py: pip install 'metricstream[redis]'"
        ) from exc
    try:
        return Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=2.0,
            single_connection_client=single,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from None


class RedisPublisher:
    """Publishes stream messages into the shared stream, from any process.

    :meth:`publish` is synchronous and never waits for Redis: it validates
    the message (the checks of :meth:`MetricsHub.publish`) and buffers it;
    a task sends the buffer in batches of up to ``batch`` messages, one
    script call each. While Redis is unreachable the buffer holds up to
    ``max_pending`` messages; beyond that new messages are dropped and
    counted (:attr:`dropped`), and the next batch sent advances the
    sequence past them, so that the loss reaches every client as a gap.
    ``timeout`` (seconds, positive) bounds each script call; one that
    times out is sent again under the same batch number, so it is never
    applied twice.

    ``types`` keeps only messages of those types (validated, the rest
    counted in :attr:`ignored`): a gateway worker's collector publishes
    with ``types=EVENT_TYPES``, so that its requests reach the stream and
    the fleet's totals come from the one aggregator
    (:class:`RedisAggregator`), not from each worker's share.

    Use as ``async with RedisPublisher(url) as publisher:`` or call
    :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        max_entries: int = 10_000,
        max_age: float = 300.0,
        recent_requests: int = 50,
        recent_errors: int = 20,
        max_pending: int = 10_000,
        batch: int = 256,
        retry_interval: float = 0.5,
        max_frame_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        timeout: float = 2.0,
        types: Iterable[str] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be at least 1, got {max_entries}")
        if not max_age > 0:
            raise ConfigError(f"max_age must be positive, got {max_age}")
        if max_pending < 1 or batch < 1:
            raise ConfigError("max_pending and batch must be at least 1")
        if recent_requests < 0 or recent_errors < 0:
            raise ConfigError("recent_requests and recent_errors must not be negative")
        if not timeout > 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        # The script call is on every message's way to the clients, so it
        # goes the shortest way through redis-py: one connection of its own
        # (one task sends, one call at a time), not a pool to check it out
        # of and back into on each call; and no socket timeout, which
        # redis-py enforces on each write with ``asyncio.wait_for`` (on
        # Python 3.11 a new task, so the batch would leave a loop iteration
        # later). Each call is bounded by ``asyncio.timeout`` instead; a
        # cancelled call disconnects, so no reply is read by another.
        self._client = _redis_client(url, socket_timeout=None, single=True)
        self._timeout = timeout
        self._keys = RedisStreamKeys(prefix)
        self._types = None if types is None else frozenset(MessageType(t) for t in types)
        self._script = self._client.register_script(_PUBLISH)
        self._id = uuid.uuid4().hex
        self._pub_key = f"{prefix}:pub:{self._id}"
        self._limits = [
            str(max_entries),
            str(int(max_age * 1000)),
            str(recent_requests),
            str(recent_errors),
        ]
        self._max_pending = max_pending
        self._batch = batch
        self._retry = retry_interval
        self._max_frame = max_frame_bytes
        # Per message: its script arguments, and what it adds to the totals
        # (model, error, prompt, completion, latency, cost) for a request.
        self._pending: deque[tuple[list[str | bytes], _Counts | None]] = deque()
        self._batch_no = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        # Messages dropped since the last batch that reached Redis.
        self._skip = 0
        #: Messages dropped because the buffer was full.
        self.dropped = 0
        #: Messages Redis has numbered.
        self.sent = 0
        #: Valid messages left out because their type is not in ``types``.
        self.ignored = 0
        #: Why the last send failed (``None`` after a success).
        self.error: str | None = None
        #: Called whenever :attr:`error` changes.
        self.on_error_change: Callable[[], None] | None = None

    @property
    def pending(self) -> int:
        """Messages buffered, not yet in Redis."""
        return len(self._pending)

    def publish(self, message: WebSocketMessage[Any]) -> None:
        """Validate ``message`` and buffer it for the shared stream.

        Raises :class:`~metricstream.exceptions.PublishError` for a message
        the stream would refuse. Drops it (counted) when the buffer is full.
        """
        checked, _ = number(message, 0, self._max_frame)
        self._enqueue(checked)

    def _enqueue(self, checked: WebSocketMessage[Any]) -> None:
        """Buffer a message that has passed :func:`number`'s checks."""
        if self._types is not None and checked.type not in self._types:
            self.ignored += 1
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            self._skip += 1
            return
        kind, field = _snapshot_slot(checked)
        model = getattr(checked.data, "model", None)
        body = encode(msgspec.structs.replace(checked, sequence=None))
        counts: _Counts | None = None
        data = checked.data
        if kind == "r" and data.status != "in_progress":
            counts = (
                data.model,
                data.status == "error",
                data.prompt_tokens,
                data.completion_tokens,
                data.latency_ms,
                data.cost,
            )
        self._pending.append(([checked.type, model or "", kind, field, body], counts))
        self._idle.clear()
        self._wake.set()

    async def start(self) -> None:
        """Start the sending task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Wait until everything buffered so far has reached Redis (bound it
        with ``asyncio.timeout``: it waits for as long as Redis is away)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop sending (what is still buffered is dropped) and disconnect."""
        task = self._task
        self._task = None
        if task is not None:
            await _cancel_and_wait(task, "the publisher")
        await self._client.aclose()

    async def __aenter__(self) -> RedisPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.flush()
        await self.close()

    def _error_changed(self) -> None:
        callback = self.on_error_change
        if callback is not None:
            callback()

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        pending = self._pending
        while True:
            if not pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            count = min(len(pending), self._batch)
            batch = [pending[i] for i in range(count)]
            self._batch_no += 1
            args: list[str | bytes | int] = [new_epoch(), self._skip, *self._limits]
            args += [self._batch_no, count]
            totals: dict[str, list[float]] = {}
            for item, counts in batch:
                args += item
                if counts is not None:
                    sums = totals.setdefault(counts[0], [0, 0, 0, 0, 0.0, 0.0])
                    _, error, prompt, completion, latency, cost = counts
                    sums[0] += 1
                    sums[1] += error
                    sums[2] += prompt
                    sums[3] += completion
                    sums[4] += latency
                    sums[5] += cost
            args.append(len(totals))
            for model, sums in totals.items():
                args.append(model)
                args += [int(v) for v in sums[:4]]
                args += [repr(float(sums[4])), repr(float(sums[5]))]
            while True:
                try:
                    async with asyncio.timeout(self._timeout):
                        reply: Any = await self._script(
                            keys=[*self._keys.common, self._pub_key, self._keys.aggregates],
                            args=args,
                        )
                except (RedisError, OSError) as exc:
                    # (A timeout is a TimeoutError, an OSError.)
                    # Re-sent under the same batch number: if the first try
                    # was applied and only its reply was lost, the script
                    # sees the number and applies nothing.
                    if self.error is None:
                        self.error = _why(exc, self._timeout)
                        logger.warning("cannot publish to Redis: %s", self.error)
                        self._error_changed()
                    await asyncio.sleep(self._retry)
                    # Messages dropped meanwhile join this batch's skip.
                    args[1] = self._skip
                    continue
                break
            if self.error is not None:
                logger.info("publishing to Redis again")
                self.error = None
                self._error_changed()
            # The skip Redis applied: an earlier try of this batch may have
            # been applied with fewer drops than counted since; the rest go
            # with the next batch.
            self._skip -= int(reply[2])
            for _ in range(count):
                pending.popleft()
            self.sent += count


class RedisBackend:
    """Makes a :class:`MetricsHub` a node of a stream shared through Redis.

    ``await backend.start(hub)`` loads the stream's snapshot and recent log
    from Redis into the hub, starts the node's one reader (blocking
    ``XREAD`` of up to ``read_batch`` entries, ``block`` seconds at most)
    and routes the hub's :meth:`~MetricsHub.publish` to a
    :class:`RedisPublisher`. ``await backend.stop()`` undoes it. While
    Redis cannot be reached the hub keeps its clients (heartbeats go on)
    and ``hub.degraded`` says why; the reader retries every
    ``retry_interval`` seconds. ``max_entries``/``max_age`` bound the log
    in Redis and the hub's local copy alike.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_entries: int = 10_000,
        max_age: float = 300.0,
        max_pending: int = 10_000,
        read_batch: int = 512,
        block: float = 1.0,
        retry_interval: float = 0.5,
    ) -> None:
        if read_batch < 1:
            raise ConfigError(f"read_batch must be at least 1, got {read_batch}")
        if not block > 0 or not retry_interval > 0:
            raise ConfigError("block and retry_interval must be positive")
        self.url = url
        self._keys = RedisStreamKeys(prefix)
        self._max_entries = max_entries
        self._max_age = max_age
        self._max_pending = max_pending
        self._read_batch = read_batch
        self._block = block
        self._retry = retry_interval
        # For the epoch, the snapshot and the aggregator's lease: a call
        # unanswered for as long as a blocked XREAD may be (a stopped Redis)
        # has failed.
        self._client = _redis_client(url, socket_timeout=block + 1.0)
        # The blocking XREAD has a connection of its own, out of the pool
        # (which the aggregator's calls share meanwhile): its reply goes
        # straight to the hub, with no pool check-in on the way.
        self._reader = _redis_client(url, socket_timeout=None, single=True)
        self._load = self._client.register_script(_LOAD)
        self._hub: MetricsHub | None = None
        self._task: asyncio.Task[None] | None = None
        self._last = b"0-0"
        self._loaded = asyncio.Event()
        self.publisher: RedisPublisher | None = None
        #: Log entries Redis held that could not be decoded (skipped, logged).
        self.bad_entries = 0
        # Why the reader cannot follow the stream now.
        self._read_error: str | None = None
        # Each listener, and whether it also takes the log loaded at start.
        self._listeners: list[tuple[Callable[[WebSocketMessage[Any]], None], bool]] = []
        self._first_load = True
        self._started = False

    async def start(self, hub: MetricsHub) -> None:
        """Load the shared stream into ``hub`` and follow it.

        Raises the connection error when Redis cannot be reached at start:
        a node that never saw the stream has nothing to serve.
        """
        if self._hub is not None:
            raise ConfigError("this backend is already started")
        log = hub.log
        max_entries = getattr(log, "max_entries", self._max_entries)
        self._hub = hub
        self.publisher = RedisPublisher(
            self.url,
            prefix=self._keys.prefix,
            max_entries=self._max_entries,
            max_age=self._max_age,
            recent_requests=hub.recent_limits[0],
            recent_errors=hub.recent_limits[1],
            max_pending=self._max_pending,
            retry_interval=self._retry,
            max_frame_bytes=hub.max_buffer_bytes,
        )
        try:
            await self._reload(min(max_entries, self._max_entries))
        except BaseException:
            self._hub = None
            await self.publisher.close()
            self.publisher = None
            raise
        self.publisher.on_error_change = self._update_health
        await self.publisher.start()
        hub.set_forward(self._forward)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self._started = True

    async def stop(self) -> None:
        """Stop following the stream; the hub publishes in-process again."""
        hub = self._hub
        if hub is None:
            return
        self._started = False
        hub.set_forward(None)
        task = self._task
        self._task = None
        if task is not None:
            await _cancel_and_wait(task, "the stream reader")
        if self.publisher is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.publisher.flush()
            await self.publisher.close()
        await self._reader.aclose()
        await self._client.aclose()
        self._hub = None

    @property
    def hub(self) -> MetricsHub | None:
        """The hub this backend feeds (``None`` before :meth:`start`)."""
        return self._hub

    @property
    def started(self) -> bool:
        """Whether the hub publishes into the shared stream now (between
        :meth:`start` and :meth:`stop`): what is published before or after
        would only be numbered locally."""
        return self._started

    @property
    def client(self) -> Redis:
        """The node's Redis client (the reader's connection pool)."""
        return self._client

    @property
    def keys(self) -> RedisStreamKeys:
        """The stream's keys in Redis."""
        return self._keys

    def add_listener(
        self, listener: Callable[[WebSocketMessage[Any]], None], *, history: bool = True
    ) -> None:
        """Call ``listener(message)`` once for every message this node takes
        from the stream (after it reached the hub): how a
        :class:`RedisAggregator` and an :class:`LLMExporter` see every request.

        With ``history`` the listener also gets, at the first load, the log
        loaded from Redis (messages from before the node started). After a
        reload (a hole, entries trimmed before they were read, a new epoch)
        it gets the reloaded log's messages this node had not taken yet, and
        none twice.
        """
        self._listeners.append((listener, history))

    def _notify(self, message: WebSocketMessage[Any], *, loaded: bool = False) -> None:
        for listener, history in self._listeners:
            if loaded and not history:
                continue
            try:
                listener(message)
            except Exception:
                logger.exception("a stream listener failed on %s", message.type)

    def _update_health(self) -> None:
        hub = self._hub
        if hub is None:
            return
        publisher = self.publisher
        if self._read_error is not None:
            hub.degraded = f"redis unreachable: {self._read_error}"
        elif publisher is not None and publisher.error is not None:
            hub.degraded = f"redis publish failing: {publisher.error}"
        else:
            hub.degraded = None

    def _forward(self, message: WebSocketMessage[Any]) -> None:
        publisher = self.publisher
        assert publisher is not None
        # The hub's publish() has just run the same checks.
        publisher._enqueue(message)

    async def _reload(self, max_entries: int) -> None:
        """Load epoch, sequence, snapshot and the newest log entries, atomically."""
        hub = self._hub
        assert hub is not None
        reply = await self._load(keys=self._keys.common, args=[new_epoch(), max_entries])
        epoch = reply[0].decode()
        sequence = int(reply[1])
        self._last = reply[2]
        snapshot = [m for m in map(self._decode, [*reply[3], *reply[4], *reply[5]]) if m]
        # Newest first: keep the contiguous run that ends at ``sequence``.
        replay: list[WebSocketMessage[Any]] = []
        expect = sequence
        for _id, fields in reply[6]:
            message = self._entry(_pairs(fields))
            if message is None or message.sequence != expect:
                break
            replay.append(message)
            expect -= 1
        replay.reverse()
        # What this node had taken before: the reloaded log's messages past
        # it (or all of them, in a new epoch) are new to its listeners.
        taken_epoch, taken = hub.epoch, hub.sequence
        hub.restart(epoch, sequence, snapshot, replay)
        self._loaded.set()
        if self._first_load:
            self._first_load = False
            for message in replay:
                self._notify(message, loaded=True)
        elif self._listeners:
            for message in replay:
                if epoch != taken_epoch or (message.sequence or 0) > taken:
                    self._notify(message)

    def _decode(self, body: bytes) -> WebSocketMessage[Any] | None:
        try:
            return decode(body)
        except ProtocolError as exc:
            self.bad_entries += 1
            logger.warning("skipping an undecodable entry in Redis: %s", exc)
            return None

    def _entry(self, fields: dict[bytes, bytes]) -> WebSocketMessage[Any] | None:
        try:
            seq = int(fields[b"s"])
            body = fields[b"b"]
        except (KeyError, ValueError):
            self.bad_entries += 1
            logger.warning("skipping a malformed log entry in Redis: %r", sorted(fields))
            return None
        message = self._decode(body)
        if message is None:
            return None
        return msgspec.structs.replace(message, sequence=seq)

    async def _read_loop(self) -> None:
        from redis.exceptions import RedisError

        hub = self._hub
        assert hub is not None
        client = self._client
        key = self._keys.log
        block_ms = max(1, int(self._block * 1000))
        failed = False
        # Set until a reload succeeds: a hole or a new epoch seen while Redis
        # then went away must still be reloaded when it is back.
        reload = False
        while True:
            try:
                if failed:
                    # Back: the same stream, or a wiped one (a new epoch)?
                    epoch: Any = await client.get(self._keys.epoch)
                    if epoch is None or epoch.decode() != hub.epoch:
                        logger.warning("the shared stream started afresh: reloading")
                        reload = True
                    failed = False
                if reload:
                    await self._reload(self._max_entries)
                    reload = False
                # A blocked XREAD answers within ``block``: a silent socket
                # past that (a stopped Redis) is a failure, noticed within a
                # second more.
                async with asyncio.timeout(self._block + 1.0):
                    reply: Any = await self._reader.xread(
                        {key: self._last}, count=self._read_batch, block=block_ms
                    )
            except (RedisError, OSError) as exc:
                self._read_error = _why(exc, self._block + 1.0)
                if not failed:
                    logger.warning("lost the shared stream: %s", self._read_error)
                failed = True
                self._update_health()
                await asyncio.sleep(self._retry)
                continue
            if self._read_error is not None:
                logger.info("following the shared stream again")
                self._read_error = None
                self._update_health()
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._last = entry_id
                    pairs = _pairs(fields)
                    if pairs.get(b"e", b"").decode() not in ("", hub.epoch):
                        logger.warning("the shared stream has a new epoch: reloading")
                        reload = True
                        break
                    message = self._entry(pairs)
                    if message is None:
                        continue
                    seq = message.sequence
                    if seq is not None and seq > hub.sequence + 1:
                        # Entries this node never saw (trimmed before it read
                        # them, or dropped by a publisher): its snapshot may
                        # lack state, so it takes Redis's, which has it all.
                        logger.warning(
                            "the shared stream skipped from %d to %d: reloading", hub.sequence, seq
                        )
                        reload = True
                        break
                    try:
                        fresh = hub.ingest(message, decoded=True)
                    except PublishError as exc:
                        self.bad_entries += 1
                        logger.warning("skipping an invalid message from Redis: %s", exc)
                        continue
                    if fresh and self._listeners:
                        self._notify(message)
                if reload:
                    break


async def _cancel_and_wait(task: asyncio.Task[Any], what: str) -> None:
    """Cancel ``task`` and wait until it has ended (a failure is logged as
    ``what`` failing).

    Cancelled again for as long as it runs on: on Python 3.11, redis-py's
    ``asyncio.wait_for`` around a socket write (any client with a socket
    timeout) can swallow a cancellation that lands just as the write
    completes, and a loop that lost its cancellation would never end.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("%s failed", what, exc_info=error)


async def _close_if_stopped(backend: RedisBackend) -> None:
    """Close the connection a last command reopened on a stopped backend's
    client (``serve`` stops the backend before its aggregator): nothing else
    would. A running backend's client is left alone: its reader uses it."""
    if not backend.started:
        with contextlib.suppress(Exception):
            await backend.client.aclose()


def _holder_id() -> str:
    """A lease holder's name: its host and process (who holds a lease can be
    read in Redis) and a random part (two holders in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _why(exc: BaseException, timeout: float) -> str:
    """What went wrong with a Redis call, for the log and ``/healthz``."""
    if isinstance(exc, TimeoutError) and not str(exc):
        # asyncio.timeout's own: it says nothing.
        return f"no answer from Redis within {timeout:g} s"
    return str(exc) or type(exc).__name__


def _pairs(fields: Any) -> dict[bytes, bytes]:
    """A log entry's fields as a dict (redis-py gives a dict or a flat list)."""
    if isinstance(fields, dict):
        return fields
    flat: Sequence[bytes] = fields
    return dict(zip(flat[::2], flat[1::2], strict=False))


class _Events:
    """The aggregator's collector publishes here: nothing goes out (the
    requests it records are already in the stream)."""

    def publish(self, message: WebSocketMessage[Any], /) -> None:
        """Drop ``message``."""


def _round(value: float, places: int) -> float:
    return round(value, places)


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return min(100.0, max(0.0, round(100.0 * part / whole, 3)))


class RedisAggregator:
    """The fleet's one source of state messages, elected by a lease in Redis.

    Every gateway worker publishes its requests as events (a
    :class:`RedisPublisher` with ``types=EVENT_TYPES``); every node's
    aggregator follows them all from the stream (``backend``'s listener)
    into a :class:`~metricstream.collector.MetricsCollector` of its own,
    which keeps the rolling window: rates, averages and percentiles over
    every request of the fleet. Totals since the start, overall and per
    model, are exact counters the publish script folds in Redis itself.
    One node at a time holds the lease (``lease`` seconds, renewed every
    ``interval``) and publishes ``metrics_update``, the ``model_update``
    of each model, ``cost_update`` and its host's ``system_update`` when
    they change; when it dies, another takes over within ``lease``
    seconds and publishes in full.

    ``active_connections`` is the fleet's: every node's aggregator reports
    its own count (``connections``, by default its hub's
    :attr:`~MetricsHub.connection_count`) into Redis every ``interval``,
    valid for ``lease`` seconds, and the lease holder sums the reports
    still valid. A node that stops hands its count back at once; a dead
    node's count stops counting within ``lease`` seconds.
    """

    def __init__(
        self,
        backend: RedisBackend,
        *,
        interval: float = 1.0,
        window: float = 60.0,
        lease: float | None = None,
        system_stats: bool = True,
        connections: Callable[[], int] | None = None,
    ) -> None:
        if not interval > 0 or not window > 0:
            raise ConfigError("interval and window must be positive")
        lease = 3 * interval if lease is None else lease
        if not lease > interval:
            raise ConfigError(f"lease ({lease} s) must be longer than interval ({interval} s)")
        self._backend = backend
        self._interval = interval
        self._window = window
        self._lease_ms = int(lease * 1000)
        self._system_stats = system_stats
        self._connections = connections
        self._id = _holder_id()
        self._collector: MetricsCollector | None = None
        self._task: asyncio.Task[None] | None = None
        self._published: dict[tuple[str, str], object] = {}
        #: Whether this node holds the lease (publishes the state messages).
        self.leader = False
        #: Events the collector refused (invalid values; logged).
        self.rejected = 0
        #: The fleet's connections, as last summed while holding the lease.
        self.fleet_connections = 0

    async def start(self) -> None:
        """Start following the requests and competing for the lease.

        The backend must be started first (its hub publishes what this
        aggregates); call this before it, though, to see the replayed log.
        """
        from ..collector import MetricsCollector

        if self._collector is not None:
            return
        # active_connections comes from Redis (every node's report), not
        # from the collector.
        self._collector = MetricsCollector(
            _Events(),
            interval=self._interval,
            window=self._window,
            system_stats=self._system_stats,
        )
        self._backend.add_listener(self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop, take this node's connections out of the fleet's count and
        hand the lease back, so that another node takes over at once."""
        task = self._task
        self._task = None
        if task is not None:
            await _cancel_and_wait(task, "the aggregator")
        from redis.exceptions import RedisError

        client = self._backend.client
        with contextlib.suppress(RedisError, OSError):
            await client.hdel(self._backend.keys.connections, self._id)
        if self.leader:
            self.leader = False
            with contextlib.suppress(RedisError, OSError):
                await client.eval(_RELEASE, 1, self._backend.keys.lease, self._id)
        await _close_if_stopped(self._backend)

    def _own_connections(self) -> int:
        if self._connections is not None:
            try:
                return max(0, int(self._connections()))
            except Exception:
                logger.exception("the connections callback failed")
                return 0
        hub = self._backend.hub
        return 0 if hub is None else hub.connection_count

    async def __aenter__(self) -> RedisAggregator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_message(self, message: WebSocketMessage[Any]) -> None:
        from ..exceptions import InvalidMetricError

        collector = self._collector
        if collector is None or message.type is not MessageType.REQUEST_UPDATE:
            return
        d = message.data
        try:
            collector.record_request(
                d.model,
                d.prompt_tokens,
                d.completion_tokens,
                d.latency_ms,
                streaming=d.streaming,
                status=d.status,
                error_message=d.error_message,
                cost=d.cost,
                user_id=d.user_id,
                organization_id=d.organization_id,
                ttft_ms=d.time_to_first_token_ms,
                request_id=d.id,
                service=d.endpoint or None,
                itl_ms=d.inter_token_latency_ms,
                finish_reason=d.finish_reason,
                endpoint=d.endpoint,
            )
        except InvalidMetricError as exc:
            self.rejected += 1
            logger.warning("not aggregating request %r: %s", d.id, exc)

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        keys = self._backend.keys
        client = self._backend.client
        lease = client.register_script(_LEASE)
        collector = self._collector
        assert collector is not None
        while True:
            try:
                reply: Any = await lease(
                    keys=[keys.lease, keys.aggregates, keys.connections],
                    args=[self._id, self._lease_ms, self._own_connections()],
                )
            except (RedisError, OSError) as exc:
                # Without Redis nothing published would go anywhere anyway;
                # whoever holds the lease when it is back publishes in full.
                logger.debug("aggregator lease: %s", exc)
                reply = (0, [], 0)
            leader = bool(int(reply[0]))
            if leader and not self.leader:
                logger.info("this node now publishes the fleet's aggregates")
                self._published.clear()
            self.leader = leader
            if leader:
                self.fleet_connections = int(reply[2])
                if self._system_stats:
                    try:
                        await asyncio.to_thread(collector.sample_system)
                    except Exception:
                        logger.exception("reading system statistics failed")
                try:
                    self._publish(_pairs(reply[1]))
                except Exception:
                    logger.exception("publishing the fleet's aggregates failed")
            await asyncio.sleep(self._interval)

    def _publish(self, totals: dict[bytes, bytes]) -> None:
        hub = self._backend.hub
        collector = self._collector
        # Before the backend forwards to Redis, a message would be numbered
        # by this node alone.
        if hub is None or collector is None or not self._backend.started:
            return
        snap = collector.snapshot()

        def count(name: str) -> int:
            return int(totals.get(name.encode(), b"0"))

        def amount(name: str) -> float:
            return float(totals.get(name.encode(), b"0"))

        messages: list[tuple[MessageType, str, Any, dict[str, Any] | None]] = []
        metrics = msgspec.structs.replace(
            snap.metrics,
            total_requests=count("requests"),
            total_tokens=count("tokens"),
            total_cost=_round(amount("cost"), 8),
            active_connections=self.fleet_connections,
        )
        messages.append((MessageType.METRICS_UPDATE, "", metrics, snap.metrics_metadata()))
        models = sorted({k.decode().split("|", 1)[1] for k in totals if k.startswith(b"requests|")})
        for model in models:
            requests = count("requests|" + model)
            errors = count("errors|" + model)
            prompt = count("prompt|" + model)
            completion = count("completion|" + model)
            latency = amount("latency|" + model)
            local = snap.models.get(model)
            payload = ModelUpdatePayload(
                model=model,
                request_count=requests,
                total_prompt_tokens=prompt,
                total_completion_tokens=completion,
                total_tokens=prompt + completion,
                total_latency_ms=_round(latency, 3),
                error_count=errors,
                avg_latency_ms=_round(latency / requests, 3) if requests else 0.0,
                error_rate=_percent(errors, requests),
                total_cost=_round(amount("cost|" + model), 8),
                tokens_per_second=local.tokens_per_second if local is not None else 0.0,
                ttft_p50_ms=local.ttft_p50_ms if local is not None else None,
                ttft_p95_ms=local.ttft_p95_ms if local is not None else None,
                ttft_p99_ms=local.ttft_p99_ms if local is not None else None,
                itl_p50_ms=local.itl_p50_ms if local is not None else None,
                itl_p95_ms=local.itl_p95_ms if local is not None else None,
                itl_p99_ms=local.itl_p99_ms if local is not None else None,
            )
            messages.append((MessageType.MODEL_UPDATE, model, payload, None))
        messages.append((MessageType.COST_UPDATE, "", snap.costs, None))
        if snap.system is not None:
            messages.append((MessageType.SYSTEM_UPDATE, "", snap.system, None))
        for mtype, key, payload, metadata in messages:
            slot = (mtype.value, key)
            if self._published.get(slot) == payload:
                continue
            hub.publish(make_message(mtype, payload, metadata=metadata))
            self._published[slot] = payload


class RedisLeasedTask:
    """Runs ``factory()`` on one node of the fleet at a time, elected by a lease.

    Every node runs one with the same ``name``; the one holding the lease
    ``<prefix>:lease:<name>`` in Redis (``lease`` seconds, renewed every
    ``interval``; its value names the holder's host and process) runs the
    task, the others wait. When the holder dies, the lease runs out and
    another node starts the task within ``lease`` seconds (plus an
    ``interval``). A holder that cannot renew the lease (Redis away)
    cancels its task once the lease it last renewed has run out, so that
    two nodes never run it at once. :meth:`close` cancels the task and
    hands the lease back, for another node to take at once. ``serve --demo
    --redis`` runs the demo traffic this way.

    The task starts only once ``backend`` forwards to Redis
    (:attr:`RedisBackend.started`). A task that ends (or fails: logged) is
    started again at the next renewal while the lease is held.
    """

    def __init__(
        self,
        backend: RedisBackend,
        name: str,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        interval: float = 1.0,
        lease: float | None = None,
    ) -> None:
        if not name:
            raise ConfigError("a leased task needs a name")
        if not interval > 0:
            raise ConfigError("interval must be positive")
        lease = 3 * interval if lease is None else lease
        if not lease > interval:
            raise ConfigError(f"lease ({lease} s) must be longer than interval ({interval} s)")
        self._backend = backend
        self._name = name
        self._factory = factory
        self._interval = interval
        self._lease = lease
        #: This holder's name in Redis (host, process id, a random part).
        self.id = _holder_id()
        self._task: asyncio.Task[None] | None = None
        self._work: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        #: Whether this node holds the lease (runs the task) now.
        self.holding = False
        #: Times this node started the task.
        self.starts = 0
        #: Times this node tried to take or renew the lease.
        self.attempts = 0

    @property
    def key(self) -> str:
        """The lease's key in Redis."""
        return self._backend.keys.task_lease(self._name)

    async def start(self) -> None:
        """Start competing for the lease (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Cancel the task and hand the lease back."""
        task = self._task
        self._task = None
        if task is not None:
            await _cancel_and_wait(task, "the lease loop")
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await self._stop_work()
        if self.holding:
            self.holding = False
            from redis.exceptions import RedisError

            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._backend.client.eval(_RELEASE, 1, self.key, self.id)
            await _close_if_stopped(self._backend)

    async def __aenter__(self) -> RedisLeasedTask:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _lease_ran_out(self) -> None:
        # At the very moment, not at the next renewal: by then another node
        # may hold the lease and run the task.
        self._expiry = None
        self.holding = False
        work = self._work
        if work is not None and not work.done():
            logger.warning("the lease of %s ran out unrenewed: stopping it", self._name)
            work.cancel()

    async def _stop_work(self) -> None:
        work = self._work
        self._work = None
        if work is None:
            return
        await _cancel_and_wait(work, f"leased task {self._name}")

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        hold = self._backend.client.register_script(_HOLD)
        loop = asyncio.get_running_loop()
        ttl_ms = int(self._lease * 1000)
        # Until when this node surely holds the lease: measured from before
        # the renewal was sent, so never later than Redis's own expiry.
        valid_until = 0.0
        while True:
            if self._backend.started:
                self.attempts += 1
                sent = loop.time()
                try:
                    # The expiry timer stops the task on time whatever this
                    # call does; the bound only keeps the loop going.
                    async with asyncio.timeout(self._lease):
                        held: Any = await hold(keys=[self.key], args=[self.id, ttl_ms])
                    valid_until = sent + self._lease if int(held) else 0.0
                except (RedisError, OSError, TimeoutError) as exc:
                    logger.debug("lease %s: %s", self.key, exc)
                else:
                    if self._expiry is not None:
                        self._expiry.cancel()
                        self._expiry = None
                    if valid_until:
                        self._expiry = loop.call_at(valid_until, self._lease_ran_out)
            else:
                valid_until = 0.0
            holding = loop.time() < valid_until
            if holding and (self._work is None or self._work.done()):
                if self._work is not None:
                    await self._stop_work()
                if not self.holding:
                    logger.info("this node now runs %s", self._name)
                self._work = loop.create_task(self._factory())
                self.starts += 1
            elif not holding and self._work is not None:
                logger.info("this node no longer runs %s (lease lost)", self._name)
                await self._stop_work()
            self.holding = holding
            await asyncio.sleep(self._interval)
