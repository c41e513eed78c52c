// Small SVG plots: accuracy with intervals per method, per round, and against tokens. The
// numbers come from the server (nsed.benchmarks.reports); this file only draws them.

import { h, s } from "./dom.js";

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

export function colour(i) {
  return PALETTE[i % PALETTE.length];
}

function frame(width, height, label) {
  return s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": label, preserveAspectRatio: "xMidYMid meet" });
}

function niceTicks(max, count = 5) {
  if (max <= 0) return [0];
  const raw = max / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((v) => v >= raw) || raw;
  const ticks = [];
  for (let v = 0; v <= max * 1.0001; v += nice) ticks.push(v);
  return ticks;
}

/** Which colour is which series: an HTML list under a chart. */
export function legend(labels) {
  return h("ul", { class: "legend" }, labels.map((label, i) =>
    h("li", {}, h("span", { class: "swatch", style: { backgroundColor: colour(i) }, "aria-hidden": "true" }), label)));
}

/** One row per method: the accuracy as a dot, its 95% interval as a line, on [0, 1]. */
export function intervalChart(rows, label) {
  const left = 170;
  const right = 60;
  const width = 640;
  const rowH = 30;
  const top = 24;
  const height = top + rows.length * rowH + 28;
  const x = (v) => left + v * (width - left - right);
  const svg = frame(width, height, label);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(s("line", { x1: x(t), x2: x(t), y1: top - 6, y2: height - 24, class: "grid" }));
    svg.append(s("text", { x: x(t), y: height - 8, class: "tick", "text-anchor": "middle" }, `${t * 100}%`));
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH + rowH / 2;
    const c = colour(i);
    svg.append(s("text", { x: left - 8, y: y + 4, class: "label", "text-anchor": "end" }, r.label));
    svg.append(s("line", { x1: x(r.lo), x2: x(r.hi), y1: y, y2: y, stroke: c, "stroke-width": 3, "stroke-linecap": "round" }));
    svg.append(s("circle", { cx: x(r.value), cy: y, r: 6, fill: c }, s("title", {}, `${r.label}: ${(100 * r.value).toFixed(1)}% (95% CI ${(100 * r.lo).toFixed(1)}–${(100 * r.hi).toFixed(1)}%)`)));
    svg.append(s("text", { x: width - right + 8, y: y + 4, class: "tick" }, `${(100 * r.value).toFixed(0)}%`));
  });
  return svg;
}

/**
 * Points with vertical 95% whiskers on x (rounds or tokens) against accuracy in [0, 1];
 * `curve` is an optional line (the fitted U(t)), `vline` an optional marker (T_opt).
 */
export function xyChart({ series, curve = [], vline = null, xLabel, label, integerX = false }) {
  const width = 640;
  const height = 320;
  const m = { left: 56, right: 20, top: 16, bottom: 46 };
  const xs = series.flatMap((se) => se.points.map((p) => p.x)).concat(curve.map((c) => c[0]));
  let xMax = Math.max(1, ...xs);
  if (vline !== null && vline <= 2 * xMax) xMax = Math.max(xMax, vline);
  const xMin = 0;
  const xHi = integerX ? xMax + 0.5 : xMax * 1.1;
  const x = (v) => m.left + ((v - xMin) / (xHi - xMin)) * (width - m.left - m.right);
  const y = (v) => height - m.bottom - v * (height - m.top - m.bottom);
  const svg = frame(width, height, label);
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(s("line", { x1: m.left, x2: width - m.right, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(s("text", { x: m.left - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, `${t * 100}%`));
  }
  const ticks = integerX ? [...new Set(series.flatMap((se) => se.points.map((p) => p.x)))] : niceTicks(xMax);
  for (const t of ticks) {
    svg.append(s("text", { x: x(t), y: height - m.bottom + 16, class: "tick", "text-anchor": "middle" }, integerX ? String(t) : t.toLocaleString("en-US")));
  }
  svg.append(s("text", { x: (m.left + width - m.right) / 2, y: height - 8, class: "axis", "text-anchor": "middle" }, xLabel));
  svg.append(s("text", { x: 14, y: (m.top + height - m.bottom) / 2, class: "axis", "text-anchor": "middle", transform: `rotate(-90 14 ${(m.top + height - m.bottom) / 2})` }, "accuracy"));
  if (curve.length) {
    svg.append(s("polyline", { points: curve.map(([cx, cy]) => `${x(cx).toFixed(1)},${y(Math.max(0, Math.min(1, cy))).toFixed(1)}`).join(" "), class: "curve" }));
  }
  if (vline !== null && vline <= xHi) {
    svg.append(s("line", { x1: x(vline), x2: x(vline), y1: m.top, y2: height - m.bottom, class: "vline" }));
    svg.append(s("text", { x: x(vline) + 4, y: m.top + 12, class: "tick" }, "T_opt"));
  }
  series.forEach((se, i) => {
    const c = se.colour || colour(i);
    if (se.line && se.points.length > 1) {
      svg.append(s("polyline", { points: se.points.map((p) => `${x(p.x)},${y(p.value)}`).join(" "), fill: "none", stroke: c, "stroke-dasharray": "4 3" }));
    }
    for (const p of se.points) {
      svg.append(s("line", { x1: x(p.x), x2: x(p.x), y1: y(p.lo), y2: y(p.hi), stroke: c, "stroke-width": 2 }));
      svg.append(s("circle", { cx: x(p.x), cy: y(p.value), r: 5, fill: c },
        s("title", {}, `${se.label}: ${(100 * p.value).toFixed(1)}% at ${p.x.toLocaleString("en-US")} (95% CI ${(100 * p.lo).toFixed(1)}–${(100 * p.hi).toFixed(1)}%)`)));
    }
  });
  return svg;
}
