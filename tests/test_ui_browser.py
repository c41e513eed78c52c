"""The web page in a real browser: headless Chromium against ``nsed serve`` on 127.0.0.1.

The councils are scripted agents on the scripted OpenAI-compatible server; every expectation
about the page is checked against the trace the server itself returns
(``GET /v1/deliberations/{id}``), so the page must show what the council really did. One
browser serves the whole module; each test opens its own tab (sessionStorage is per tab).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from nsed.benchmarks.runner import BenchOptions, run_benchmark
from nsed.broker.catalog import Catalog
from nsed.config import DeliberationConfig, TeamSpec
from nsed.server import BackgroundServer, CouncilSpec, ServerSettings
from nsed.store import Store
from tests.browser import chromium, save_readme_screenshot, screenshot
from tests.council_scripts import agent, is_review, judge_by_answer, team_dict
from tests.helpers import catalog_dict
from tests.scripted_server import ChatRequest, Reply, ScriptedServer
from tests.test_bench_runner import quick_gold, solver

pytestmark = pytest.mark.browser

KEY = "page-test-key"
QUESTION = "What is 17 * 23?"
EVIL = "<script>window.__pwned = 1</script><img src=x onerror=\"alert('pwned')\">"
STEP_S = 0.25  # each scripted call takes this long, so the page is seen filling in
TIMEOUT_MS = 30_000


def gamma_reviews(request: ChatRequest) -> str:
    """gamma's reviews: one non-numeric score, one real one, and a label it was never shown."""
    labels = sorted(request.candidates())
    reviews = [{"candidate": labels[0], "score": "lots", "critique": "unsure"}]
    reviews += [{"candidate": label, "score": 35, "critique": "fine"} for label in labels[1:]]
    reviews.append({"candidate": "Q", "score": 50, "critique": "who is Q?"})
    return json.dumps({"reviews": reviews})


def mallory(request: ChatRequest) -> Reply:
    """Proposes and critiques in markup: the page must show it as text."""
    if is_review(request):
        reviews = [
            {"candidate": label, "score": 90, "critique": EVIL} for label in request.candidates()
        ]
        return Reply(content=json.dumps({"reviews": reviews}))
    content = json.dumps(
        {"reasoning": f"reasoning {EVIL}", "answer": f"I say {EVIL} so \\boxed{{391}}"}
    )
    return Reply(content=content)


# A catalog council: the broker seats the five best (fa-flaky first); fa-spare waits.
FREE_AGENTS = {"fa-a": 0.8, "fa-b": 0.8, "fa-c": 0.8, "fa-d": 0.7, "fa-spare": 0.3}

# The main council's seats and the model ids they send (the scripted server routes by model).
MODELS = {"alpha": "qwen3-8b", "beta": "llama-3.1-8b", "gamma": "gemma-3-4b"}


def spec(url: str, names: list[str], **config: Any) -> CouncilSpec:
    base = {"embeddings": "off", "kind": "math", "seed": 7, "max_rounds": 2, "min_rounds": 2}
    team = team_dict(url, names)
    for seat in team["models"]:
        seat["model"] = MODELS.get(seat["name"], seat["name"])
    return CouncilSpec(
        team=TeamSpec.model_validate(team),
        config=DeliberationConfig.model_validate({**base, **config}),
    )


@pytest.fixture(scope="module")
def agents() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        judge = judge_by_answer("391", good=80, bad=-60)
        server.route(MODELS["alpha"], agent("391", judge=judge, delay_s=STEP_S))
        server.route(MODELS["beta"], agent("391", judge=judge, delay_s=STEP_S))
        server.route(MODELS["gamma"], agent("392", review_override=gamma_reviews, delay_s=STEP_S))
        server.route("mallory", mallory)
        server.route("slow-a", agent("391", delay_s=3.0))
        server.route("slow-b", agent("391", delay_s=3.0))
        for name in FREE_AGENTS:
            server.route(name, agent("391", judge=judge))
        for name in ("fa-flaky", "down-a", "down-b"):
            server.route(name, lambda request: Reply(status=500, content="overloaded"))
        gold = quick_gold(4)
        for name, offset in {"solver-a": 0, "solver-b": 0, "solver-c": 1}.items():
            server.route(name, solver(gold, offset))
        yield server


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('ui') / 'nsed.db'}"


