// The browser's stream client: the same behaviour as metricstream's Python
// client (docs/protocol.md), without any dependency.
//
// - reconnects with the seed's backoff, min(interval * decay^(n-1), max),
//   times a random factor in [1 - jitter, 1] applied after the cap;
// - sends `heartbeat` on connect and every interval, measures latency from
//   `pong`, counts any inbound frame as liveness and abandons a connection
//   that stays silent for the heartbeat timeout after a heartbeat;
// - resumes with `since`/`epoch`, drops duplicate and late sequences,
//   answers a gap on an unfiltered stream with one resume, and tells its
//   listeners to replace their state on a full snapshot or a new epoch;
// - queues sends while offline (bounded, the oldest dropped first);
// - passes the auth token as a `metricstream.token.<base64url>` entry of
//   the WebSocket subprotocols, beside `metricstream` (which the server
//   selects): a browser cannot set headers on a WebSocket, and a token in
//   the URL would end up in access logs; asks for `batch=1` array frames;
// - follows the close-code table: 4001/1008 stop with an error, 4008
//   reconnects at once (once in a row), anything else backs off.
//
// Every protocol constant (close codes and their actions, defaults, bounds)
// comes from ./protocol.js, generated from the Python package; the pure
// functions below run the shared test vectors (tests/protocol/vectors.json)
// under `node --test`, as the Python session does.

import {
  CLOSE_ACTIONS,
  CloseAction,
  CloseCode,
  MAX_TRACKED_HOLES,
  MODEL_SCOPED_TYPES,
  PROTOCOL_DEFAULTS,
  STREAM_SUBPROTOCOL,
  TOKEN_SUBPROTOCOL_PREFIX,
} from "./protocol.js";

export const ConnectionState = Object.freeze({
  CONNECTING: "CONNECTING",
  CONNECTED: "CONNECTED",
  DISCONNECTED: "DISCONNECTED",
  RECONNECTING: "RECONNECTING",
  ERROR: "ERROR",
  CLOSED: "CLOSED",
});

export const DEFAULTS = Object.freeze({
  ...PROTOCOL_DEFAULTS,
  maxReconnectAttempts: Infinity,
  openTimeout: 10000,
  batch: true,
  resume: true,
  token: null,
  types: null,
  models: null,
  random: Math.random,
  debug: false,
});

/** `text` as UTF-8, base64url without padding (a subprotocol is an HTTP token). */
export function base64url(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
const TICK_MS = 200;

// Timers run on the monotonic clock: a wall-clock jump (NTP, a user changing
// the time) must neither fake nor hide a silent connection.
const monotonic = () => performance.now();

/** The delay in ms before reconnect attempt `attempt` (1-based). */
export function backoffDelay(attempt, config = DEFAULTS, random = Math.random) {
  const n = Math.max(1, attempt);
  const capped = Math.min(
    config.reconnectInterval * Math.pow(config.reconnectDecay, n - 1),
    config.maxReconnectInterval,
  );
  // Jitter after the cap: clients that lost the same server stay spread out
  // even once all of them wait the maximum.
  return capped * (1 - config.reconnectJitter * random());
}

/** What to do after a close with `code` (null: no close frame): a CloseAction value. */
export function closeAction(code) {
  if (code === null || code === undefined) return CloseAction.RETRY;
  return CLOSE_ACTIONS[String(code)] ?? CloseAction.RETRY;
}

/**
 * Whether a stream message of `type` about `model` passes `filter`
 * ({types, models}; null or empty: no filter on that dimension). The
 * protocol's one filter rule (metricstream.protocol.Filter).
 */
export function filterAccepts(filter, type, model) {
  const types = filter.types && filter.types.length ? filter.types : null;
  const models = filter.models && filter.models.length ? filter.models : null;
  if (types !== null && !types.includes(type)) return false;
  if (models !== null && model !== null && model !== undefined) {
    if (MODEL_SCOPED_TYPES.includes(type)) return models.includes(model);
  }
  return true;
}

/**
 * The message that asks the server for a filter ({types, models}; null:
 * no filter on that dimension): `unsubscribe` for none at all, else
 * `subscribe` with both, as given.
 */
export function subscribeMessage(types, models) {
  if ((types === null || types === undefined) && (models === null || models === undefined)) {
    return { type: "unsubscribe" };
  }
  return { type: "subscribe", data: { types: types ?? null, models: models ?? null } };
}

/**
 * One text frame as its messages: {messages, invalid}. A batch (array) is
 * decoded leniently: a bad item is skipped and counted, the others kept.
 */
export function decodeFrame(text) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { messages: [], invalid: 1 };
  }
  const items = Array.isArray(parsed) ? parsed : [parsed];
  const messages = [];
  let invalid = 0;
  for (const message of items) {
    const bad =
      !isObject(message) ||
      typeof message.type !== "string" ||
      (message.data !== undefined && message.data !== null && typeof message.data !== "object") ||
      (message.sequence !== undefined &&
        message.sequence !== null &&
        !(Number.isInteger(message.sequence) && message.sequence >= 0));
    if (bad) invalid += 1;
    else messages.push(message);
  }
  return { messages, invalid };
}

