// A whole deliberation: the question, the chosen answer and why the council stopped, who
// took part, then every round (round.js). Used for a stored run and for a live one.

import { h, fold, fmtInt, fmtUsd, fmtSeconds, fmtDate } from "./dom.js";
import { fromRecord, roundSection } from "./round.js";

/** name -> {model, persona} from a Deliberation's agents (or a council's seats). */
export function agentInfo(agents) {
  return new Map((agents || []).map((a) => [a.name, { model: a.model, persona: a.persona }]));
}

/** The head of a finished deliberation: final answer, winner, stop reason, usage. */
export function outcome(d) {
  const u = d.usage || {};
  const fact = (label, value, id) => h("div", { class: "fact" }, h("dt", {}, label), h("dd", { id }, value));
  return h("section", { class: "outcome", "aria-label": "outcome" },
    h("div", { class: "final-label" }, "final answer"),
    h("div", { class: "final big", id: "final-answer" }, d.final ?? "—"),
    h("dl", { class: "facts" },
      fact("winner", d.winner ?? "none", "winner"),
      fact("stopped because", d.stopped_because || "—", "stop-reason"),
      fact("rounds", String((d.rounds || []).length)),
      fact("tokens", `${fmtInt(u.prompt_tokens)} prompt + ${fmtInt(u.completion_tokens)} completion`),
      fact("cost", fmtUsd(u.cost_usd)),
      fact("calls", `${fmtInt(u.calls)}${u.failed_calls ? `, ${u.failed_calls} failed` : ""}${u.retries ? `, ${u.retries} retries` : ""}`),
      fact("wall time", fmtSeconds(d.wall_s)),
      d.started_at ? fact("started", fmtDate(d.started_at)) : null),
    fold("the winning answer in full", d.answer, "answer-full", true));
}

function agentsTable(agents) {
  if (!agents || !agents.length) return null;
  const table = h("div", { class: "scroll" },
    h("table", { class: "plain" },
      h("thead", {}, h("tr", {}, ["name", "model", "persona", "role", "endpoint"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, agents.map((a) => h("tr", {},
        h("td", {}, a.name), h("td", {}, a.model), h("td", {}, a.persona || ""), h("td", {}, a.role || ""),
        h("td", { class: "mono" }, a.base_url || ""))))));
  return h("section", { class: "agents" }, fold(`agents (${agents.length}): ${agents.map((a) => a.name).join(", ")}`, table, "agents"));
}

/** The question, then `extra` (e.g. the live status), the outcome, agents and rounds. */
export function deliberationView(d, { extra = null } = {}) {
  const info = agentInfo(d.agents);
  return [
    h("section", { class: "question" },
      h("h2", {}, "Question"),
      h("pre", { class: "text question-text" }, d.question),
      h("p", { class: "hint" }, `kind ${d.kind} · run `, h("a", { href: `/ui/runs/${encodeURIComponent(d.id)}` }, d.id))),
    extra,
    outcome(d),
    agentsTable(d.agents),
    d.config && Object.keys(d.config).length ? fold("configuration", JSON.stringify(d.config, null, 2), "config") : null,
    h("div", { class: "rounds" }, (d.rounds || []).map((r) => roundSection(fromRecord(r), { agentInfo: info, live: false }))),
  ];
}
