// Building DOM without HTML strings: every text goes in as a text node, so model output
// (untrusted) can never become markup: no string here ever reaches the HTML parser.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key.startsWith("on")) throw new Error(`refusing a non-function handler for ${key}`);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: h("p", {class: "x"}, "text", h("b", {}, "bold")). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, built the same way. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace the children of `node`, keeping which <details data-key> the reader opened. */
export function replace(node, ...children) {
  const state = new Map();
  for (const d of node.querySelectorAll("details[data-key]")) state.set(d.dataset.key, d.open);
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  for (const d of node.querySelectorAll("details[data-key]")) {
    if (state.has(d.dataset.key)) d.open = state.get(d.dataset.key);
  }
  return node;
}

/** A folded block: <details><summary>title</summary>body</details>, or nothing when empty. */
export function fold(title, body, key, open = false) {
  if (body === null || body === undefined || body === "") return null;
  return h("details", { dataset: key ? { key } : undefined, open },
    h("summary", {}, title),
    typeof body === "string" ? h("pre", { class: "text" }, body) : body);
}

export function fmtInt(n) {
  return Number(n || 0).toLocaleString("en-US");
}

export function fmtSigned(x, digits = 3) {
  const v = Number(x || 0);
  return (v >= 0 ? "+" : "") + v.toFixed(digits);
}

export function fmtUsd(x) {
  const v = Number(x || 0);
  return "$" + (v === 0 ? "0" : v < 0.01 ? v.toFixed(5) : v.toFixed(4));
}

export function fmtPct(x) {
  return (100 * Number(x || 0)).toFixed(1) + "%";
}

export function fmtSeconds(x) {
  const v = Number(x || 0);
  return v < 60 ? `${v.toFixed(1)} s` : `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`;
}

export function fmtDate(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso || "") : d.toLocaleString();
}

/** The first `n` characters of `text`, with an ellipsis when cut. */
export function clip(text, n) {
  const t = String(text || "");
  return t.length > n ? t.slice(0, n - 1) + "…" : t;
}
