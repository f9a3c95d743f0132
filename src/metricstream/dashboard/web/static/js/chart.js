// A small line chart drawn on <canvas>: sharp on high-DPI screens, sized by
// CSS, redrawn only when asked. Values that are null leave a hole.

const GRID = "rgba(255, 255, 255, 0.08)";
const AXIS_TEXT = "#8a8f98";
const PANEL = "#16181a"; // --panel in app.css
const FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exponent = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * exponent) return step * exponent;
  }
  return 10 * exponent;
}

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{label: string, color: string, key: string}[]} series
   * @param {{format: (v: number, max: number) => string, fixedMax?: number}} options
   */
  constructor(canvas, series, options = {}) {
    this.canvas = canvas;
    this.series = series;
    this.format = options.format || ((v) => String(v));
    this.fixedMax = options.fixedMax ?? null;
    this.ctx = canvas.getContext("2d");
  }

  _resize() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(this.canvas.clientWidth));
    const height = Math.max(1, Math.round(this.canvas.clientHeight));
    const pixelWidth = Math.round(width * ratio);
    const pixelHeight = Math.round(height * ratio);
    if (this.canvas.width !== pixelWidth || this.canvas.height !== pixelHeight) {
      this.canvas.width = pixelWidth;
      this.canvas.height = pixelHeight;
    }
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return { width, height };
  }

  /** Draw `history` (an object of arrays keyed by series key, plus `t`). */
  draw(history) {
    const { width, height } = this._resize();
    const ctx = this.ctx;
    ctx.clearRect(0, 0, width, height);
    const count = history.t.length;
    let max = 0;
    for (const s of this.series) {
      for (const v of history[s.key] || []) if (v !== null && v > max) max = v;
    }
    max = this.fixedMax !== null ? Math.max(this.fixedMax, niceMax(max)) : niceMax(max * 1.1);
    ctx.font = FONT;
    const lines = 4;
    let widest = 24;
    for (let i = 0; i <= lines; i += 1) {
      widest = Math.max(widest, ctx.measureText(this.format((max * i) / lines, max)).width);
    }
    const labelWidth = widest + 8;
    const left = labelWidth;
    const top = 6;
    const right = width - 6;
    const bottom = height - 16;
    const plotHeight = Math.max(bottom - top, 1);

    ctx.strokeStyle = GRID;
    ctx.fillStyle = AXIS_TEXT;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= lines; i += 1) {
      const y = Math.round(top + (plotHeight * i) / lines) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      ctx.fillText(this.format((max * (lines - i)) / lines, max), left - 6, y);
    }
    if (count > 1) {
      const span = Math.max(history.t[count - 1] - history.t[0], 1);
      ctx.textAlign = "left";
      ctx.textBaseline = "alphabetic";
      ctx.fillText(`${Math.round(span / 1000)} s`, left, height - 3);
      ctx.textAlign = "right";
      ctx.fillText("now", right, height - 3);
    }
    if (count === 0) {
      const message = "waiting for data…";
      const cx = (left + right) / 2;
      const cy = top + plotHeight / 2;
      const half = ctx.measureText(message).width / 2 + 8;
      // Blank the grid behind the message so it reads cleanly.
      ctx.fillStyle = PANEL;
      ctx.fillRect(cx - half, cy - 9, half * 2, 18);
      ctx.fillStyle = AXIS_TEXT;
      ctx.textAlign = "center";
      ctx.fillText(message, cx, cy);
      return;
    }
    const x = (i) => (count === 1 ? right : left + ((right - left) * i) / (count - 1));
    const y = (v) => bottom - (Math.min(v, max) / max) * plotHeight;
    this.series.forEach((s, index) => {
      const values = history[s.key] || [];
      ctx.strokeStyle = s.color;
      ctx.lineWidth = index === 0 ? 2 : 1.5;
      ctx.lineJoin = "round";
      ctx.beginPath();
      let drawing = false;
      values.forEach((v, i) => {
        if (v === null) {
          drawing = false;
          return;
        }
        if (drawing) ctx.lineTo(x(i), y(v));
        else ctx.moveTo(x(i), y(v));
        drawing = true;
      });
      ctx.stroke();
      if (index === 0 && this.series.length === 1) {
        // Fill under a single series: easier to read at a glance.
        ctx.lineTo(x(values.length - 1), bottom);
        ctx.lineTo(x(0), bottom);
        ctx.closePath();
        ctx.globalAlpha = 0.12;
        ctx.fillStyle = s.color;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    });
  }
}
