// Number formatting for the panels. Every function accepts anything (the
// stream is untrusted) and returns a display string, "—" for a missing value.

const DASH = "—";

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

export function integer(value) {
  return finite(value) ? Math.round(value).toLocaleString("en-US") : DASH;
}

export function compact(value) {
  if (!finite(value)) return DASH;
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${(value / 1e9).toFixed(2)}B`;
  if (abs >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return integer(value);
}

export function decimal(value, digits = 1) {
  return finite(value)
    ? value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : DASH;
}

export function rate(value) {
  return finite(value) ? (value >= 1000 ? compact(value) : decimal(value, 1)) : DASH;
}

export function ms(value) {
  if (!finite(value)) return DASH;
  if (value >= 10000) return `${decimal(value / 1000, 1)} s`;
  return `${decimal(value, value >= 100 ? 0 : 1)} ms`;
}

/** Milliseconds in few characters: "840ms", "1.5s". */
export function msShort(value) {
  if (!finite(value)) return DASH;
  return value >= 1000 ? `${decimal(value / 1000, 1)}s` : `${Math.round(value)}ms`;
}

export function percent(value, digits = 1) {
  return finite(value) ? `${decimal(value, digits)}%` : DASH;
}

export function usd(value) {
  if (!finite(value)) return DASH;
  const digits = Math.abs(value) < 1 ? 4 : 2;
  return `$${value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })}`;
}

export function bytes(value) {
  if (!finite(value)) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = value;
  let unit = 0;
  while (Math.abs(v) >= 1024 && unit < units.length - 1) {
    v /= 1024;
    unit += 1;
  }
  return `${decimal(v, unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function clock(msSinceEpoch) {
  if (!finite(msSinceEpoch)) return DASH;
  const d = new Date(msSinceEpoch);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}

export function duration(seconds) {
  if (!finite(seconds) || seconds < 0) return DASH;
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function text(value, fallback = DASH) {
  return typeof value === "string" && value !== "" ? value : fallback;
}
