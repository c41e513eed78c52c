// The Ask page: a question, a council, a kind and rounds; the run streams in live over the
// chat API's SSE (nsed.stream_events), round by round, and Cancel stops it (the server
// cancels a deliberation whose client has gone).

import { getJSON, streamChat } from "./api.js";
import { h, replace, fmtInt, fmtUsd, fmtSeconds } from "./dom.js";
import { agentInfo, deliberationView } from "./deliberation.js";
import { roundSection } from "./round.js";

const KINDS = ["math", "code", "text"];
const TEAM_EVENTS = {
  agent_benched: (e) => `benched ${e.agent}: ${e.reason}${e.cooldown_s ? ` (cooldown ${fmtSeconds(e.cooldown_s)})` : ""}`,
  agent_signed_on: (e) => `signed on ${e.agent}${e.replaces ? ` in place of ${e.replaces}` : ""}${e.probation ? " (probation)" : ""}`,
  agent_promoted: (e) => `promoted ${e.agent}${e.reason ? `: ${e.reason}` : ""}`,
  agent_released: (e) => `released ${e.agent}${e.reason ? `: ${e.reason}` : ""}`,
  agent_failed: (e) => `${e.agent} failed to ${e.phase} in round ${e.round}: ${e.error}`,
};

function field(label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hint || null);
}

/** Live state of one streamed deliberation, drawn into `root`. */
class LiveRun {
  constructor(root, question, info, onAbort) {
    this.root = root;
    this.question = question;
    this.info = info;
    this.rounds = new Map();
    this.sections = new Map();
    this.log = [];
    this.runId = null;
    this.status = "starting";
    this.started = performance.now();
    this.statusBox = h("div", { class: "live-status", role: "status", "aria-live": "polite" });
    this.cancel = h("button", { type: "button", class: "danger", id: "cancel", onclick: onAbort }, "Cancel");
    this.logBox = h("ul", { class: "events", "aria-label": "team events" });
    this.roundsBox = h("div", { class: "rounds" });
    replace(root,
      h("section", { class: "question" }, h("h2", {}, "Question"), h("pre", { class: "text question-text" }, question)),
      h("div", { class: "live-bar" }, this.statusBox, this.cancel),
      this.logBox, this.roundsBox);
    this.timer = setInterval(() => this.drawStatus(), 500);
    this.drawStatus();
  }

  accrued() {
    let tokens = 0;
    let cost = 0;
    for (const round of this.rounds.values()) {
      if (round.record) {
        tokens += (round.record.prompt_tokens || 0) + (round.record.completion_tokens || 0);
        cost += round.record.cost_usd || 0;
      } else {
        for (const p of round.proposals) tokens += (p.prompt_tokens || 0) + (p.completion_tokens || 0);
      }
    }
    return { tokens, cost };
  }

  drawStatus() {
    const { tokens, cost } = this.accrued();
    const elapsed = (performance.now() - this.started) / 1000;
    replace(this.statusBox,
      h("b", { id: "live-state" }, this.status),
      ` · ${fmtSeconds(elapsed)} · `,
      h("span", { id: "live-tokens" }, `${fmtInt(tokens)} tokens`),
      ` · ${fmtUsd(cost)}`,
      this.runId ? [" · ", h("a", { href: `/ui/runs/${encodeURIComponent(this.runId)}`, id: "run-link" }, "permalink")] : null);
  }

  note(text, kind = "") {
    this.log.push(text);
    this.logBox.append(h("li", { class: kind }, text));
  }

  drawRound(index) {
    const round = this.rounds.get(index);
    let section = this.sections.get(index);
    const fresh = roundSection(round, { agentInfo: this.info, live: true });
    if (!section) {
      section = h("div", { class: "round-slot" });
      this.sections.set(index, section);
      this.roundsBox.append(section);
    }
    replace(section, fresh);
  }

  on(event) {
    const round = this.rounds.get(event.round);
    switch (event.type) {
      case "round_started":
        this.rounds.set(event.round, { index: event.round, agents: event.agents, proposals: [], reviews: [], failures: [], record: null, phase: "proposing" });
        this.status = `round ${event.round} · proposing`;
        this.drawRound(event.round);
        break;
      case "proposal":
        if (round) {
          round.proposals.push(event.proposal);
          if (round.proposals.length + round.failures.length >= round.agents.length) {
            round.phase = "reviewing";
            this.status = `round ${event.round} · reviewing`;
          }
          this.drawRound(event.round);
        }
        break;
      case "review":
        if (round) {
          round.phase = "reviewing";
          round.reviews.push(...event.reviews);
          this.status = `round ${event.round} · reviewing`;
          this.drawRound(event.round);
        }
        break;
      case "agent_failed":
        if (round) {
          round.failures.push({ agent: event.agent, phase: event.phase, error: event.error });
          this.drawRound(event.round);
        }
        this.note(TEAM_EVENTS.agent_failed(event), "warn");
        break;
      case "round_scored": {
        const r = event.record;
        const agents = round ? round.agents : r.proposals.map((p) => p.agent);
        this.rounds.set(event.round, { index: event.round, agents, proposals: r.proposals, reviews: r.reviews, failures: r.failures || [], record: r });
        this.status = `round ${event.round} scored · winner ${r.winner ?? "none"}`;
        this.drawRound(event.round);
        break;
      }
      case "finished":
        this.status = `finished · ${event.stopped_because}`;
        break;
      case "answer":
        break;
      default:
        // Team changes by name; an event this page does not know yet is still listed.
        if (TEAM_EVENTS[event.type]) this.note(TEAM_EVENTS[event.type](event));
        else this.note(`${event.type}: ${JSON.stringify({ ...event, type: undefined })}`);
    }
    this.drawStatus();
  }

