// The dashboard's state: the seed's useRealtimeMetrics, as a plain reducer
// over the stream's messages, plus the short history the charts draw.
//
// Everything here comes from the network and is treated as untrusted: each
// payload is checked for the shape the views need before it is kept.

import { MAX_KEYS } from "./protocol.js";

const STATE_TYPES = new Set([
  "metrics_update",
  "model_update",
  "system_update",
  "rate_limit_update",
  "cost_update",
  "kv_cache_update",
]);

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function str(value) {
  return typeof value === "string" ? value : null;
}

/** The series drawn by the charts; one sample per metrics_update. */
export const SERIES = Object.freeze([
  "requests_per_second",
  "tokens_per_second",
  "avg_latency_ms",
  "latency_p50_ms",
  "latency_p90_ms",
  "latency_p99_ms",
  "ttft_p50_ms",
  "itl_p50_ms",
  "error_rate",
]);

export class MetricsStore {
  constructor({ maxRequests = 50, maxErrors = 20, historySize = 180 } = {}) {
    this.maxRequests = maxRequests;
    this.maxErrors = maxErrors;
    this.historySize = historySize;
    this.version = 0;
    // Errors carry no id: each gets a serial here, so views can key them.
    this._errorKeys = new WeakMap();
    this._errorSerial = 0;
    this._listeners = new Set();
    this.epoch = null;
    this._clearState();
    this._clearHistory();
  }

  _clearState() {
    this.metrics = null;
    this.metricsMeta = {};
    this.models = new Map();
    this.requests = []; // newest first
    this.errors = []; // newest first
    this.system = null;
    this.rateLimits = new Map();
    this.costs = null;
    this.kvCache = null;
    this.lastUpdate = null;
    this.previousSystemAt = undefined;
    this.networkRate = null;
  }

  _clearHistory() {
    this.history = { t: [] };
    for (const name of SERIES) this.history[name] = [];
  }

  /** Call `listener(store)` after every change; returns an unsubscribe function. */
  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  _changed() {
    this.version += 1;
    for (const listener of [...this._listeners]) listener(this);
  }

  /** Apply an `init`: a resumed one keeps everything, a snapshot replaces it. */
  applyInit(message, kept) {
    if (kept) return;
    const metadata = isObject(message.metadata) ? message.metadata : {};
    const epoch = str(metadata.epoch);
    // A new epoch is another stream: its history must not be drawn as a
    // continuation of the old one.
    if (epoch !== this.epoch) this._clearHistory();
    this.epoch = epoch;
    this._clearState();
    const data = isObject(message.data) ? message.data : {};
    const at = num(message.timestamp) ?? Date.now();
    if (isObject(data.metrics)) this._metrics(data.metrics, {}, at);
    if (isObject(data.models)) {
      for (const value of Object.values(data.models)) this._model(value);
    }
    if (isObject(data.rate_limits)) {
      for (const value of Object.values(data.rate_limits)) this._rateLimit(value);
    }
    if (isObject(data.costs)) this.costs = data.costs;
    if (isObject(data.kv_cache)) this.kvCache = data.kv_cache;
    if (isObject(data.system)) this._system(data.system, at);
    if (Array.isArray(data.recent_requests)) {
      for (const value of data.recent_requests) this._request(value);
    }
    if (Array.isArray(data.recent_errors)) {
      for (const value of data.recent_errors) this._error(value);
    }
    this.lastUpdate = at;
    this._changed();
  }

  /** Forget everything (the client is about to fetch a fresh snapshot). */
  reset() {
    this.epoch = null;
    this._clearState();
    this._clearHistory();
    this._changed();
  }

