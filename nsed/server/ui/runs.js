// The Runs page (stored deliberations and benchmark runs) and the page of one deliberation.

import { getJSON } from "./api.js";
import { h, replace, clip, fmtInt, fmtUsd, fmtDate } from "./dom.js";
import { deliberationView } from "./deliberation.js";

function table(caption, columns, rows, empty) {
  if (!rows.length) return h("p", { class: "hint" }, empty);
  return h("div", { class: "scroll" },
    h("table", { class: "plain list" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}

export async function runsPage(main, { handleError }) {
  let deliberations;
  let bench;
  try {
    [deliberations, bench] = await Promise.all([getJSON("/v1/deliberations?limit=200"), getJSON("/v1/bench/runs")]);
  } catch (error) {
    handleError(error);
    return;
  }
  const storeNote = deliberations.store
    ? null
    : h("p", { class: "hint" }, "This server keeps no store: only the runs it did since it started are listed. `nsed ui` (or `nsed serve --store`) keeps them.");
  const dRows = deliberations.data.map((d) => h("tr", { dataset: { run: d.id } },
    h("td", {}, h("a", { href: `/ui/runs/${encodeURIComponent(d.id)}` }, clip(d.question, 90))),
    h("td", { class: "mono" }, d.final ?? "—"),
    h("td", {}, d.winner ?? "—"),
    h("td", { class: "num" }, String(d.rounds)),
    h("td", {}, d.stopped_because),
    h("td", { class: "num" }, fmtInt(d.prompt_tokens + d.completion_tokens)),
    h("td", { class: "num" }, fmtUsd(d.cost_usd)),
    h("td", {}, fmtDate(d.created_at))));
  const bRows = bench.data.map((b) => h("tr", { dataset: { run: b.run_id } },
    h("td", {}, h("a", { href: `/ui/bench/${encodeURIComponent(b.run_id)}` }, b.run_id)),
    h("td", {}, b.benchmark),
    h("td", {}, b.methods.join(", ")),
    h("td", {}, b.status),
    h("td", { class: "num" }, b.expected ? `${b.answers} / ${b.expected}` : String(b.answers)),
    h("td", {}, fmtDate(b.created_at))));
  replace(main,
    h("h1", {}, "Runs"),
    h("section", { "aria-labelledby": "h-deliberations" },
      h("h2", { id: "h-deliberations" }, "Deliberations"), storeNote,
      table("Newest first", ["question", "final", "winner", "rounds", "stopped", "tokens", "cost", "started"], dRows,
        "No deliberations yet: ask one on the Ask page, or run `nsed ask --store`.")),
    h("section", { "aria-labelledby": "h-bench" },
      h("h2", { id: "h-bench" }, "Benchmark runs"),
      table("Newest first", ["run", "benchmark", "methods", "status", "answers", "started"], bRows,
        bench.store ? "No benchmark runs in this store: `nsed bench quick --team team.toml` makes one." : "This server keeps no store, so it has no benchmark runs.")));
}

export async function deliberationPage(main, runId, { handleError }) {
  let d;
  try {
    d = await getJSON(`/v1/deliberations/${encodeURIComponent(runId)}`);
  } catch (error) {
    handleError(error);
    return;
  }
  document.title = `nsed · ${clip(d.question, 40)}`;
  replace(main, h("h1", {}, "Deliberation"), deliberationView(d));
}