/** Normalise a wire timestamp to ms: values below 1e11 are seconds. */
export function normaliseTimestamp(value) {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) return null;
  return value < 1e11 ? Math.round(value * 1000) : value;
}

/** Judges stream sequence numbers, per epoch (the Python SequenceTracker). */
export class SequenceTracker {
  constructor() {
    this.epoch = null;
    this.last = null;
    this.holes = new Set();
    this.duplicates = 0;
    this.outOfOrder = 0;
    this.gaps = 0;
    this.missed = 0;
  }

  /** Apply an init; returns whether the position (and the state) is kept. */
  start(epoch, sequence, resumed) {
    if (resumed && epoch === this.epoch && this.last !== null) return true;
    this.epoch = epoch;
    this.last = Number.isInteger(sequence) ? sequence : null;
    this.holes.clear();
    return false;
  }

  reset() {
    this.epoch = null;
    this.last = null;
    this.holes.clear();
  }

  /** "new", "gap" (both applied), "duplicate" or "out_of_order" (dropped). */
  observe(sequence) {
    const last = this.last;
    if (last === null || sequence === last + 1) {
      this.last = sequence;
      return "new";
    }
    if (sequence > last) {
      const missing = sequence - last - 1;
      if (missing + this.holes.size <= MAX_TRACKED_HOLES) {
        for (let s = last + 1; s < sequence; s += 1) this.holes.add(s);
      }
      this.last = sequence;
      this.gaps += 1;
      this.missed += missing;
      return "gap";
    }
    if (this.holes.delete(sequence)) {
      this.outOfOrder += 1;
      return "out_of_order";
    }
    this.duplicates += 1;
    return "duplicate";
  }
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A resilient WebSocket client of /metrics/stream. */
export class StreamClient {
  /**
   * @param {string} url ws:// or wss:// URL of the stream
   * @param {object} options overrides of DEFAULTS
   */
  constructor(url, options = {}) {
    this.url = url;
    this.config = { ...DEFAULTS, ...options };
    this.tracker = new SequenceTracker();
    this.info = {
      state: ConnectionState.DISCONNECTED,
      connectedAt: null,
      disconnectedAt: null,
      reconnectAttempts: 0,
      lastError: null,
      latency: null,
      messageCount: 0,
      bytesReceived: 0,
      bytesSent: 0,
      invalidFrames: 0,
      resumes: 0,
      snapshots: 0,
      droppedSends: 0,
      nextRetryAt: null,
      lastCloseCode: null,
    };
    this._listeners = new Map();
    this._conn = null;
    this._queue = [];
    this._retryTimer = null;
    this._closing = false;
    // A gap answered by a resume from this sequence: if the same gap shows
    // up again, the server cannot fill it and it is accepted.
    this._gapResyncFrom = null;
    // A reset-and-retry close was answered at once since the last connection.
    this._immediateUsed = false;
    this._encoder = new TextEncoder();
    this._decoder = new TextDecoder();
  }

