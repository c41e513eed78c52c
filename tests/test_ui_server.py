"""The web page's server side, over real HTTP: its files, its JSON, ``nsed ui`` and the links
``nsed ask`` prints. (What a person sees in a browser is in ``test_ui_browser.py``.)"""

from __future__ import annotations

import json
import re
import select
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import anyio
import httpx
import pytest

from nsed.benchmarks.reports import build_report, problem_rows
from nsed.benchmarks.runner import BenchOptions, run_benchmark
from nsed.config import DeliberationConfig, TeamSpec
from nsed.links import bench_path, run_path, run_url, server_root
from nsed.server import BackgroundServer, CouncilSpec, ServerSettings
from nsed.server.webui import UI_DIR
from nsed.store import Store
from tests.council_scripts import agent, judge_by_answer, team_dict
from tests.helpers import nsed_command, nsed_env, run_nsed
from tests.scripted_server import ScriptedServer
from tests.test_bench_runner import quick_gold, solver, write_team

KEY = "ui-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NAMES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def agents() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        judge = judge_by_answer("391")
        for name, final in zip(NAMES, ["391", "391", "392"], strict=True):
            server.route(name, agent(final, judge=judge))
        gold = quick_gold(3)
        for name, offset in {"solver-a": 0, "solver-b": 0, "solver-c": 1}.items():
            server.route(name, solver(gold, offset))
        yield server


def settings(agents: ScriptedServer, **extra: object) -> ServerSettings:
    config = DeliberationConfig(embeddings="off", kind="math", max_rounds=1, min_rounds=1)
    team = TeamSpec.model_validate(team_dict(agents.url, NAMES))
    return ServerSettings(councils={"council": CouncilSpec(team=team, config=config)}, **extra)


