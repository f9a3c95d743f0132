// The page's query parameters as the stream client's options. Every default
// is the protocol's own (./protocol.js), so the page and the Python client
// time their heartbeats alike unless the page's URL says otherwise.

import { PROTOCOL_DEFAULTS } from "./protocol.js";

/** Bounds, in seconds, of the timings a page URL may set. */
export const SECONDS_BOUNDS = Object.freeze({ min: 0.1, max: 300 });

// A query parameter in seconds, as milliseconds: `fallbackMs` when absent or
// not a number, clamped to SECONDS_BOUNDS otherwise.
function milliseconds(params, name, fallbackMs) {
  const raw = params.get(name);
  const value = raw === null ? NaN : Number(raw);
  if (!Number.isFinite(value)) return fallbackMs;
  return Math.min(Math.max(value, SECONDS_BOUNDS.min), SECONDS_BOUNDS.max) * 1000;
}

/**
 * The StreamClient options a page query (a URLSearchParams) asks for:
 * `token`, `heartbeat` and `heartbeat_timeout` (seconds), `batch=0`, `debug=1`.
 */
export function pageOptions(params) {
  return {
    token: params.get("token") || null,
    heartbeatInterval: milliseconds(params, "heartbeat", PROTOCOL_DEFAULTS.heartbeatInterval),
    heartbeatTimeout: milliseconds(
      params,
      "heartbeat_timeout",
      PROTOCOL_DEFAULTS.heartbeatTimeout,
    ),
    batch: params.get("batch") !== "0",
    debug: params.get("debug") === "1",
  };
}