  /** Apply one stream message the client accepted. */
  apply(message) {
    const data = message.data;
    if (!isObject(data)) return;
    const at = num(message.timestamp) ?? Date.now();
    const metadata = isObject(message.metadata) ? message.metadata : {};
    let changed = true;
    switch (message.type) {
      case "metrics_update":
        this._metrics(data, metadata, at);
        break;
      case "model_update":
        changed = this._model(data);
        break;
      case "request_update":
        changed = this._request(data);
        break;
      case "error_update":
        changed = this._error(data);
        break;
      case "system_update":
        this._system(data, at);
        break;
      case "rate_limit_update":
        changed = this._rateLimit(data);
        break;
      case "cost_update":
        this.costs = data;
        break;
      case "kv_cache_update":
        this.kvCache = data;
        break;
      default:
        // Unknown types are skipped: forward compatibility.
        changed = STATE_TYPES.has(message.type);
    }
    if (changed) {
      this.lastUpdate = at;
      this._changed();
    }
  }

  _metrics(data, metadata, at) {
    this.metrics = data;
    this.metricsMeta = metadata;
    const h = this.history;
    h.t.push(at);
    for (const name of SERIES) {
      h[name].push(num(data[name]) ?? num(metadata[name]));
    }
    if (h.t.length > this.historySize) {
      const extra = h.t.length - this.historySize;
      h.t.splice(0, extra);
      for (const name of SERIES) h[name].splice(0, extra);
    }
  }

  // Keyed state is bounded too: a stream inventing names must not grow the
  // page without limit. Known keys always update.
  _model(data) {
    if (!isObject(data) || str(data.model) === null) return false;
    if (!this.models.has(data.model) && this.models.size >= MAX_KEYS) return false;
    this.models.set(data.model, data);
    return true;
  }

  _rateLimit(data) {
    if (!isObject(data) || str(data.endpoint) === null) return false;
    if (!this.rateLimits.has(data.endpoint) && this.rateLimits.size >= MAX_KEYS) return false;
    this.rateLimits.set(data.endpoint, data);
    return true;
  }

  // Requests are keyed by id: an `in_progress` request recorded again with
  // its final status replaces its row instead of adding a second one.
  _request(data) {
    if (!isObject(data) || str(data.id) === null) return false;
    const index = this.requests.findIndex((row) => row.id === data.id);
    if (index >= 0) {
      this.requests[index] = data;
    } else {
      this.requests.unshift(data);
      if (this.requests.length > this.maxRequests) this.requests.length = this.maxRequests;
    }
    return true;
  }

  _error(data) {
    if (!isObject(data) || str(data.error_type) === null) return false;
    this._errorKeys.set(data, (this._errorSerial += 1));
    this.errors.unshift(data);
    if (this.errors.length > this.maxErrors) this.errors.length = this.maxErrors;
    return true;
  }

  // network_*_bytes are cumulative host counters: the rate comes from two
  // readings.
  _system(data, at) {
    const previous = this.system;
    const previousAt = this.previousSystemAt;
    this.system = data;
    this.previousSystemAt = at;
    if (previous && previousAt !== undefined && at > previousAt) {
      const seconds = (at - previousAt) / 1000;
      const inDelta = num(data.network_in_bytes) - num(previous.network_in_bytes);
      const outDelta = num(data.network_out_bytes) - num(previous.network_out_bytes);
      if (Number.isFinite(inDelta) && Number.isFinite(outDelta) && inDelta >= 0 && outDelta >= 0) {
        this.networkRate = { in: inDelta / seconds, out: outDelta / seconds };
      }
    }
  }

  /** A stable key of one error of `errors`. */
  errorKey(error) {
    return String(this._errorKeys.get(error) ?? "");
  }

  /** The seed's useSystemHealth rule. */
  get healthy() {
    const s = this.system;
    if (!s) return null;
    const gpu = num(s.gpu_usage);
    return (
      (num(s.cpu_usage) ?? 0) < 90 &&
      (num(s.memory_usage) ?? 0) < 90 &&
      (gpu === null || gpu < 95) &&
      (num(s.queue_size) ?? 0) < 1000
    );
  }
}
