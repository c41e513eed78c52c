// One round of a deliberation: every agent's card, the review matrix, support as bars.
// The same code draws a live round (filled event by event) and a stored RoundRecord.

import { h, fold, fmtInt, fmtSigned, fmtUsd, fmtSeconds } from "./dom.js";

// Proposal fields drawn on purpose; any other field (newer protocol versions add optional
// ones) is listed under "more" as JSON text, so nothing is lost and nothing breaks.
const PROPOSAL_FIELDS = new Set([
  "agent", "reasoning", "thinking", "answer", "final", "parse_error", "finish_reason",
  "truncated", "prompt_tokens", "completion_tokens", "latency_s",
]);

/** A round as the views hold it, from a stored RoundRecord. */
export function fromRecord(record) {
  const agents = [];
  for (const p of record.proposals || []) if (!agents.includes(p.agent)) agents.push(p.agent);
  for (const r of record.reviews || []) if (!agents.includes(r.reviewer)) agents.push(r.reviewer);
  for (const f of record.failures || []) if (!agents.includes(f.agent)) agents.push(f.agent);
  return {
    index: record.index,
    agents,
    proposals: record.proposals || [],
    reviews: record.reviews || [],
    failures: record.failures || [],
    record,
  };
}

function extraFields(proposal) {
  const extra = {};
  for (const [key, value] of Object.entries(proposal)) {
    if (PROPOSAL_FIELDS.has(key) || value === null || value === undefined || value === false) continue;
    if (Array.isArray(value) && value.length === 0) continue;
    extra[key] = value;
  }
  return Object.keys(extra).length ? JSON.stringify(extra, null, 2) : null;
}

function badges(proposal) {
  const out = [];
  if (proposal.truncated) out.push(h("span", { class: "badge warn" }, "truncated"));
  if (proposal.finish_reason && !["stop", "tool_calls"].includes(proposal.finish_reason)) {
    out.push(h("span", { class: "badge warn" }, `finish: ${proposal.finish_reason}`));
  }
  if (proposal.parse_error) out.push(h("span", { class: "badge warn", title: proposal.parse_error }, "parse error"));
  return out;
}

function card(name, round, ctx) {
  const proposal = round.proposals.find((p) => p.agent === name);
  const failures = round.failures.filter((f) => f.agent === name);
  const record = round.record;
  const info = ctx.agentInfo.get(name) || {};
  const isWinner = record && record.winner === name;
  const key = `r${round.index}-${name}`;
  let body;
  if (proposal) {
    body = [
      h("div", { class: "final-label" }, "final answer"),
      h("div", { class: "final", dataset: { final: "" } }, proposal.final ?? "—"),
      badges(proposal),
      fold("answer", proposal.answer, `${key}-answer`, !proposal.final),
      fold("reasoning", proposal.reasoning, `${key}-reasoning`),
      fold("thinking", proposal.thinking, `${key}-thinking`),
      fold("more", extraFields(proposal), `${key}-more`),
    ];
  } else if (failures.some((f) => f.phase === "propose")) {
    body = [h("div", { class: "final failed" }, "no proposal")];
  } else {
    body = [h("div", { class: "final pending" }, ctx.live && !record ? "thinking…" : "—")];
  }
  const stats = [];
  if (proposal) {
    stats.push(`${fmtInt(proposal.prompt_tokens)} + ${fmtInt(proposal.completion_tokens)} tok`);
    if (proposal.latency_s) stats.push(fmtSeconds(proposal.latency_s));
  }
  if (record && name in (record.support || {})) {
    stats.push(`S ${fmtSigned(record.support[name])}`);
    if (name in (record.mean_score || {})) stats.push(`mean ${fmtSigned(record.mean_score[name], 1)}`);
  }
  return h("article", { class: ["card", isWinner && "winner"], dataset: { agent: name }, "aria-label": `agent ${name}` },
    h("header", {},
      h("h4", { class: "agent-name" }, name),
      isWinner ? h("span", { class: "badge win" }, "★ winner") : null),
    h("div", { class: "model" }, [info.model, info.persona].filter(Boolean).join(" · ") || "\u00a0"),
    body,
    failures.map((f) => h("p", { class: "failure" }, `failed to ${f.phase}${f.timeout ? " (timeout)" : ""}: ${f.error}`)),
    stats.length ? h("footer", {}, stats.join(" · ")) : null);
}

/** Background colour for a score in [-100, 100]: red below zero, green above, white at 0. */
export function scoreColour(score) {
  const t = Math.min(1, Math.abs(score) / 100);
  const hue = score >= 0 ? 135 : 0;
  return `hsl(${hue}, 55%, ${Math.round(97 - 42 * t)}%)`;
}

