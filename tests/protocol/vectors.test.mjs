// The shared protocol vectors (vectors.json), run on the browser page's own
// ES modules under Node's test runner: `node --test tests/protocol/vectors.test.mjs`.
// tests/protocol/test_vectors.py runs this file so that `make test` does.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const staticJs =
  process.env.METRICSTREAM_STATIC_JS ??
  join(here, "..", "..", "src", "metricstream", "dashboard", "web", "static", "js");
const {
  SequenceTracker,
  StreamClient,
  closeAction,
  decodeFrame,
  filterAccepts,
  subscribeMessage,
} = await import(pathToFileURL(join(staticJs, "client.js")).href);
const { STREAM_SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX } = await import(
  pathToFileURL(join(staticJs, "protocol.js")).href
);
const vectors = JSON.parse(readFileSync(join(here, "vectors.json"), "utf8"));

const named = (kind, index, item) => `${kind}: ${item.name ?? JSON.stringify(item)} #${index}`;

vectors.sequence.forEach((item, i) => {
  test(named("sequence", i, item), () => {
    const tracker = new SequenceTracker();
    tracker.start(item.start.epoch, item.start.sequence, item.start.resumed);
    assert.deepEqual(
      item.observe.map((s) => tracker.observe(s)),
      item.verdicts,
    );
  });
});

vectors.resume_start.forEach((item, i) => {
  test(named("resume_start", i, item), () => {
    const tracker = new SequenceTracker();
    tracker.start(item.first.epoch, item.first.sequence, item.first.resumed);
    assert.equal(tracker.start(item.then.epoch, item.then.sequence, item.then.resumed), item.kept);
    assert.equal(tracker.last, item.last);
  });
});

vectors.close.forEach((item, i) => {
  test(named("close", i, item), () => {
    assert.equal(closeAction(item.code), item.action);
  });
});

vectors.filter.forEach((item, i) => {
  test(named("filter", i, item), () => {
    const filter = { types: item.types, models: item.models };
    assert.equal(filterAccepts(filter, item.type, item.model), item.accepts);
  });
});

vectors.subscribe.forEach((item, i) => {
  test(named("subscribe", i, item), () => {
    const message = subscribeMessage(item.types, item.models);
    assert.deepEqual({ type: message.type, data: message.data ?? null }, item.message);
  });
});

vectors.batch.forEach((item, i) => {
  test(named("batch", i, item), () => {
    const { messages, invalid } = decodeFrame(item.frame);
    assert.deepEqual(
      messages.map((m) => m.sequence),
      item.sequences,
    );
    assert.equal(invalid, item.invalid);
  });
});

vectors.resume_url.forEach((item, i) => {
  test(named("resume_url", i, item), () => {
    const client = new StreamClient(item.base, item.options);
    if (item.position !== null) client.tracker.start(item.position.epoch, item.position.last, false);
    const url = new URL(client.streamUrl());
    // A browser cannot set headers, and a token in the URL ends up in logs:
    // the page sends it as a subprotocol entry, never in the query. Every
    // other parameter is the vector's.
    const { token, ...expected } = item.query;
    assert.deepEqual(Object.fromEntries(url.searchParams), expected);
    const protocols = client.protocols();
    if (item.options.token) {
      assert.equal(token, item.options.token);
      // Node's own base64url encoder (unpadded) as the independent check.
      const entry = TOKEN_SUBPROTOCOL_PREFIX + Buffer.from(token).toString("base64url");
      assert.deepEqual(protocols, [STREAM_SUBPROTOCOL, entry]);
    } else {
      assert.deepEqual(protocols, []);
    }
  });
});