@pytest.fixture(scope="module")
def bench_run_id(agents: ScriptedServer, store_url: str) -> str:
    """A real benchmark run (quick set, nsed against single and vote) in the server's store."""
    store = Store(store_url)
    team = TeamSpec.model_validate(team_dict(agents.url, ["solver-a", "solver-b", "solver-c"]))
    options = BenchOptions(
        benchmark="quick",
        limit=4,
        methods=["nsed", "single", "vote"],
        rounds=3,
        min_rounds=3,
        deliberation={"embeddings": "off"},
    )
    try:
        summary = anyio.run(
            lambda: run_benchmark(options, store=store, team=team, run_id="quick-page")
        )
    finally:
        store.dispose()
    assert summary.complete
    return summary.run_id


@pytest.fixture(scope="module")
def nsed(agents: ScriptedServer, store_url: str, bench_run_id: str) -> Iterator[BackgroundServer]:
    settings = ServerSettings(
        councils={
            "council": spec(agents.url, ["alpha", "beta", "gamma"]),
            "markup": spec(agents.url, ["mallory", "alpha"], max_rounds=1, min_rounds=1),
            "slow": spec(agents.url, ["slow-a", "slow-b"], max_rounds=3, min_rounds=3),
            "down": spec(agents.url, ["down-a", "down-b"]),
            "brokered": CouncilSpec(
                catalog=Catalog.model_validate(
                    catalog_dict(agents.url, {"fa-flaky": 0.9, **FREE_AGENTS})
                ),
                config=DeliberationConfig(
                    embeddings="off", kind="math", seed=7, max_rounds=2, min_rounds=2
                ),
            ),
        },
        api_keys=[KEY],
        store_url=store_url,
        heartbeat_s=0.5,
    )
    with BackgroundServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def browser(nsed: BackgroundServer) -> Iterator[Any]:
    """Started after the servers: Playwright's sync API holds an event loop in this thread."""
    with chromium() as browser:
        yield browser


class Tab:
    """One browser tab on the server, recording dialogs, requests and console errors."""

    def __init__(self, browser: Any, server: BackgroundServer, **context: Any) -> None:
        self.server = server
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str) -> Any:
        self.page.goto(self.server.root + path)
        return self.page

    def enter_key(self) -> None:
        """Type the key into the panel the page opens on its first 401 (keyboard only)."""
        self.page.wait_for_selector("#key-input:focus")
        self.page.keyboard.type(KEY)
        self.page.keyboard.press("Enter")
        self.page.wait_for_selector("#key-panel", state="hidden")

    def close(self) -> None:
        assert self.errors == [], f"script errors on the page: {self.errors}"
        elsewhere = [u for u in self.requests if not u.startswith(self.server.root + "/")]
        assert elsewhere == [], f"the page asked for something outside its server: {elsewhere}"
        self.context.close()


@pytest.fixture
def tab(browser: Any, nsed: BackgroundServer) -> Iterator[Tab]:
    opened = Tab(browser, nsed, viewport={"width": 1280, "height": 900})
    yield opened
    opened.close()


def trace(server: BackgroundServer, run_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/deliberations/{run_id}", headers={"Authorization": f"Bearer {KEY}"}
    )
    response.raise_for_status()
    return response.json()


def ask_api(server: BackgroundServer, model: str, question: str = QUESTION) -> httpx.Response:
    response = httpx.post(
        f"{server.url}/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": question}]},
        timeout=60,
    )
    response.raise_for_status()
    return response


def run_id_of(page: Any) -> str:
    match = re.fullmatch(r".*/ui/runs/([A-Za-z0-9_-]+)", page.url)
    assert match, f"the page did not move to its run's address: {page.url}"
    return match.group(1)