def ask(server: BackgroundServer, question: str = "What is 17 * 23?") -> httpx.Response:
    response = httpx.post(
        f"{server.url}/chat/completions",
        headers=AUTH,
        json={"model": "nsed/council", "messages": [{"role": "user", "content": question}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


# --- The page's files ------------------------------------------------------------------------


def test_every_page_address_is_the_page_under_a_policy_without_inline_scripts(agents):
    with BackgroundServer(settings(agents, api_keys=[KEY])) as server:
        for path in ("/ui/", "/ui/runs", "/ui/runs/abc", "/ui/bench/quick-1", "/ui/what"):
            page = httpx.get(server.root + path)  # no key: the files hold no data
            assert page.status_code == 200, path
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe" not in policy
            assert "default-src 'none'" in policy and "connect-src 'self'" in policy
            assert page.headers["x-content-type-options"] == "nosniff"
            assert '<script type="module" src="/ui/static/app.js">' in page.text
        root = httpx.get(server.root + "/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        assert httpx.get(server.root + "/ui").headers["location"] == "/ui/"
        script = httpx.get(server.root + "/ui/static/app.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "content-security-policy" in script.headers
        for missing in ("/ui/static/nope.js", "/ui/static/..%2Fwebui.py", "/ui/static/a/b.js"):
            assert httpx.get(server.root + missing).status_code == 404, missing


def test_every_file_the_page_loads_is_shipped_and_served(agents):
    index = (UI_DIR / "index.html").read_text()
    wanted = set(re.findall(r'"/ui/static/([\w.-]+)"', index))
    for script in UI_DIR.glob("*.js"):
        wanted |= set(re.findall(r'from "\./([\w.-]+)"', script.read_text()))
    assert {"app.js", "style.css", "icon.svg", "api.js", "round.js", "charts.js"} <= wanted
    with BackgroundServer(settings(agents)) as server:
        for name in sorted(wanted):
            assert httpx.get(f"{server.root}/ui/static/{name}").status_code == 200, name


def test_the_scripts_never_parse_text_as_html():
    """Model text is untrusted: the page builds DOM nodes, it never hands strings to the HTML
    parser or to eval (the browser test checks the result; this keeps the door shut)."""
    banned = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function"
    )
    for script in UI_DIR.glob("*.js"):
        assert not banned.findall(script.read_text()), script.name
    assert "<script>" not in (UI_DIR / "index.html").read_text()  # nothing inline either


# --- The JSON the page reads -----------------------------------------------------------------


def test_the_lists_need_the_servers_key(agents):
    with BackgroundServer(settings(agents, api_keys=[KEY])) as server:
        for path in ("/councils", "/deliberations", "/bench/runs", "/bench/runs/x"):
            response = httpx.get(server.url + path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "missing_api_key"
        councils = httpx.get(server.url + "/councils", headers=AUTH).json()
        assert councils["store"] is False
        (council,) = councils["data"]
        assert council["id"] == "nsed/council" and council["source"] == "team"
        assert [a["name"] for a in council["agents"]] == NAMES
        assert (council["kind"], council["max_rounds"], council["min_rounds"]) == ("math", 1, 1)


def test_deliberations_are_listed_newest_first_from_memory_and_store(agents, tmp_path):
    url = f"sqlite:///{tmp_path / 'nsed.db'}"
    with BackgroundServer(settings(agents, store_url=url)) as first:
        older = ask(first, "first question").headers["x-nsed-run-id"]
    with BackgroundServer(settings(agents, store_url=url)) as second:  # knows `older` by store
        newer = ask(second, "second question").headers["x-nsed-run-id"]
        listed = httpx.get(second.url + "/deliberations").json()
        assert listed["store"] is True
        assert [d["id"] for d in listed["data"]] == [newer, older]
        top = listed["data"][0]
        assert top["question"] == "second question" and top["final"] == "391"
        assert top["rounds"] == 1 and top["stopped_because"] == "max_rounds"
        assert top["prompt_tokens"] > 0 and "trace" not in top and "answer" not in top
        page = httpx.get(second.url + "/deliberations", params={"limit": 1, "offset": 1}).json()
        assert [d["id"] for d in page["data"]] == [older]
        for bad in (
            {"limit": 0},
            {"limit": "many"},
            {"offset": -1},
            {"limit": 501},
            {"offset": 10**5},
        ):
            response = httpx.get(second.url + "/deliberations", params=bad)
            assert response.status_code == 400
            assert response.json()["error"]["param"] in bad
        # The page of the older run is served from the store.
        assert httpx.get(second.root + run_path(older)).status_code == 200
        assert httpx.get(f"{second.url}/deliberations/{older}").json()["question"] == (
            "first question"
        )


def test_a_server_without_a_store_lists_what_it_did_and_has_no_benchmarks(agents):
    with BackgroundServer(settings(agents)) as server:
        run_id = ask(server).headers["x-nsed-run-id"]
        listed = httpx.get(server.url + "/deliberations").json()
        assert listed["store"] is False and [d["id"] for d in listed["data"]] == [run_id]
        assert httpx.get(server.url + "/bench/runs").json() == {
            "object": "list",
            "data": [],
            "store": False,
        }
        missing = httpx.get(server.url + "/bench/runs/quick-1")
        assert missing.status_code == 404 and "nsed ui" in missing.json()["error"]["message"]


def test_a_benchmark_run_is_served_as_the_reports_compute_it(agents, tmp_path):
    url = f"sqlite:///{tmp_path / 'nsed.db'}"
    store = Store(url)
    team = TeamSpec.model_validate(team_dict(agents.url, ["solver-a", "solver-b", "solver-c"]))
    options = BenchOptions(
        benchmark="quick",
        limit=3,
        methods=["nsed", "single"],
        rounds=3,
        min_rounds=3,
        deliberation={"embeddings": "off"},
    )
    anyio.run(lambda: run_benchmark(options, store=store, team=team, run_id="quick-ui"))
    with BackgroundServer(settings(agents, store_url=url)) as server:
        (listed,) = httpx.get(server.url + "/bench/runs").json()["data"]
        assert listed["run_id"] == "quick-ui" and listed["status"] == "complete"
        assert (listed["answers"], listed["expected"]) == (12, 12)
        page = httpx.get(server.url + "/bench/runs/quick-ui").json()
        assert page["report"] == build_report(store, "quick-ui").model_dump(mode="json")
        problems = [p.model_dump(mode="json") for p in problem_rows(store, "quick-ui")]
        assert page["problems"] == problems
        assert [p["problem_id"] for p in problems] == [f"quick-0-{i:04d}" for i in range(3)]
        first = problems[0]
        assert first["disagree"] is True  # solver-c is off by one
        assert first["answers"]["single:solver-c"]["correct"] is False
        assert first["answers"]["nsed"]["deliberation_id"]
        assert page["fit_note"].startswith("U(t) fit")
        if page["fit_curve"]:
            assert page["fit_curve"][0][0] == 0 and page["fit_curve"][-1][0] == 3
        nsed_run = first["answers"]["nsed"]["deliberation_id"]
        assert httpx.get(f"{server.url}/deliberations/{nsed_run}").status_code == 200
        unknown = httpx.get(server.url + "/bench/runs/quick-nope")
        assert unknown.status_code == 404 and "nsed runs list" in unknown.json()["error"]["message"]
        assert httpx.get(server.root + bench_path("quick-ui")).status_code == 200
    store.dispose()


def test_every_answer_leads_to_its_page(agents):
    with BackgroundServer(settings(agents)) as server:
        response = ask(server)
        run_id = response.headers["x-nsed-run-id"]
        assert response.headers["x-nsed-run-url"] == f"/ui/runs/{run_id}"


def test_links_are_spelled_in_one_place():
    assert run_path("ab-1") == "/ui/runs/ab-1" and bench_path("q/1") == "/ui/bench/q%2F1"
    for written in (
        "http://h:1",
        "http://h:1/",
        "http://h:1/v1",
        "http://h:1/v1/",
        "http://h:1/ui/",
    ):
        assert server_root(written) == "http://h:1"
    assert run_url("http://h:1/v1", "x") == "http://h:1/ui/runs/x"


# --- The command line ------------------------------------------------------------------------


def stored_ids(home: Path) -> list[str]:
    with closing(sqlite3.connect(home / "nsed.db")) as con:
        return [row[0] for row in con.execute("SELECT id FROM deliberations")]


def test_ask_with_store_saves_the_run_and_prints_its_page(agents, tmp_path):
    team = write_team(tmp_path / "team.toml", agents.url)
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin"}
    done = run_nsed(
        "ask",
        "What is 17 * 23?",
        "--team",
        str(team),
        "--rounds",
        "1",
        "--kind",
        "math",
        "--store",
        home=home,
        env=env,
        columns=200,
    )
    assert done.returncode == 0, done.stderr
    (run_id,) = stored_ids(home)
    assert f"run page: http://127.0.0.1:8000/ui/runs/{run_id} (start the page with `nsed ui`)" in (
        done.stdout
    )
    # A server named by NSED_SERVER_URL implies --store; with --json the link goes to stderr.
    served = run_nsed(
        "ask",
        "What is 17 * 23?",
        "--team",
        str(team),
        "--rounds",
        "1",
        "--kind",
        "math",
        "--json",
        home=home,
        env={**env, "NSED_SERVER_URL": "http://nsed.example:9000/v1"},
    )
    assert served.returncode == 0, served.stderr
    trace = json.loads(served.stdout)
    assert set(stored_ids(home)) == {run_id, trace["id"]}
    assert f"run page: http://nsed.example:9000/ui/runs/{trace['id']}" in served.stderr
    plain = run_nsed(
        "ask", "What is 17 * 23?", "--team", str(team), "--rounds", "1", home=home, env=env
    )
    assert plain.returncode == 0 and "run page" not in plain.stdout
    assert len(stored_ids(home)) == 2


def read_line(process: subprocess.Popen[str], timeout_s: float = 60) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, "nsed ui printed no URL in time"
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_nsed_ui_prints_its_url_serves_the_page_and_the_runs_ask_stores(agents, tmp_path):
    team = write_team(tmp_path / "team.toml", agents.url)
    home = tmp_path / "home"
    process = subprocess.Popen(
        nsed_command("ui", "--team", str(team), "--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=nsed_env(home, env={"PATH": "/usr/bin:/bin"}),
    )
    try:
        url = read_line(process)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ui/", url), url
        root = server_root(url)
        assert "<title>nsed council</title>" in httpx.get(url).text
        assert httpx.get(root + "/v1/councils").json()["store"] is True
        # `nsed ask` pointed at this server: its printed page shows the run.
        done = run_nsed(
            "ask",
            "What is 17 * 23?",
            "--team",
            str(team),
            "--rounds",
            "1",
            "--kind",
            "math",
            home=home,
            env={"PATH": "/usr/bin:/bin", "NSED_SERVER_URL": root},
        )
        assert done.returncode == 0, done.stderr
        link = re.search(r"run page: (\S+)", done.stdout).group(1)
        run_id = link.rsplit("/", 1)[1]
        assert link == f"{root}/ui/runs/{run_id}"
        assert httpx.get(link).status_code == 200
        assert httpx.get(f"{root}/v1/deliberations/{run_id}").json()["final"] == "391"
        listed = httpx.get(f"{root}/v1/deliberations").json()["data"]
        assert [d["id"] for d in listed] == [run_id]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""


def test_nsed_ui_on_a_busy_port_is_one_error_line(agents, tmp_path):
    team = write_team(tmp_path / "team.toml", agents.url)
    with closing(socket.socket()) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = run_nsed(
            "ui",
            "--team",
            str(team),
            "--port",
            str(port),
            "--no-store",
            home=tmp_path / "home",
            env={"PATH": "/usr/bin:/bin"},
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "--port" in done.stderr and done.stdout == ""
