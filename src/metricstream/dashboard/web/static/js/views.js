// The dashboard's views: plain functions and small classes that write the
// store's state into the DOM. Stream data only ever reaches the page through
// textContent, attributes set by name, and canvas text: never as markup.

import { ConnectionState } from "./client.js";
import * as fmt from "./format.js";

/** Create an element with an optional class and text. */
export function el(tag, className = "", text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

function setText(node, value) {
  if (node.textContent !== value) node.textContent = value;
}

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** Keep `container`'s children in the order of `items`, one per key. */
function syncChildren(container, items, key, build, update) {
  const existing = new Map();
  for (const child of container.children) existing.set(child.dataset.key, child);
  const wanted = [];
  for (const item of items) {
    const k = key(item);
    let node = existing.get(k);
    if (!node) {
      node = build(item);
      node.dataset.key = k;
    }
    existing.delete(k);
    update(node, item);
    wanted.push(node);
  }
  for (const stale of existing.values()) stale.remove();
  wanted.forEach((node, index) => {
    if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
  });
}

// ------------------------------------------------------------ connection

const STATE_LABELS = {
  [ConnectionState.CONNECTED]: "Connected",
  [ConnectionState.CONNECTING]: "Connecting…",
  [ConnectionState.RECONNECTING]: "Reconnecting",
  [ConnectionState.ERROR]: "Error",
  [ConnectionState.DISCONNECTED]: "Disconnected",
  [ConnectionState.CLOSED]: "Disconnected",
};

/** The seed's ConnectionStatus: coloured dot, state, attempts and latency. */
export class ConnectionStatus {
  constructor(root) {
    this.root = root;
    root.classList.add("conn-status");
    this.dot = el("span", "dot");
    this.dot.setAttribute("aria-hidden", "true");
    this.label = el("span", "conn-label");
    // Only the state is announced to screen readers, not every latency tick.
    this.label.setAttribute("role", "status");
    this.label.setAttribute("aria-live", "polite");
    this.detail = el("span", "conn-detail");
    root.replaceChildren(this.dot, this.label, this.detail);
  }

  render(info) {
    const state = info.state;
    this.root.dataset.state = state.toLowerCase();
    let label = STATE_LABELS[state] || state;
    if (state === ConnectionState.RECONNECTING && info.reconnectAttempts > 0) {
      label = `Reconnecting (attempt ${info.reconnectAttempts})`;
    }
    setText(this.label, label);
    let detail = "";
    if (state === ConnectionState.CONNECTED && finite(info.latency)) {
      detail = `${Math.round(info.latency)} ms`;
    } else if (state === ConnectionState.RECONNECTING && finite(info.nextRetryAt)) {
      const wait = Math.max(0, (info.nextRetryAt - Date.now()) / 1000);
      detail = wait > 0.05 ? `retry in ${wait.toFixed(1)} s` : "";
    }
    setText(this.detail, detail);
    this.detail.hidden = detail === "";
  }
}

/** The seed's ConnectionBadge: just the dot. */
export class ConnectionBadge {
  constructor(root) {
    this.root = root;
    root.classList.add("conn-badge");
  }

  render(info) {
    this.root.dataset.state = info.state.toLowerCase();
    this.root.title = STATE_LABELS[info.state] || info.state;
    this.root.setAttribute("aria-label", `connection: ${this.root.title}`);
  }
}

/** The seed's ConnectionStats: the connection's figures as a list. */
export class ConnectionStats {
  constructor(root) {
    this.root = root;
    this.values = new Map();
    const rows = [
      ["state", "State"],
      ["uptime", "Connected for"],
      ["latency", "Latency"],
      ["attempts", "Reconnect attempts"],
      ["messages", "Messages"],
      ["received", "Received"],
      ["sent", "Sent"],
      ["epoch", "Epoch"],
      ["sequence", "Last sequence"],
      ["resumes", "Resumes / snapshots"],
      ["duplicates", "Duplicates dropped"],
      ["gaps", "Gaps / out of order"],
      ["invalid", "Invalid frames"],
      ["queued", "Queued sends"],
      ["error", "Last error"],
    ];
    const list = el("dl", "kv");
    for (const [key, label] of rows) {
      const value = el("dd", "", "—");
      value.dataset.stat = key;
      list.append(el("dt", "", label), value);
      this.values.set(key, value);
    }
    root.replaceChildren(list);
  }

  render(client) {
    const info = client.info;
    const t = client.tracker;
    const set = (key, value) => setText(this.values.get(key), value);
    set("state", STATE_LABELS[info.state] || info.state);
    set(
      "uptime",
      info.state === ConnectionState.CONNECTED && info.connectedAt
        ? fmt.duration((Date.now() - info.connectedAt) / 1000)
        : "—",
    );
    set("latency", finite(info.latency) ? `${Math.round(info.latency)} ms` : "—");
    set("attempts", fmt.integer(info.reconnectAttempts));
    set("messages", fmt.integer(info.messageCount));
    set("received", fmt.bytes(info.bytesReceived));
    set("sent", fmt.bytes(info.bytesSent));
    set("epoch", fmt.text(t.epoch));
    set("sequence", t.last === null ? "—" : fmt.integer(t.last));
    set("resumes", `${fmt.integer(info.resumes)} / ${fmt.integer(info.snapshots)}`);
    set("duplicates", fmt.integer(t.duplicates));
    set("gaps", `${fmt.integer(t.gaps)} / ${fmt.integer(t.outOfOrder)}`);
    set("invalid", fmt.integer(info.invalidFrames));
    set("queued", `${fmt.integer(client.queued)} (dropped ${fmt.integer(info.droppedSends)})`);
    set("error", fmt.text(info.lastError, "none"));
  }
}

// ------------------------------------------------------------ overview

const CARDS = [
  ["total_requests", "Total requests"],
  ["requests_per_second", "Requests / s"],
  ["tokens_per_second", "Tokens / s"],
  ["avg_latency_ms", "Avg latency"],
  ["error_rate", "Error rate"],
  ["streaming_percentage", "Streaming"],
  ["total_cost", "Total cost"],
  ["active_connections", "Connections"],
];

export class Overview {
  constructor(root) {
    this.cards = new Map();
    const nodes = CARDS.map(([key, label]) => {
      const card = el("div", "card");
      card.dataset.metric = key;
      const value = el("div", "card-value", "—");
      const sub = el("div", "card-sub", "");
      card.append(el("div", "card-label", label), value, sub);
      this.cards.set(key, { card, value, sub });
      return card;
    });
    root.replaceChildren(...nodes);
  }

  render(store) {
    const m = store.metrics || {};
    const meta = store.metricsMeta || {};
    const set = (key, value, sub = "") => {
      const card = this.cards.get(key);
      setText(card.value, value);
      setText(card.sub, sub);
    };
    set("total_requests", fmt.integer(m.total_requests), `${fmt.compact(m.total_tokens)} tokens`);
    set("requests_per_second", fmt.rate(m.requests_per_second), "over the window");
    set("tokens_per_second", fmt.rate(m.tokens_per_second), "over the window");
    set(
      "avg_latency_ms",
      fmt.ms(m.avg_latency_ms),
      finite(meta.latency_p50_ms)
        ? `p50 ${fmt.msShort(meta.latency_p50_ms)} · p99 ${fmt.msShort(meta.latency_p99_ms)}`
        : "",
    );
    set("error_rate", fmt.percent(m.error_rate, 2), "of requests");
    set("streaming_percentage", fmt.percent(m.streaming_percentage), "of requests");
    set("total_cost", fmt.usd(m.total_cost), "since start");
    set("active_connections", fmt.integer(m.active_connections), "stream clients");
    const errorCard = this.cards.get("error_rate").card;
    errorCard.dataset.level = finite(m.error_rate)
      ? m.error_rate >= 10
        ? "bad"
        : m.error_rate >= 2
          ? "warn"
          : "ok"
      : "";
  }
}

// ------------------------------------------------------------ tables

function cell(row, index) {
  return row.children[index];
}

export class ModelTable {
  constructor(tbody, empty) {
    this.tbody = tbody;
    this.empty = empty;
  }

  render(store) {
    const models = [...store.models.values()].sort(
      (a, b) => (b.request_count || 0) - (a.request_count || 0),
    );
    this.empty.hidden = models.length > 0;
    syncChildren(
      this.tbody,
      models,
      (m) => m.model,
      () => {
        const tr = el("tr");
        for (let i = 0; i < 9; i += 1) tr.append(el("td", i === 0 ? "name" : "num"));
        cell(tr, 0).append(el("span", "trunc"));
        return tr;
      },
      (tr, m) => {
        setText(cell(tr, 0).firstChild, fmt.text(m.model));
        cell(tr, 0).title = fmt.text(m.model);
        setText(cell(tr, 1), fmt.integer(m.request_count));
        setText(cell(tr, 2), fmt.rate(m.tokens_per_second));
        setText(cell(tr, 3), fmt.ms(m.avg_latency_ms));
        setText(cell(tr, 4), fmt.percent(m.error_rate, 2));
        // Optional fields: absent from publishers that measure no streams.
        setText(cell(tr, 5), fmt.ms(m.ttft_p50_ms));
        setText(cell(tr, 6), fmt.ms(m.itl_p50_ms));
        setText(cell(tr, 7), fmt.compact(m.total_tokens));
        setText(cell(tr, 8), fmt.usd(m.total_cost));
        cell(tr, 4).dataset.level = m.error_rate >= 10 ? "bad" : m.error_rate >= 2 ? "warn" : "";
      },
    );
  }
}

export class RequestTable {
  constructor(tbody, empty) {
    this.tbody = tbody;
    this.empty = empty;
  }

  render(store) {
    this.empty.hidden = store.requests.length > 0;
    syncChildren(
      this.tbody,
      store.requests,
      (r) => r.id,
      (r) => {
        const tr = el("tr", "request-row");
        tr.dataset.id = r.id;
        tr.append(
          el("td", "time"),
          el("td", "name"),
          el("td", "status"),
          el("td", "num"),
          el("td", "num"),
          el("td", "num"),
          el("td", "num"),
          el("td", "num"),
          el("td", "id"),
        );
        const pill = el("span", "pill");
        cell(tr, 2).append(pill);
        cell(tr, 1).append(el("span", "trunc"));
        cell(tr, 8).append(el("span", "trunc"));
        return tr;
      },
      (tr, r) => {
        const created = finite(r.created) ? r.created * 1000 : null;
        setText(cell(tr, 0), fmt.clock(created));
        setText(cell(tr, 1).firstChild, fmt.text(r.model));
        cell(tr, 1).title = fmt.text(r.model);
        const pill = cell(tr, 2).firstChild;
        const status = typeof r.status === "string" ? r.status : "unknown";
        pill.dataset.status = status;
        setText(pill, status === "in_progress" ? "running" : status);
        if (typeof r.error_message === "string") pill.title = r.error_message;
        setText(cell(tr, 3), `${fmt.integer(r.total_tokens)}${r.streaming === true ? " ⇢" : ""}`);
        setText(cell(tr, 4), fmt.ms(r.latency_ms));
        setText(cell(tr, 5), fmt.ms(r.time_to_first_token_ms));
        setText(cell(tr, 6), fmt.ms(r.inter_token_latency_ms));
        const timing = [];
        if (finite(r.inter_token_latency_p95_ms)) timing.push(`ITL p95 ${fmt.ms(r.inter_token_latency_p95_ms)}`);
        if (finite(r.time_per_output_token_ms)) timing.push(`TPOT ${fmt.ms(r.time_per_output_token_ms)}`);
        if (typeof r.finish_reason === "string") timing.push(`finish: ${r.finish_reason}`);
        cell(tr, 6).title = timing.join(" · ");
        setText(cell(tr, 7), fmt.usd(r.cost));
        setText(cell(tr, 8).firstChild, fmt.text(r.id));
        cell(tr, 8).title = fmt.text(r.id);
      },
    );
  }
}

export class ErrorFeed {
  constructor(list, empty) {
    this.list = list;
    this.empty = empty;
  }

  render(store) {
    this.empty.hidden = store.errors.length > 0;
    syncChildren(
      this.list,
      store.errors,
      (e) => store.errorKey(e),
      () => {
        const li = el("li", "error-item");
        const head = el("div", "error-head");
        head.append(el("span", "pill sev"), el("span", "error-type"), el("span", "error-time"));
        li.append(head, el("div", "error-message"), el("div", "error-meta"));
        return li;
      },
      (li, e) => {
        const [head, message, meta] = li.children;
        const [sev, type, time] = head.children;
        const severity = typeof e.severity === "string" ? e.severity : "medium";
        sev.dataset.severity = severity;
        setText(sev, severity);
        setText(type, fmt.text(e.error_type));
        setText(time, fmt.clock(e.timestamp < 1e11 ? e.timestamp * 1000 : e.timestamp));
        setText(message, fmt.text(e.error_message, ""));
        const parts = [];
        if (typeof e.model === "string") parts.push(e.model);
        if (typeof e.request_id === "string") parts.push(e.request_id);
        setText(meta, parts.join(" · "));
      },
    );
  }
}

// ------------------------------------------------------------ bars

function bar(label) {
  const row = el("div", "bar-row");
  const head = el("div", "bar-head");
  head.append(el("span", "bar-label", label), el("span", "bar-value", "—"));
  const track = el("div", "bar-track");
  const fill = el("div", "bar-fill");
  track.append(fill);
  row.append(head, track);
  return row;
}

function setBar(row, fraction, value, level = "") {
  const [head, track] = row.children;
  setText(head.children[1], value);
  const pct = finite(fraction) ? Math.max(0, Math.min(1, fraction)) * 100 : 0;
  // CSSOM, not a style attribute: allowed by the page's CSP.
  track.firstChild.style.width = `${pct.toFixed(1)}%`;
  track.firstChild.dataset.level = level;
}

function level(value, warn, bad) {
  if (!finite(value)) return "";
  return value >= bad ? "bad" : value >= warn ? "warn" : "ok";
}

export class SystemHealth {
  constructor(root, pill) {
    this.root = root;
    this.pill = pill;
    this.bars = new Map();
    const bars = [
      ["cpu_usage", "CPU"],
      ["memory_usage", "Memory"],
      ["gpu_usage", "GPU"],
      ["gpu_memory_usage", "GPU memory"],
      ["disk_usage", "Disk"],
    ].map(([key, label]) => {
      const row = bar(label);
      this.bars.set(key, row);
      return row;
    });
    this.facts = el("dl", "kv compact");
    this.factValues = new Map();
    for (const [key, label] of [
      ["net", "Network in / out"],
      ["workers", "Active workers"],
      ["queue", "Queue"],
    ]) {
      const dd = el("dd", "", "—");
      this.factValues.set(key, dd);
      this.facts.append(el("dt", "", label), dd);
    }
    root.replaceChildren(...bars, this.facts);
  }

  render(store) {
    const s = store.system || {};
    for (const [key, row] of this.bars) {
      const value = s[key];
      row.hidden = (key === "gpu_usage" || key === "gpu_memory_usage") && !finite(value);
      setBar(row, value / 100, fmt.percent(value), level(value, 75, 90));
    }
    const net = store.networkRate;
    setText(
      this.factValues.get("net"),
      net ? `${fmt.bytes(net.in)}/s / ${fmt.bytes(net.out)}/s` : "—",
    );
    setText(this.factValues.get("workers"), fmt.integer(s.active_workers));
    setText(this.factValues.get("queue"), fmt.integer(s.queue_size));
    const healthy = store.healthy;
    this.pill.dataset.level = healthy === null ? "" : healthy ? "ok" : "bad";
    setText(this.pill, healthy === null ? "no data" : healthy ? "healthy" : "degraded");
  }
}

export class KVCachePanel {
  constructor(root) {
    this.hit = bar("Hit rate");
    // Pool usage: only engines report it (scraped vLLM, SGLang, TGI).
    this.usage = bar("Usage");
    this.values = new Map();
    const facts = el("dl", "kv compact");
    for (const [key, label] of [
      ["cache_hits", "Hits"],
      ["cache_misses", "Misses"],
      ["cache_entries", "Entries"],
      ["cache_size_bytes", "Size"],
      ["evictions", "Evictions"],
      ["avg_lookup_time_ms", "Avg lookup"],
    ]) {
      const dd = el("dd", "", "—");
      this.values.set(key, dd);
      facts.append(el("dt", "", label), dd);
    }
    root.replaceChildren(this.hit, this.usage, facts);
  }

  render(store) {
    const k = store.kvCache || {};
    setBar(this.hit, k.hit_rate / 100, fmt.percent(k.hit_rate), "ok");
    this.usage.hidden = !finite(k.usage_percentage);
    if (finite(k.usage_percentage)) {
      const fill = level(k.usage_percentage, 70, 90);
      setBar(this.usage, k.usage_percentage / 100, fmt.percent(k.usage_percentage), fill);
    }
    const v = this.values;
    setText(v.get("cache_hits"), fmt.integer(k.cache_hits));
    setText(v.get("cache_misses"), fmt.integer(k.cache_misses));
    setText(v.get("cache_entries"), fmt.integer(k.cache_entries));
    setText(v.get("cache_size_bytes"), fmt.bytes(k.cache_size_bytes));
    setText(v.get("evictions"), fmt.integer(k.evictions));
    setText(
      v.get("avg_lookup_time_ms"),
      finite(k.avg_lookup_time_ms) ? `${fmt.decimal(k.avg_lookup_time_ms, 3)} ms` : "—",
    );
  }
}

const MAX_BREAKDOWN = 8;

function breakdown(container, map) {
  let entries = Object.entries(map && typeof map === "object" ? map : {})
    .filter(([, value]) => finite(value))
    .sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((sum, [, value]) => sum + value, 0);
  if (entries.length > MAX_BREAKDOWN) {
    // The long tail in one bar: readable, and bounded whatever the stream sends.
    const rest = entries.slice(MAX_BREAKDOWN - 1).reduce((sum, [, value]) => sum + value, 0);
    entries = [...entries.slice(0, MAX_BREAKDOWN - 1), [`${entries.length - MAX_BREAKDOWN + 1} others`, rest]];
  }
  syncChildren(
    container,
    entries,
    ([name]) => name,
    ([name]) => bar(name),
    (row, [name, value]) => {
      setText(row.firstChild.firstChild, name);
      setBar(row, total > 0 ? value / total : 0, fmt.usd(value), "ok");
    },
  );
}

export class CostPanel {
  constructor(root) {
    this.total = el("div", "big", "—");
    this.period = el("div", "muted", "");
    this.projected = el("div", "muted", "");
    const head = el("div", "cost-head");
    const left = el("div");
    left.append(this.total, this.period);
    head.append(left, this.projected);
    this.byModel = el("div", "bars");
    this.byService = el("div", "bars");
    root.replaceChildren(
      head,
      el("h3", "", "By model"),
      this.byModel,
      el("h3", "", "By service"),
      this.byService,
    );
  }

  render(store) {
    const c = store.costs || {};
    setText(this.total, fmt.usd(c.total_cost));
    setText(this.period, typeof c.period === "string" ? `over the last ${c.period}` : "no data yet");
    setText(
      this.projected,
      // projection_available false: too little history to extrapolate a month.
      c.projection_available === false
        ? "projection: not enough data yet"
        : finite(c.projected_monthly_cost)
          ? `≈ ${fmt.usd(c.projected_monthly_cost)} / month`
          : "",
    );
    breakdown(this.byModel, c.breakdown_by_model);
    breakdown(this.byService, c.breakdown_by_service);
  }
}

export class RateLimitPanel {
  constructor(root, empty) {
    this.root = root;
    this.empty = empty;
  }

  render(store) {
    const limits = [...store.rateLimits.values()].sort((a, b) =>
      String(a.endpoint).localeCompare(String(b.endpoint)),
    );
    this.empty.hidden = limits.length > 0;
    syncChildren(
      this.root,
      limits,
      (r) => r.endpoint,
      (r) => bar(r.endpoint),
      (row, r) => {
        setText(row.firstChild.firstChild, fmt.text(r.endpoint));
        const reset = finite(r.reset_time) ? Math.max(0, (r.reset_time - Date.now()) / 1000) : null;
        const resetText = reset === null ? "" : ` · resets in ${Math.ceil(reset)} s`;
        setBar(
          row,
          r.percentage_used / 100,
          `${fmt.integer(r.remaining)} / ${fmt.integer(r.limit)} left${resetText}`,
          level(r.percentage_used, 75, 90),
        );
      },
    );
  }
}