def check_rounds(page: Any, d: dict[str, Any]) -> None:
    """Every round, card, matrix cell and support bar on the page matches the trace."""
    models = {a["name"]: a["model"] for a in d["agents"]}
    assert page.locator("section.round").count() == len(d["rounds"])
    for record in d["rounds"]:
        section = page.locator(f'section.round[data-round="{record["index"]}"]')
        assert section.locator(".round-winner").inner_text() == record["winner"]
        for proposal in record["proposals"]:
            name = proposal["agent"]
            card = section.locator(f'.card[data-agent="{name}"]')
            assert card.locator("[data-final]").inner_text() == proposal["final"]
            assert models[name] in card.locator(".model").inner_text()
            winner_badge = card.locator(".badge.win").count()
            assert winner_badge == (1 if name == record["winner"] else 0)
        matrix = section.locator("table.matrix")
        for review in record["reviews"]:
            reviewer, candidate = review["reviewer"], review["candidate"]
            if candidate is None:
                loose = matrix.locator(f'td.loose[data-reviewer="{reviewer}"]')
                assert review["dropped_reason"] in loose.inner_text()
                continue
            cell = matrix.locator(f'td[data-reviewer="{reviewer}"][data-candidate="{candidate}"]')
            if review["dropped_reason"]:
                assert cell.get_attribute("data-dropped") == review["dropped_reason"]
                assert review["dropped_reason"] in cell.inner_text()
            else:
                assert float(cell.get_attribute("data-score")) == review["score"]
                assert cell.inner_text().strip() == f"{review['score']:+.0f}"
        for name in (p["agent"] for p in record["proposals"]):
            self_cell = matrix.locator(f'td.self[data-reviewer="{name}"][data-candidate="{name}"]')
            assert self_cell.count() == 1
        bars = section.locator(".bar-row")
        assert bars.count() == len(record["support"])
        for name, value in record["support"].items():
            bar = section.locator(f'.bar-row[data-candidate="{name}"]')
            assert float(bar.get_attribute("data-support")) == pytest.approx(value)


# --- Ask -------------------------------------------------------------------------------------


def test_ask_with_the_keyboard_streams_the_rounds_and_shows_the_winner(tab, nsed, tmp_path):
    page = tab.open("/ui/")
    tab.enter_key()  # the first call is a 401: the page asks for the key, once
    page.wait_for_selector("#question:focus")
    page.keyboard.type(QUESTION)
    page.keyboard.press("Tab")  # council
    page.keyboard.press("Tab")  # kind
    page.keyboard.press("Tab")  # rounds (at most)
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Tab")  # rounds (at least)
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "ask"
    page.keyboard.press("Enter")

    # Live: round 1's cards fill in before the deliberation has finished.
    page.wait_for_selector('section.round[data-round="1"] .card[data-agent="alpha"] [data-final]')
    assert page.locator("#final-answer").count() == 0
    assert page.locator("#cancel").is_enabled()
    screenshot(page, tmp_path / "ask-live.png")
    page.wait_for_selector("#final-answer")

    d = trace(nsed, run_id_of(page))
    assert d["final"] == "391" and d["winner"] in ("alpha", "beta")
    assert page.locator("#final-answer").inner_text() == d["final"]
    assert page.locator("#winner").inner_text() == d["winner"]
    assert page.locator("#stop-reason").inner_text() == d["stopped_because"]
    check_rounds(page, d)
    # gamma's unusable reviews are shown with their reasons, never as scores.
    gamma_row = page.locator('section.round[data-round="1"] td[data-reviewer="gamma"]')
    assert "non-numeric score" in " ".join(gamma_row.all_inner_texts())
    assert "unknown label Q" in " ".join(gamma_row.all_inner_texts())
    tokens = page.locator("#live-tokens").inner_text()
    total = d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"]
    assert tokens == f"{total:,} tokens"

    # The key lives in this tab's sessionStorage only: no cookie, no localStorage.
    assert page.evaluate("sessionStorage.getItem('nsed-api-key')") == KEY
    assert page.evaluate("localStorage.length") == 0
    assert tab.context.cookies() == []
    screenshot(page, tmp_path / "ask.png")
    save_readme_screenshot(page, ".live-bar.done")

    # The same tab moves on without asking for the key again.
    page.locator("nav a", has_text="Runs").click()
    page.wait_for_selector(f'tr[data-run="{d["id"]}"]')
    assert page.locator("#key-panel").is_hidden()
    assert tab.dialogs == []


