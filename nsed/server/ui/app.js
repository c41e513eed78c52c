// The page's entry point: reads the address, draws the matching view, and asks for the
// API key when the server answers 401 (the key lives in this tab's sessionStorage only).
//
//   /ui/              Ask
//   /ui/runs          stored deliberations and benchmark runs
//   /ui/runs/{id}     one deliberation
//   /ui/bench/{id}    one benchmark run

import { apiKey, setApiKey } from "./api.js";
import { askPage } from "./ask.js";
import { benchPage } from "./bench.js";
import { h, replace } from "./dom.js";
import { deliberationPage, runsPage } from "./runs.js";

const main = document.getElementById("main");
const keyPanel = document.getElementById("key-panel");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyButton = document.getElementById("key-button");

function showKeyPanel(message) {
  keyPanel.hidden = false;
  const old = keyPanel.querySelector(".key-message");
  if (old) old.remove();
  if (message) keyForm.prepend(h("p", { class: "key-message error", role: "alert" }, message));
  keyInput.focus();
}

function drawKeyButton() {
  replace(keyButton, apiKey() ? "API key ✓" : "API key");
}

keyButton.addEventListener("click", () => {
  if (keyPanel.hidden) showKeyPanel();
  else keyPanel.hidden = true;
});
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(keyInput.value.trim());
  keyInput.value = "";
  keyPanel.hidden = true;
  drawKeyButton();
  route();
});
document.getElementById("key-forget").addEventListener("click", () => {
  setApiKey("");
  keyInput.value = "";
  drawKeyButton();
});

function handleError(error, { quiet = false } = {}) {
  if (error.needsKey) {
    showKeyPanel(apiKey() ? "The server refused this key: enter another one." : "This server needs an API key.");
  }
  if (!quiet) replace(main, h("h1", {}, "Could not load this page"), h("p", { class: "error", role: "alert" }, error.message));
}

function route() {
  const path = decodeURI(location.pathname).replace(/\/+$/, "");
  const ctx = { handleError };
  const nav = path.startsWith("/ui/runs") || path.startsWith("/ui/bench") ? "runs" : "ask";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  let m;
  if (path === "/ui" || path === "") return askPage(main, ctx);
  if (path === "/ui/runs") return runsPage(main, ctx);
  if ((m = path.match(/^\/ui\/runs\/([^/]+)$/))) return deliberationPage(main, m[1], ctx);
  if ((m = path.match(/^\/ui\/bench\/([^/]+)$/))) return benchPage(main, m[1], ctx);
  replace(main, h("h1", {}, "No such page"), h("p", {}, "Try ", h("a", { href: "/ui/" }, "Ask"), " or ", h("a", { href: "/ui/runs" }, "Runs"), "."));
  return null;
}

drawKeyButton();
route();