function matrix(round, ctx) {
  const candidates = round.proposals.map((p) => p.agent);
  const reviewers = round.agents;
  if (!candidates.length) return null;
  const loose = round.reviews.filter((r) => r.dropped_reason && !r.candidate);
  const rows = reviewers.map((reviewer) => {
    const mine = round.reviews.filter((r) => r.reviewer === reviewer);
    const cells = candidates.map((candidate) => {
      const data = { reviewer, candidate };
      if (candidate === reviewer) {
        const attempt = mine.find((r) => r.candidate === candidate && r.dropped_reason);
        return h("td", { class: "self", dataset: { ...data, dropped: attempt ? attempt.dropped_reason : "" }, title: "its own proposal: never counted" },
          attempt ? `✕ ${attempt.dropped_reason}` : "self");
      }
      const review = mine.find((r) => r.candidate === candidate);
      if (!review) {
        return h("td", { class: "none", dataset: data }, ctx.live && !round.record ? "·" : "—");
      }
      if (review.dropped_reason) {
        return h("td", { class: "dropped", dataset: { ...data, dropped: review.dropped_reason }, title: "dropped: not counted" },
          h("span", { class: "x", "aria-hidden": "true" }, "✕ "), review.dropped_reason);
      }
      const score = Number(review.score);
      return h("td", {
        class: ["score", review.clipped && "clipped"],
        dataset: { ...data, score: String(score) },
        style: { backgroundColor: scoreColour(score) },
        title: review.critique || "",
      }, fmtSigned(score, 0), review.clipped ? h("sup", { title: "clipped to [-100, 100]" }, "c") : null);
    });
    const stray = loose.filter((r) => r.reviewer === reviewer);
    cells.push(h("td", { class: "loose", dataset: { reviewer, dropped: stray.map((r) => r.dropped_reason).join("; ") } },
      stray.map((r) => r.dropped_reason).join("; ")));
    return h("tr", {}, h("th", { scope: "row" }, reviewer), cells);
  });
  const critiques = round.reviews.filter((r) => r.critique && !r.dropped_reason);
  return h("div", { class: "matrix-block" },
    h("div", { class: "scroll" },
      h("table", { class: "matrix", dataset: { round: String(round.index) } },
        h("caption", {}, "Reviews: reviewer (row) scores candidate (column), −100…100"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "reviewer ╲ candidate"),
          candidates.map((c) => h("th", { scope: "col" }, c)), h("th", { scope: "col" }, "dropped, no candidate"))),
        h("tbody", {}, rows))),
    critiques.length
      ? fold(`critiques (${critiques.length})`, h("ul", { class: "critiques" },
        critiques.map((r) => h("li", {}, h("b", {}, `${r.reviewer} → ${r.candidate}: `), r.critique))), `r${round.index}-critiques`)
      : null);
}

function supportBars(record) {
  const entries = Object.entries(record.support || {});
  if (!entries.length) return null;
  const scale = Math.max(1e-9, ...entries.map(([, v]) => Math.abs(v)));
  return h("div", { class: "support", role: "list", "aria-label": "support per candidate" },
    entries.map(([name, value]) => {
      const width = `${(50 * Math.abs(value)) / scale}%`;
      return h("div", { class: ["bar-row", record.winner === name && "winner"], role: "listitem", dataset: { candidate: name, support: String(value) } },
        h("span", { class: "bar-label" }, name),
        h("span", { class: "bar-track" },
          h("span", { class: ["bar", value >= 0 ? "pos" : "neg"], style: value >= 0 ? { left: "50%", width } : { right: "50%", width } })),
        h("span", { class: "bar-value" }, fmtSigned(value)));
    }));
}

function summaryLine(round) {
  const r = round.record;
  if (!r) {
    const phase = round.phase || "proposing";
    return h("p", { class: "round-status" }, `${phase}…`);
  }
  const parts = [
    h("span", {}, "winner ", h("b", { class: "round-winner" }, r.winner ?? "none")),
    r.winner_final != null ? h("span", {}, "final ", h("b", {}, r.winner_final)) : null,
    h("span", {}, `conviction ${Number(r.conviction || 0).toFixed(2)}`),
    r.unanimous ? h("span", { class: "badge" }, "unanimous") : null,
    h("span", {}, `${fmtInt((r.prompt_tokens || 0) + (r.completion_tokens || 0))} tokens`),
    h("span", {}, fmtUsd(r.cost_usd)),
    h("span", {}, fmtSeconds(r.wall_s)),
    r.evidence != null ? h("span", { title: "efficiency-fatigue evidence so far" }, `evidence ${Number(r.evidence).toFixed(3)}`) : null,
  ];
  return h("p", { class: "round-status scored" }, parts.filter(Boolean).map((p, i) => (i ? [" · ", p] : p)));
}

// RoundRecord fields drawn on purpose; others (newer protocol versions) go under "more".
const ROUND_FIELDS = new Set([
  "index", "proposals", "reviews", "support", "net_support", "variance", "mean_score", "winner",
  "winner_final", "conviction", "unanimous", "du_dt", "evidence", "prompt_tokens",
  "completion_tokens", "cost_usd", "wall_s", "state_tokens", "failures", "agent_usage",
]);

function roundExtras(record) {
  if (!record) return null;
  const extra = Object.fromEntries(Object.entries(record).filter(([k, v]) =>
    !ROUND_FIELDS.has(k) && v !== null && v !== undefined && !(Array.isArray(v) && !v.length)));
  return Object.keys(extra).length ? JSON.stringify(extra, null, 2) : null;
}

/** The <section> of one round. `ctx.agentInfo` maps agent names to {model, persona}. */
export function roundSection(round, ctx) {
  return h("section", { class: "round", dataset: { round: String(round.index) }, "aria-label": `round ${round.index}` },
    h("h3", {}, `Round ${round.index}`),
    summaryLine(round),
    h("div", { class: "cards" }, round.agents.map((name) => card(name, round, ctx))),
    h("div", { class: "round-detail" },
      h("div", {}, h("h4", {}, "Review matrix"), matrix(round, ctx) || h("p", { class: "hint" }, "no proposals to review")),
      round.record ? h("div", {}, h("h4", {}, "Support S"), supportBars(round.record)) : null),
    fold("more about this round", roundExtras(round.record), `r${round.index}-more`));
}