def test_cancel_stops_the_deliberation_on_the_server(tab, nsed, agents):
    page = tab.open("/ui/")
    tab.enter_key()
    page.fill("#question", "Take your time: what is 2 + 2?")
    page.select_option("#council", "nsed/slow")
    page.click("#ask")
    page.wait_for_selector('section.round[data-round="1"]')
    page.click("#cancel")
    page.wait_for_selector("#live-state:text('cancelled')")
    health = {}
    for _ in range(100):
        health = httpx.get(f"{nsed.root}/health").json()
        if health["in_flight"] == 0:
            break
        page.wait_for_timeout(50)
    assert health["in_flight"] == 0
    before = len(agents.requests_for("slow-a"))
    page.wait_for_timeout(3500)  # longer than one scripted call: nothing new is asked
    assert len(agents.requests_for("slow-a")) == before


def test_team_changes_and_failed_calls_appear_as_they_happen(tab, nsed, tmp_path):
    page = tab.open("/ui/")
    tab.enter_key()
    page.select_option("#council", "nsed/brokered")
    assert "broker picks the team" in page.locator(".seats").inner_text()
    page.fill("#question", QUESTION)
    page.click("#ask")
    page.wait_for_selector("#final-answer")
    d = trace(nsed, run_id_of(page))
    events = page.locator(".events").inner_text()
    assert "fa-flaky failed to propose in round 1" in events
    assert "benched fa-flaky: 2 failed calls in a row" in events
    assert "signed on fa-spare in place of fa-flaky (probation)" in events
    first = page.locator('section.round[data-round="1"]')
    assert "failed to propose" in first.locator('.card[data-agent="fa-flaky"]').inner_text()
    second = page.locator('section.round[data-round="2"]')
    assert second.locator('.card[data-agent="fa-spare"] [data-final]').inner_text() == "391"
    assert d["final"] == "391"
    check_rounds(page, d)
    screenshot(page, tmp_path / "brokered.png")


def test_a_refused_key_and_a_failed_council_are_said_plainly(tab):
    page = tab.open("/ui/")
    page.wait_for_selector("#key-input:focus")
    page.keyboard.type("not-the-key")
    page.keyboard.press("Enter")
    page.wait_for_selector(".key-message:text('refused this key')")
    assert page.locator("#key-panel").is_visible()
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    page.wait_for_selector("#question")
    page.fill("#question", QUESTION)
    page.select_option("#council", "nsed/down")
    page.click("#ask")
    page.wait_for_selector(".form-error .error")
    assert "HTTP 500" in page.locator(".form-error .error").inner_text()
    assert page.locator("#live-state").inner_text() == "failed"
    assert page.locator("#ask").is_enabled()  # ready for another try


# --- Stored runs -----------------------------------------------------------------------------


def test_a_stored_run_opens_by_its_url(browser, nsed, tmp_path):
    response = ask_api(nsed, "nsed/council", "What is 17 * 23, stored?")
    run_id = response.headers["x-nsed-run-id"]
    assert response.headers["x-nsed-run-url"] == f"/ui/runs/{run_id}"
    tab = Tab(browser, nsed, viewport={"width": 1280, "height": 900})
    page = tab.open(f"/ui/runs/{run_id}")
    tab.enter_key()
    page.wait_for_selector("#final-answer")
    d = trace(nsed, run_id)
    assert page.locator(".question-text").inner_text() == d["question"]
    assert page.locator("#final-answer").inner_text() == d["final"]
    check_rounds(page, d)
    # A reasoning is folded until it is opened, with the keyboard too.
    summary = page.locator(
        'section.round[data-round="1"] .card[data-agent="alpha"] summary', has_text="reasoning"
    )
    details = summary.locator("xpath=..")
    assert details.get_attribute("open") is None
    summary.focus()
    page.keyboard.press("Enter")
    assert details.get_attribute("open") is not None
    screenshot(page, tmp_path / "stored-run.png")

    # From the list of runs, by link.
    page.goto(f"{nsed.root}/ui/runs")
    link = page.locator(f'tr[data-run="{run_id}"] a')
    link.click()
    page.wait_for_url(f"**/ui/runs/{run_id}")
    page.wait_for_selector("#final-answer")
    screenshot(page, tmp_path / "runs-then-run.png")
    tab.close()