  /** Listen to "state", "init", "message", "server_error"; returns an unsubscribe function. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event).delete(listener);
  }

  _emit(event, payload) {
    const listeners = this._listeners.get(event);
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(payload);
      } catch (error) {
        // A faulty listener must not take the connection down.
        console.error("metricstream: listener failed", error);
      }
    }
  }

  get state() {
    return this.info.state;
  }

  get filtered() {
    return Boolean(
      (this.config.types && this.config.types.length) ||
        (this.config.models && this.config.models.length),
    );
  }

  /** Start connecting (a no-op while a connection is open or pending). */
  connect() {
    this._closing = false;
    if (this._conn || this._retryTimer !== null) return;
    if (this.info.state === ConnectionState.ERROR) this.info.reconnectAttempts = 0;
    this._open();
  }

  /** Close for good (code 1000); no reconnect follows. */
  close() {
    this._closing = true;
    this._cancelRetry();
    const conn = this._conn;
    if (conn) {
      this._detach(conn);
      try {
        conn.ws.close(CloseCode.NORMAL, "client closing");
      } catch {
        // already closing
      }
    }
    this.info.disconnectedAt = Date.now();
    this._setState(ConnectionState.CLOSED);
  }

  /**
   * Send a message object; queued while offline (bounded, oldest dropped).
   * Returns true when it left at once.
   */
  send(message) {
    const text = JSON.stringify(message);
    const conn = this._conn;
    if (conn && conn.established && conn.ws.readyState === WebSocket.OPEN) {
      this._write(conn, text);
      return true;
    }
    if (this._queue.length >= this.config.offlineQueueSize) {
      this._queue.shift();
      this.info.droppedSends += 1;
    }
    this._queue.push(text);
    this._emit("state", this.info);
    return false;
  }

  get queued() {
    return this._queue.length;
  }

  /** Replace the server-side filter (`null` means everything). */
  subscribe(types = null, models = null) {
    this.config.types = types;
    this.config.models = models;
    return this.send(subscribeMessage(types, models));
  }

  streamUrl() {
    const url = new URL(this.url);
    const params = url.searchParams;
    for (const name of ["since", "epoch"]) params.delete(name);
    if (this.config.resume && this.tracker.epoch !== null && this.tracker.last !== null) {
      params.set("since", String(this.tracker.last));
      params.set("epoch", this.tracker.epoch);
    }
    // The token travels as a subprotocol (see protocols()), never in the URL.
    params.delete("token");
    if (this.config.batch) params.set("batch", "1");
    if (this.config.types && this.config.types.length)
      params.set("types", this.config.types.join(","));
    if (this.config.models && this.config.models.length)
      params.set("models", this.config.models.join(","));
    return url.toString();
  }

  /** The subprotocols offered: the token's entry, when there is a token. */
  protocols() {
    if (!this.config.token) return [];
    return [STREAM_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + base64url(this.config.token)];
  }

  _setState(state) {
    this.info.state = state;
    this._emit("state", this.info);
  }

  _log(...args) {
    if (this.config.debug) console.debug("metricstream:", ...args);
  }

  _cancelRetry() {
    if (this._retryTimer !== null) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
    this.info.nextRetryAt = null;
  }

