// The wire protocol's constants, generated from metricstream.protocol by
// `metricstream schema-js --output <this file>`. Do not edit: change the
// Python module and regenerate (a test fails when this copy is stale).

export const PROTOCOL_VERSION = 1;

/** Every close code the protocol names. */
export const CloseCode = Object.freeze({"NORMAL": 1000, "GOING_AWAY": 1001, "ABNORMAL": 1006, "INVALID_PAYLOAD": 1007, "POLICY_VIOLATION": 1008, "MESSAGE_TOO_BIG": 1009, "INTERNAL_ERROR": 1011, "SERVICE_RESTART": 1012, "BAD_TOKEN": 4001, "SLOW_CONSUMER": 4008, "TOO_MANY": 4029});

/** What a client does after a close. */
export const CloseAction = Object.freeze({"RETRY": "retry", "RESET_AND_RETRY": "reset_and_retry", "FATAL": "fatal"});

/** Codes whose action is not RETRY; any other code (or none) is retried with backoff. */
export const CLOSE_ACTIONS = Object.freeze({"1008": "fatal", "4001": "fatal", "4008": "reset_and_retry"});

/** Handshake statuses that mean the same as 4001 / 1008. */
export const FATAL_HTTP_STATUSES = Object.freeze([401, 403]);

/** Messages published to the stream: they carry a sequence. */
export const STREAM_TYPES = Object.freeze(["cost_update", "error_update", "kv_cache_update", "metrics_update", "model_update", "rate_limit_update", "request_update", "system_update"]);

/** Stream messages the models filter applies to. */
export const MODEL_SCOPED_TYPES = Object.freeze(["error_update", "model_update", "request_update"]);

/** Client defaults, in milliseconds where timed. */
export const PROTOCOL_DEFAULTS = Object.freeze({"reconnectInterval": 1000, "maxReconnectInterval": 30000, "reconnectDecay": 1.5, "reconnectJitter": 0.5, "heartbeatInterval": 30000, "heartbeatTimeout": 5000, "offlineQueueSize": 100});

/** Missing sequence numbers remembered to tell out-of-order from duplicate. */
export const MAX_TRACKED_HOLES = 4096;

/** Keys kept per keyed state table (models, rate-limit endpoints). */
export const MAX_KEYS = 1024;

/** The subprotocol the server selects; a browser offers it with its token. */
export const STREAM_SUBPROTOCOL = "metricstream";

/** Prefix of the subprotocol entry carrying the token (base64url, unpadded). */
export const TOKEN_SUBPROTOCOL_PREFIX = "metricstream.token.";