def test_model_text_is_shown_as_text_never_run(tab, nsed, tmp_path):
    page = tab.open("/ui/")
    tab.enter_key()
    page.fill("#question", f"Is this safe? {EVIL}")
    page.select_option("#council", "nsed/markup")
    page.click("#ask")
    page.wait_for_selector("#final-answer")
    run_id = run_id_of(page)
    for view in ("live", "stored"):
        if view == "stored":
            page.reload()  # the address is the run's page now; the tab keeps its key
            page.wait_for_selector("#final-answer")
        card = page.locator('.card[data-agent="mallory"]')
        card.locator("summary", has_text="reasoning").click()
        card.locator("summary", has_text="answer").click()
        assert card.inner_text().count(EVIL) == 2
        assert EVIL in page.locator(".question-text").inner_text()
        page.locator("summary", has_text="critiques").first.click()
        assert EVIL in page.locator(".critiques").first.inner_text()
        assert page.locator("main script, main img, main iframe").count() == 0
        assert page.evaluate("window.__pwned === undefined")
    assert tab.dialogs == []
    assert not [u for u in tab.requests if u.endswith("/x") or "pwned" in u]
    assert trace(nsed, run_id)["agents"][0]["name"] == "mallory"
    screenshot(page, tmp_path / "markup.png")


def test_a_benchmark_run_shows_its_plots_and_filters_its_problems(
    tab, nsed, bench_run_id, tmp_path
):
    page = tab.open("/ui/runs")
    tab.enter_key()
    page.locator(f'tr[data-run="{bench_run_id}"] a').click()
    page.wait_for_selector("#problems-table")
    report = httpx.get(
        f"{nsed.url}/bench/runs/{bench_run_id}", headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    methods = report["report"]["methods"]
    assert page.locator("svg.chart").count() == 3
    for name, stats in methods.items():
        row = page.locator(f'#methods-table tr[data-method="{name}"]')
        assert row.locator(".accuracy").inner_text() == f"{100 * stats['accuracy']:.1f}%"
    assert methods["single:solver-c"]["accuracy"] == 0.0 and methods["nsed"]["accuracy"] == 1.0
    assert page.locator("#fit-note").inner_text() == report["fit_note"]

    problems = report["problems"]
    rows = page.locator("#problems-table tbody tr")
    assert rows.count() == len(problems) == 4
    page.check("#filter-wrong")
    page.select_option("#filter-wrong-method", "nsed")
    assert rows.count() == 0  # the council was right on every problem
    page.select_option("#filter-wrong-method", "single:solver-c")
    assert rows.count() == 4
    page.uncheck("#filter-wrong")
    page.check("#filter-disagree")
    assert rows.count() == sum(1 for p in problems if p["disagree"]) == 4
    assert page.locator("#problem-count").inner_text() == "4 of 4 problems"
    nsed_link = rows.first.locator("td a").first
    assert nsed_link.get_attribute("href").startswith("/ui/runs/")
    screenshot(page, tmp_path / "bench.png")


def test_a_run_reads_on_a_phone(browser, nsed, tmp_path):
    run_id = ask_api(nsed, "nsed/council", "What is 17 * 23, on a phone?").headers["x-nsed-run-id"]
    tab = Tab(browser, nsed, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = tab.open(f"/ui/runs/{run_id}")
    tab.enter_key()
    page.wait_for_selector("#final-answer")
    # Nothing is wider than the screen: wide tables scroll inside their own box.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, tmp_path / "phone.png")
    tab.close()