  stop(status) {
    this.status = status;
    clearInterval(this.timer);
    this.cancel.disabled = true;
    this.drawStatus();
  }
}

export async function askPage(main, { handleError }) {
  let councils = [];
  try {
    councils = (await getJSON("/v1/councils")).data;
  } catch (error) {
    handleError(error);
    return;
  }
  const question = h("textarea", { id: "question", rows: "4", required: true, placeholder: "What is 17 * 23?" });
  const council = h("select", { id: "council" }, councils.map((c) => h("option", { value: c.id }, c.id)));
  const kind = h("select", { id: "kind" }, KINDS.map((k) => h("option", { value: k }, k)));
  const rounds = h("input", { id: "rounds", type: "number", min: "1", max: "50", inputmode: "numeric" });
  const minRounds = h("input", { id: "min-rounds", type: "number", min: "1", max: "50", inputmode: "numeric" });
  const seats = h("p", { class: "hint seats" });
  const submit = h("button", { type: "submit", id: "ask" }, "Ask the council");
  const errorBox = h("div", { class: "form-error" });
  const liveRoot = h("div", { class: "live", id: "live" });

  const chosen = () => councils.find((c) => c.id === council.value);
  const applyDefaults = () => {
    const c = chosen();
    if (!c) return;
    kind.value = c.kind;
    rounds.value = c.max_rounds;
    minRounds.value = Math.min(c.min_rounds, c.max_rounds);
    replace(seats, c.source === "catalog"
      ? "a catalog: the broker picks the team for each question"
      : `seats: ${c.agents.map((a) => `${a.name} (${a.model})`).join(", ")}`);
  };
  council.addEventListener("change", applyDefaults);
  applyDefaults();

  let controller = null;
  const form = h("form", { class: "ask-form", id: "ask-form" },
    field("Question", question),
    h("div", { class: "row wrap" },
      field("Council", council),
      field("Kind", kind),
      field("Rounds (at most)", rounds),
      field("Rounds (at least)", minRounds)),
    seats, h("div", { class: "row" }, submit), errorBox);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(errorBox);
    const text = question.value.trim();
    if (!text) {
      replace(errorBox, h("p", { class: "error", role: "alert" }, "Write a question first."));
      question.focus();
      return;
    }
    const c = chosen();
    const max = Number(rounds.value) || c.max_rounds;
    const min = Math.min(Number(minRounds.value) || 1, max);
    controller = new AbortController();
    const run = new LiveRun(liveRoot, text, agentInfo(c ? c.agents : []), () => controller.abort());
    submit.disabled = true;
    try {
      const runId = await streamChat(
        { model: council.value, messages: [{ role: "user", content: text }], nsed: { rounds: max, min_rounds: min, kind: kind.value, stream_events: true } },
        { signal: controller.signal, onStart: (id) => { run.runId = id; run.status = "started"; run.drawStatus(); }, onEvent: (e) => run.on(e) });
      run.stop(run.status);
      const d = await getJSON(`/v1/deliberations/${encodeURIComponent(runId)}`);
      history.replaceState(null, "", `/ui/runs/${encodeURIComponent(runId)}`);
      document.title = `nsed · ${d.final ?? "answer"}`;
      const done = h("div", { class: "live-bar done" }, run.statusBox);
      replace(liveRoot, deliberationView(d, { extra: [done, run.logBox] }));
    } catch (error) {
      if (error.name === "AbortError") {
        run.stop("cancelled");
        run.note("cancelled: the server stops the deliberation and its model calls", "warn");
      } else {
        run.stop("failed");
        replace(errorBox, h("p", { class: "error", role: "alert" }, error.message));
        handleError(error, { quiet: true });
      }
    } finally {
      submit.disabled = false;
      controller = null;
    }
  });

  replace(main, h("h1", {}, "Ask the council"), form, liveRoot);
  question.focus();
}
