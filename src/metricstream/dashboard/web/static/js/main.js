// Bootstraps the dashboard: reads the page's query, opens the stream and
// redraws the views when the store changes (at most a few times a second).
//
// Page query parameters (all optional):
//   token=...              auth token, passed on to the stream
//   heartbeat=<seconds>    heartbeat interval (default: the protocol's, 30)
//   heartbeat_timeout=<s>  silence after a heartbeat that abandons the socket
//                          (default: the protocol's, 5)
// (options.js reads them; the defaults come from protocol.js.)
//   batch=0                ask for one message per frame
//   stream=<path>          stream path relative to the page (default metrics/stream)
//   debug=1                log the client's decisions to the console

import { StreamClient } from "./client.js";
import { LineChart } from "./chart.js";
import * as fmt from "./format.js";
import { pageOptions } from "./options.js";
import { MetricsStore } from "./store.js";
import {
  ConnectionBadge,
  ConnectionStats,
  ConnectionStatus,
  CostPanel,
  ErrorFeed,
  KVCachePanel,
  ModelTable,
  Overview,
  RateLimitPanel,
  RequestTable,
  SystemHealth,
  el,
} from "./views.js";

const RENDER_INTERVAL_MS = 200;
const GREEN = "#76b900";

/** The stream's ws:// URL, relative to the page so a prefixed mount works. */
function streamUrl(params) {
  // Only a relative path is taken from the query: a link must not be able to
  // point the page (and its token) at another host.
  const path = (params.get("stream") || "metrics/stream").replace(/^[a-z]+:\/*/i, "");
  const url = new URL(path.replace(/^\/+/, ""), window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.toString();
}

function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page lacks #${id}`);
  return node;
}

function legend(container, series) {
  container.replaceChildren(
    ...series.map((s) => {
      const item = el("span", "legend-item", s.label);
      const swatch = el("span", "swatch");
      swatch.style.background = s.color;
      item.prepend(swatch);
      return item;
    }),
  );
}

// Axis labels: as many decimals as the scale needs, no more.
function axis(value, max) {
  if (max >= 10000) return fmt.compact(value);
  const step = max / 4;
  const digits = Number.isInteger(step) ? 0 : Number.isInteger(step * 10) ? 1 : 2;
  return fmt.decimal(value, digits);
}

function axisMs(value, max) {
  return max >= 4000 ? `${axis(value / 1000, max / 1000)}s` : `${axis(value, max)}ms`;
}

function makeCharts() {
  const specs = [
    ["chart-rps", [{ key: "requests_per_second", label: "req/s", color: GREEN }], axis, null],
    ["chart-tps", [{ key: "tokens_per_second", label: "tok/s", color: GREEN }], axis, null],
    [
      "chart-latency",
      [
        { key: "avg_latency_ms", label: "avg", color: GREEN },
        { key: "latency_p50_ms", label: "p50", color: "#4fc3f7" },
        { key: "latency_p90_ms", label: "p90", color: "#ffb300" },
        { key: "latency_p99_ms", label: "p99", color: "#e040fb" },
        // Streaming latency: absent (a hole) while nothing streamed was measured.
        { key: "ttft_p50_ms", label: "TTFT p50", color: "#ffffff" },
        { key: "itl_p50_ms", label: "ITL p50", color: "#ff7043" },
      ],
      axisMs,
      null,
    ],
    [
      "chart-errors",
      [{ key: "error_rate", label: "error %", color: "#ff5252" }],
      (v, max) => `${axis(v, max)}%`,
      5,
    ],
  ];
  return specs.map(([id, series, format, fixedMax]) => {
    const canvas = byId(id);
    const legendNode = canvas.parentElement.querySelector(".legend");
    if (legendNode) legend(legendNode, series);
    return new LineChart(canvas, series, { format, fixedMax });
  });
}

function start() {
  const params = new URLSearchParams(window.location.search);
  const client = new StreamClient(streamUrl(params), pageOptions(params));
  const store = new MetricsStore();
  client.on("init", ({ message, kept }) => store.applyInit(message, kept));
  client.on("reset", () => store.reset());
  client.on("message", (message) => store.apply(message));

  const status = new ConnectionStatus(byId("connection-status"));
  const badge = new ConnectionBadge(byId("connection-badge"));
  const stats = new ConnectionStats(byId("connection-stats"));
  const banner = byId("banner");
  const overview = new Overview(byId("overview"));
  const charts = makeCharts();
  const models = new ModelTable(byId("models-body"), byId("models-empty"));
  const requests = new RequestTable(byId("requests-body"), byId("requests-empty"));
  const errors = new ErrorFeed(byId("errors-list"), byId("errors-empty"));
  const system = new SystemHealth(byId("system"), byId("system-pill"));
  const kv = new KVCachePanel(byId("kv-cache"));
  const costs = new CostPanel(byId("costs"));
  const limits = new RateLimitPanel(byId("rate-limits"), byId("rate-limits-empty"));
  const updated = byId("last-update");

  let drawnVersion = -1;
  let timer = null;

  function renderConnection() {
    status.render(client.info);
    badge.render(client.info);
    stats.render(client);
    const fatal = client.info.state === "ERROR";
    banner.hidden = !fatal;
    if (fatal) banner.textContent = client.info.lastError || "connection error";
    document.body.dataset.connection = client.info.state.toLowerCase();
  }

  function render() {
    timer = null;
    renderConnection();
    if (store.version !== drawnVersion) {
      drawnVersion = store.version;
      overview.render(store);
      for (const chart of charts) chart.draw(store.history);
      models.render(store);
      requests.render(store);
      errors.render(store);
      system.render(store);
      kv.render(store);
      costs.render(store);
      limits.render(store);
      updated.textContent = store.lastUpdate ? `updated ${fmt.clock(store.lastUpdate)}` : "";
    }
  }

  function schedule() {
    if (timer === null) timer = setTimeout(render, RENDER_INTERVAL_MS);
  }

  store.subscribe(schedule);
  client.on("state", schedule);
  // Latency, uptime and retry countdowns move without any message.
  setInterval(schedule, 1000);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const chart of charts) chart.draw(store.history);
    }, 100);
  });
  // Leaving the page closes the stream cleanly (1000); coming back to it
  // from the back/forward cache opens it again.
  window.addEventListener("pagehide", () => client.close());
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) client.connect();
  });

  // For debugging from the console (and the browser tests).
  window.metricstream = { client, store };
  render();
  client.connect();
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
