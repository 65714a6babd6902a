// Small SVG charts drawn by hand: a time-series line plot and a ring diagram of a timing
// plan. No library: a few dozen elements each, built node by node with the DOM, so nothing
// from the data is ever parsed as markup.

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Round numbers for axis ticks covering [lo, hi] (about `count` of them). */
export function niceTicks(lo, hi, count = 4) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (hi === lo) {
    const pad = Math.abs(hi) > 0 ? Math.abs(hi) * 0.1 : 1;
    lo -= pad; hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 0.5; v += step) ticks.push(Number(v.toFixed(10)));
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

/** A formatter showing ticks with as many decimals as their spacing needs. */
export function tickFormat(ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
  const decimals = Math.max(0, Math.min(4, -Math.floor(Math.log10(step) + 1e-9)
    + (String(step / 10 ** Math.floor(Math.log10(step))).includes(".") ? 1 : 0)));
  return (v) => v.toFixed(decimals);
}

export function formatNumber(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1000) return value.toFixed(0);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  return value.toFixed(abs === 0 ? 0 : 2);
}

function clock(t) {
  const d = new Date(t * 1000);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/**
 * A line plot of `points` ([[posixSeconds, value], ...], oldest first) as an SVG element with
 * a text alternative (role img + aria-label) summarising the series.
 */
export function lineChart({ title, unit = "", points, width = 280, height = 140 }) {
  const margin = { top: 10, right: 12, bottom: 22, left: 44 };
  const w = width - margin.left - margin.right;
  const h = height - margin.top - margin.bottom;
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
  });
  const values = points.map((p) => p[1]);
  const last = values[values.length - 1];
  const summary = points.length === 0 ? `${title}: no data yet`
    : `${title}: ${points.length} values from ${clock(points[0][0])} to `
      + `${clock(points[points.length - 1][0])}, min ${formatNumber(Math.min(...values))}, `
      + `max ${formatNumber(Math.max(...values))}, latest ${formatNumber(last)}${unit ? " " + unit : ""}`;
  svg.setAttribute("aria-label", summary);
  svg.appendChild(el("title", {}, summary));
  if (points.length === 0) {
    svg.appendChild(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
      class: "chart-empty" }, "no data yet"));
    return svg;
  }
  const ticks = niceTicks(Math.min(...values, ...(Math.min(...values) >= 0 ? [0] : [])),
    Math.max(...values));
  const y0 = ticks[0];
  const y1 = ticks[ticks.length - 1];
  let t0 = points[0][0];
  let t1 = points[points.length - 1][0];
  if (t1 === t0) { t0 -= 60; t1 += 60; }
  const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * w;
  const y = (v) => margin.top + h - ((v - y0) / (y1 - y0 || 1)) * h;

  const tickText = tickFormat(ticks);
  const grid = el("g", { class: "chart-grid", "aria-hidden": "true" });
  for (const tick of ticks) {
    grid.appendChild(el("line", { x1: margin.left, x2: margin.left + w, y1: y(tick), y2: y(tick) }));
    grid.appendChild(el("text", { x: margin.left - 6, y: y(tick) + 4, "text-anchor": "end",
      class: "chart-label" }, tickText(tick)));
  }
  for (const [t, anchor] of [[t0, "start"], [(t0 + t1) / 2, "middle"], [t1, "end"]]) {
    grid.appendChild(el("text", { x: x(t), y: height - 6, "text-anchor": anchor,
      class: "chart-label" }, clock(t)));
  }
  svg.appendChild(grid);

  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
  svg.appendChild(el("path", { d: path.join(" "), class: "chart-line", "aria-hidden": "true" }));
  const end = points[points.length - 1];
  svg.appendChild(el("circle", { cx: x(end[0]), cy: y(end[1]), r: 3, class: "chart-dot",
    "aria-hidden": "true" }));
  return svg;
}

/**
 * The plan's rings as horizontal bars over one cycle: each phase's green, yellow and red
 * clearance in proportion, labelled with the phase number and its green.
 */
export function ringDiagram(plan, { width = 560, rowHeight = 26 } = {}) {
  const margin = { left: 54, right: 8, top: 4, bottom: 18 };
  const w = width - margin.left - margin.right;
  const height = margin.top + plan.rings.length * (rowHeight + 6) + margin.bottom;
  const scale = (s) => (s / plan.cycle) * w;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "rings", role: "img" });
  const parts = plan.rings.map((ring, r) => `ring ${r + 1}: ` + ring.map((p) =>
    `phase ${p.phase} ${formatNumber(p.split - p.yellow - p.red_clearance)} s green`).join(", "));
  const label = `Cycle ${formatNumber(plan.cycle)} s. ${parts.join("; ")}.`;
  svg.setAttribute("aria-label", label);
  svg.appendChild(el("title", {}, label));
  plan.rings.forEach((ring, r) => {
    const top = margin.top + r * (rowHeight + 6);
    svg.appendChild(el("text", { x: 0, y: top + rowHeight / 2 + 4, class: "chart-label" },
      `Ring ${r + 1}`));
    let at = 0;
    for (const p of ring) {
      const green = p.split - p.yellow - p.red_clearance;
      const x = margin.left + scale(at);
      const segments = [[green, "seg-green"], [p.yellow, "seg-yellow"], [p.red_clearance, "seg-red"]];
      let offset = 0;
      for (const [length, cls] of segments) {
        if (length > 0) {
          svg.appendChild(el("rect", { x: x + scale(offset), y: top, width: Math.max(0, scale(length)),
            height: rowHeight, class: cls }));
        }
        offset += length;
      }
      if (scale(green) > 34) {
        svg.appendChild(el("text", { x: x + 5, y: top + rowHeight / 2 + 4, class: "seg-label" },
          `Φ${p.phase} ${formatNumber(green)}s`));
      }
      at += p.split;
    }
  });
  const base = margin.top + plan.rings.length * (rowHeight + 6) + 12;
  svg.appendChild(el("text", { x: margin.left, y: base, class: "chart-label" }, "0 s"));
  svg.appendChild(el("text", { x: margin.left + w, y: base, "text-anchor": "end",
    class: "chart-label" }, `${formatNumber(plan.cycle)} s`));
  return svg;
}
