// The page's options under Node's test runner:
// `node --test tests/dashboard/page_options.test.mjs` (test_web_constants.py runs it).

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const staticJs =
  process.env.METRICSTREAM_STATIC_JS ??
  join(here, "..", "..", "src", "metricstream", "dashboard", "web", "static", "js");
const { pageOptions } = await import(pathToFileURL(join(staticJs, "options.js")).href);
const { PROTOCOL_DEFAULTS } = await import(pathToFileURL(join(staticJs, "protocol.js")).href);
const { DEFAULTS } = await import(pathToFileURL(join(staticJs, "client.js")).href);

test("a page without parameters times its heartbeats by the protocol's defaults", () => {
  const options = pageOptions(new URLSearchParams(""));
  assert.equal(options.heartbeatInterval, PROTOCOL_DEFAULTS.heartbeatInterval);
  assert.equal(options.heartbeatTimeout, PROTOCOL_DEFAULTS.heartbeatTimeout);
  assert.equal(options.token, null);
  assert.equal(options.batch, true);
  assert.equal(options.debug, false);
});

test("every option the page sets that the protocol defines defaults to the protocol's value", () => {
  const options = pageOptions(new URLSearchParams(""));
  for (const [name, value] of Object.entries(options)) {
    if (name in PROTOCOL_DEFAULTS) assert.equal(value, PROTOCOL_DEFAULTS[name], name);
  }
  // The client itself starts from the same defaults.
  for (const [name, value] of Object.entries(PROTOCOL_DEFAULTS)) {
    assert.equal(DEFAULTS[name], value, name);
  }
});

test("the page's query overrides the defaults, in seconds, within bounds", () => {
  const options = pageOptions(
    new URLSearchParams("heartbeat=0.3&heartbeat_timeout=1.5&batch=0&debug=1&token=t"),
  );
  assert.equal(options.heartbeatInterval, 300);
  assert.equal(options.heartbeatTimeout, 1500);
  assert.equal(options.batch, false);
  assert.equal(options.debug, true);
  assert.equal(options.token, "t");
  const clamped = pageOptions(new URLSearchParams("heartbeat=0&heartbeat_timeout=9999"));
  assert.equal(clamped.heartbeatInterval, 100);
  assert.equal(clamped.heartbeatTimeout, 300000);
  const junk = pageOptions(new URLSearchParams("heartbeat=abc"));
  assert.equal(junk.heartbeatInterval, PROTOCOL_DEFAULTS.heartbeatInterval);
});
