// One benchmark run: accuracy per method with intervals, the winner's accuracy per round
// (with the fitted U(t)), accuracy against tokens, and every problem's answers, filterable.

import { getJSON } from "./api.js";
import { h, replace, fmtInt, fmtUsd, fmtPct, fmtSeconds, fmtDate, fmtSigned } from "./dom.js";
import { intervalChart, legend, xyChart } from "./charts.js";

function methodsTable(methods) {
  return h("div", { class: "scroll" },
    h("table", { class: "plain", id: "methods-table" },
      h("caption", {}, "Methods (answers of sample 0; a failed answer counts as wrong)"),
      h("thead", {}, h("tr", {}, ["method", "n", "correct", "accuracy", "95% CI", "tokens / problem", "completion / problem", "cost", "latency", "errors"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, Object.entries(methods).map(([name, m]) => h("tr", { dataset: { method: name } },
        h("th", { scope: "row" }, name),
        h("td", { class: "num" }, String(m.n)),
        h("td", { class: "num" }, String(m.correct)),
        h("td", { class: "num accuracy" }, fmtPct(m.accuracy)),
        h("td", { class: "num" }, `${fmtPct(m.ci95[0])}–${fmtPct(m.ci95[1])}`),
        h("td", { class: "num" }, fmtInt(Math.round(m.tokens.per_problem))),
        h("td", { class: "num" }, fmtInt(Math.round(m.tokens.completion_per_problem))),
        h("td", { class: "num" }, fmtUsd(m.cost_usd)),
        h("td", { class: "num" }, fmtSeconds(m.latency_s)),
        h("td", { class: "num" }, String(m.errors)))))));
}

function agentsTable(agents) {
  if (!agents.length) return null;
  return h("div", { class: "scroll" },
    h("table", { class: "plain" },
      h("caption", {}, "Agents in the deliberations"),
      h("thead", {}, h("tr", {}, ["agent", "wins", "round wins", "rounds", "mean support", "failures"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, agents.map((a) => h("tr", {},
        h("th", { scope: "row" }, a.name), h("td", { class: "num" }, String(a.wins)), h("td", { class: "num" }, String(a.round_wins)),
        h("td", { class: "num" }, String(a.rounds)), h("td", { class: "num" }, fmtSigned(a.mean_support)), h("td", { class: "num" }, String(a.failures)))))));
}

function problemsSection(problems, methods) {
  const wrongOnly = h("input", { type: "checkbox", id: "filter-wrong" });
  const wrongOf = h("select", { id: "filter-wrong-method", "aria-label": "which method is wrong" },
    h("option", { value: "" }, "any method"), methods.map((m) => h("option", { value: m }, m)));
  const disagree = h("input", { type: "checkbox", id: "filter-disagree" });
  const count = h("p", { class: "hint", id: "problem-count", role: "status" });
  const body = h("tbody", {});
  const draw = () => {
    const m = wrongOf.value;
    const shown = problems.filter((p) => {
      if (wrongOnly.checked) {
        const answers = m ? [p.answers[m]].filter(Boolean) : Object.values(p.answers);
        if (!answers.some((a) => !a.correct)) return false;
      }
      return !disagree.checked || p.disagree;
    });
    replace(count, `${shown.length} of ${problems.length} problems`);
    replace(body, shown.map((p) => h("tr", { dataset: { problem: p.problem_id } },
      h("th", { scope: "row" }, p.problem_id),
      h("td", { class: "mono" }, p.gold ?? "—"),
      methods.map((name) => {
        const a = p.answers[name];
        if (!a) return h("td", { class: "none" }, "·");
        const text = a.error ? `error: ${a.error}` : a.predicted ?? "—";
        const content = a.deliberation_id ? h("a", { href: `/ui/runs/${encodeURIComponent(a.deliberation_id)}` }, text) : text;
        return h("td", { class: ["mono", a.correct ? "right" : "wrong"], title: a.correct ? "correct" : "wrong" },
          h("span", { class: "mark", "aria-label": a.correct ? "correct" : "wrong" }, a.correct ? "✓ " : "✗ "), content);
      }))));
  };
  for (const control of [wrongOnly, wrongOf, disagree]) control.addEventListener("change", draw);
  draw();
  return h("section", { "aria-labelledby": "h-problems" },
    h("h2", { id: "h-problems" }, "Problems"),
    h("div", { class: "row wrap filters" },
      h("label", {}, wrongOnly, " wrong only, by "), wrongOf,
      h("label", {}, disagree, " methods disagree")),
    count,
    h("div", { class: "scroll" },
      h("table", { class: "plain problems", id: "problems-table" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "problem"), h("th", { scope: "col" }, "gold"), methods.map((m) => h("th", { scope: "col" }, m)))),
        body)));
}

export async function benchPage(main, runId, { handleError }) {
  let page;
  try {
    page = await getJSON(`/v1/bench/runs/${encodeURIComponent(runId)}`);
  } catch (error) {
    handleError(error);
    return;
  }
  const { run, report } = page;
  const methods = Object.keys(report.methods);
  document.title = `nsed · ${run.run_id}`;
  const perMethod = methods.map((name) => {
    const m = report.methods[name];
    return { label: name, value: m.accuracy, lo: m.ci95[0], hi: m.ci95[1] };
  });
  const roundsChart = report.rounds.length
    ? xyChart({
      label: "accuracy of the winner per round",
      xLabel: "round",
      integerX: true,
      series: [{ label: "winner accuracy", line: true, points: report.rounds.map((r) => ({ x: r.round, value: r.accuracy, lo: r.ci95[0], hi: r.ci95[1] })) }],
      curve: page.fit_curve,
      vline: page.t_opt,
    })
    : h("p", { class: "hint" }, "no deliberation results in this run");
  const tokensChart = xyChart({
    label: "accuracy against completion tokens per problem",
    xLabel: "completion tokens per problem (what --match-compute equalises)",
    series: methods.map((name) => {
      const m = report.methods[name];
      return { label: name, points: [{ x: m.tokens.completion_per_problem, value: m.accuracy, lo: m.ci95[0], hi: m.ci95[1] }] };
    }),
  });
  replace(main,
    h("h1", {}, `Benchmark run ${run.run_id}`),
    h("p", { class: "hint" }, `${run.benchmark} · ${run.status} · ${run.expected ? `${run.answers} of ${run.expected}` : run.answers} answers · started ${fmtDate(run.created_at)}`),
    h("div", { class: "charts" },
      h("figure", {}, h("figcaption", {}, "Accuracy per method, 95% Wilson interval"), intervalChart(perMethod, "accuracy per method")),
      h("figure", {}, h("figcaption", {}, "Accuracy of the winner per round"), roundsChart, h("p", { class: "hint", id: "fit-note" }, page.fit_note)),
      h("figure", {}, h("figcaption", {}, "Accuracy against tokens"), tokensChart, legend(methods))),
    methodsTable(report.methods),
    agentsTable(report.agents),
    problemsSection(page.problems, methods));
}