  _open() {
    this._cancelRetry();
    const reconnecting = this.info.reconnectAttempts > 0 || this.info.connectedAt !== null;
    this._setState(reconnecting ? ConnectionState.RECONNECTING : ConnectionState.CONNECTING);
    let ws;
    try {
      ws = new WebSocket(this.streamUrl(), this.protocols());
    } catch (error) {
      // Only a malformed URL throws here: retrying cannot help.
      this._fatal(`cannot open the stream: ${error.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    const now = monotonic();
    const conn = {
      ws,
      established: false,
      resync: false,
      endReason: null,
      openedAt: now,
      nextBeat: 0,
      probeSince: null,
      ticker: null,
    };
    this._conn = conn;
    ws.onopen = () => {
      if (this._conn !== conn) return;
      conn.nextBeat = monotonic();
      // The first frame (init) must arrive within the heartbeat timeout.
      conn.probeSince = monotonic();
      this._tick(conn);
    };
    ws.onmessage = (event) => this._onFrame(conn, event.data);
    ws.onclose = (event) => this._onClose(conn, event.code, event.reason);
    ws.onerror = () => {
      // A close event always follows; the reason is reported there.
    };
    conn.ticker = setInterval(() => this._tick(conn), TICK_MS);
  }

  _tick(conn) {
    if (this._conn !== conn) return;
    const now = monotonic();
    const { heartbeatInterval, heartbeatTimeout, openTimeout } = this.config;
    if (conn.ws.readyState === WebSocket.CONNECTING) {
      if (now - conn.openedAt >= openTimeout) {
        this._abandon(conn, `no handshake within ${openTimeout / 1000} s`);
      }
      return;
    }
    if (conn.ws.readyState !== WebSocket.OPEN) return;
    if (conn.probeSince !== null && now - conn.probeSince >= heartbeatTimeout) {
      this._abandon(conn, `no frame for ${heartbeatTimeout / 1000} s after a heartbeat`);
      return;
    }
    if (now >= conn.nextBeat) {
      // client_time is wall-clock ms, as the protocol says; the server echoes it.
      const wall = Date.now();
      this._write(
        conn,
        JSON.stringify({ type: "heartbeat", timestamp: wall, data: { client_time: wall } }),
      );
      if (conn.probeSince === null) conn.probeSince = now;
      conn.nextBeat = now + heartbeatInterval;
    }
  }

  _write(conn, text) {
    try {
      conn.ws.send(text);
      this.info.bytesSent += this._encoder.encode(text).length;
    } catch (error) {
      this._log("send failed", error);
    }
  }

  _detach(conn) {
    clearInterval(conn.ticker);
    conn.ws.onopen = null;
    conn.ws.onmessage = null;
    conn.ws.onclose = null;
    conn.ws.onerror = null;
    if (this._conn === conn) this._conn = null;
  }

  // A dead peer never answers a closing handshake: stop listening to the
  // socket at once and carry on as if it had closed.
  _abandon(conn, reason) {
    this._log("abandoning the connection:", reason);
    this._detach(conn);
    try {
      conn.ws.close(4000, "abandoned");
    } catch {
      // nothing to close
    }
    this._lost(conn, null, reason, false);
  }

  _onFrame(conn, data) {
    if (this._conn !== conn) return;
    let text = data;
    if (typeof data !== "string") {
      this.info.bytesReceived += data.byteLength;
      text = this._decoder.decode(data);
    } else {
      this.info.bytesReceived += this._encoder.encode(data).length;
    }
    // Any frame proves the peer alive.
    conn.probeSince = null;
    // One bad message does not take its batch down: it is skipped (and a
    // gap in the sequence shows it).
    const { messages, invalid } = decodeFrame(text);
    for (let i = 0; i < invalid; i += 1) this._invalid("invalid message skipped");
    for (const message of messages) {
      this.info.messageCount += 1;
      this._handle(conn, message);
      if (conn.resync || this._conn !== conn) break;
    }
    if (conn.resync && this._conn === conn) {
      try {
        conn.ws.close(CloseCode.NORMAL, "resync");
      } catch {
        // closing anyway
      }
    }
  }

  _invalid(reason) {
    this.info.invalidFrames += 1;
    this._log("invalid frame skipped:", reason);
  }

  _established(conn) {
    conn.established = true;
    const wasReconnect = this.info.connectedAt !== null;
    this.info.connectedAt = Date.now();
    this.info.reconnectAttempts = 0;
    this._immediateUsed = false;
    this.info.lastError = null;
    this._setState(ConnectionState.CONNECTED);
    this._emit(wasReconnect ? "reconnected" : "connected", this.info);
    // Queued sends go out once the connection proved itself, oldest first.
    const queued = this._queue.splice(0);
    for (const text of queued) this._write(conn, text);
  }

  _handle(conn, message) {
    const timestamp = normaliseTimestamp(message.timestamp);
    if (timestamp !== null) message.timestamp = timestamp;
    const data = isObject(message.data) ? message.data : {};
    switch (message.type) {
      case "init":
        this._init(conn, message);
        return;
      case "pong": {
        const clientTime = normaliseTimestamp(data.client_time);
        if (clientTime !== null) this.info.latency = Math.max(Date.now() - clientTime, 0);
        if (!conn.established) this._established(conn);
        this._emit("state", this.info);
        return;
      }
      case "heartbeat":
        if (!conn.established) this._established(conn);
        return;
      case "error": {
        // The FakeAI dialect puts the text at the top level.
        const text =
          typeof data.message === "string"
            ? data.message
            : typeof message.message === "string"
              ? message.message
              : "unknown error";
        this.info.lastError = `server: ${text}`;
        this._emit("server_error", message);
        this._emit("state", this.info);
        return;
      }
      case "subscribed":
        this._emit("subscribed", message);
        return;
      default:
        break;
    }
    if (!conn.established) this._established(conn);
    const sequence = message.sequence;
    if (sequence !== undefined && sequence !== null && !this._accept(conn, sequence)) return;
    // A server that ignores the filter (or one widened meanwhile) must not
    // show the page what it did not ask for.
    if (!filterAccepts(this.config, message.type, data.model)) return;
    this._emit("message", message);
  }

  _init(conn, message) {
    const metadata = isObject(message.metadata) ? message.metadata : {};
    const epoch = typeof metadata.epoch === "string" ? metadata.epoch : null;
    const resumed = metadata.resumed === true;
    const kept = this.tracker.start(epoch, message.sequence, resumed);
    if (resumed && !kept) {
      // The server offers to continue a stream this client holds no
      // position in (a new epoch): the only safe state is a fresh snapshot.
      this.tracker.reset();
      this._emit("reset", message);
      conn.resync = true;
      conn.endReason = "resync: resumed a different epoch";
      return;
    }
    if (!conn.established) this._established(conn);
    if (kept) this.info.resumes += 1;
    else this.info.snapshots += 1;
    this._emit("init", { message, kept });
    this._emit("state", this.info);
  }

  _accept(conn, sequence) {
    const last = this.tracker.last;
    if (!this.filtered && last !== null && sequence > last + 1) {
      if (this._gapResyncFrom !== last) {
        // Resume from the last applied message: the replay fills the hole.
        this._gapResyncFrom = last;
        conn.resync = true;
        conn.endReason = `resync: sequence gap after ${last}`;
        return false;
      }
      this._log(`sequence gap after ${last} persists after a resync; accepting it`);
    }
    const verdict = this.tracker.observe(sequence);
    if (verdict === "duplicate" || verdict === "out_of_order") {
      this._log(`dropped ${verdict} message`, sequence);
      this._emit("state", this.info);
      return false;
    }
    return true;
  }

  _onClose(conn, code, reason) {
    if (this._conn !== conn) return;
    this._detach(conn);
    const why = conn.endReason || `closed with ${code}${reason ? ` (${reason})` : ""}`;
    this._lost(conn, code, why, conn.resync);
  }

  _fatal(message) {
    this.info.lastError = message;
    this.info.disconnectedAt = Date.now();
    this._setState(ConnectionState.ERROR);
  }

  _lost(conn, code, why, resync) {
    this.info.lastCloseCode = code;
    if (conn.established) this.info.disconnectedAt = Date.now();
    if (this._closing) {
      this._setState(ConnectionState.CLOSED);
      return;
    }
    let action = resync ? CloseAction.RESET_AND_RETRY : closeAction(code);
    if (action === CloseAction.RESET_AND_RETRY) {
      // At once only once in a row: a server that keeps closing us at once
      // gets the backoff like anyone else.
      if (this._immediateUsed) action = CloseAction.RETRY;
      this._immediateUsed = true;
    }
    if (action === CloseAction.FATAL) {
      this._fatal(
        code === CloseCode.BAD_TOKEN
          ? "the server rejected the token (4001): open the page with ?token=<token>"
          : `the server refused the connection (${code}${why ? `: ${why}` : ""})`,
      );
      return;
    }
    this.info.lastError = why;
    if (action === CloseAction.RESET_AND_RETRY) {
      this._setState(ConnectionState.RECONNECTING);
      // Immediately, but from a fresh task so a close storm cannot recurse.
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        this._open();
      }, 0);
      return;
    }
    const attempt = this.info.reconnectAttempts + 1;
    if (attempt > this.config.maxReconnectAttempts) {
      this._fatal(`gave up after ${this.info.reconnectAttempts} reconnect attempts`);
      this._emit("max_attempts", this.info);
      return;
    }
    this.info.reconnectAttempts = attempt;
    const delay = backoffDelay(attempt, this.config, this.config.random);
    this.info.nextRetryAt = Date.now() + delay;
    this._setState(ConnectionState.RECONNECTING);
    this._emit("reconnecting", attempt);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }
}
