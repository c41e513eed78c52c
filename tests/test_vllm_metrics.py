"""vLLM /metrics: Prometheus text parsing, the load signal, and scraping real HTTP servers."""

from __future__ import annotations

import math
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nsed.agents.vllm import (
    LoadSignal,
    MetricsCache,
    fetch_load,
    load_from_metrics,
    metrics_url,
    parse_prometheus,
    vllm_serve_command,
    vllm_serve_env,
)
from nsed.errors import ConfigError, DataError

MODEL = "Qwen/Qwen2.5-7B-Instruct"

# What a vLLM v1 server with two data-parallel engines exposes (abridged, values made up).
VLLM_METRICS = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12345.0
python_gc_objects_collected_total{{generation="1"}} 678.0
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.1474836e+09
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 6.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 3.0
vllm:num_requests_waiting{{engine="1",model_name="{MODEL}"}} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.25
vllm:kv_cache_usage_perc{{engine="1",model_name="{MODEL}"}} 0.5
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="{MODEL}"}} 1024.0
vllm:prefix_cache_hits_created{{engine="0",model_name="{MODEL}"}} 1.7277e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.5",model_name="{MODEL}"}} 40.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 42.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 42.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 9.75
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",\
gpu_memory_utilization="0.9",num_gpu_blocks="27932"}} 1.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{{max_lora="0",running_lora_adapters="",waiting_lora_adapters=""}} 1.7e9
# A hand-written comment, then odd but valid lines: escapes, NaN, -Inf, timestamp, tabs.
nsed_test_escapes{{path="C:\\\\models\\\\q",quote="say \\"hi\\"",nl="a\\nb",}} NaN
nsed_test_negative_inf\t-Inf\t1712345678000

nsed_test_spaces {{ a = "1" , b="2" }}   +Inf
"""

OTHER_METRICS = """\
# HELP python_info Python platform information
# TYPE python_info gauge
python_info{implementation="CPython",major="3",minor="11",patchlevel="9",version="3.11.9"} 1.0
# HELP http_requests_total Requests served.
# TYPE http_requests_total counter
http_requests_total{code="200",method="get"} 1027
"""


# --- A real HTTP server on 127.0.0.1 -------------------------------------------------------------


class MetricsServer:
    """Serves fixed (status, body) pairs by path on 127.0.0.1, counting requests per path."""

    def __init__(self, routes: dict[str, tuple[int, str]]) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                status, body = server.routes.get(self.path, (404, "not found\n"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> MetricsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def vllm_server() -> Iterator[MetricsServer]:
    with MetricsServer({"/metrics": (200, VLLM_METRICS), "/v1/models": (200, "{}")}) as s:
        yield s


def scrape(base_url: str, **kwargs: object) -> LoadSignal | None:
    async def main() -> LoadSignal | None:
        async with httpx.AsyncClient() as client:
            return await fetch_load(client, base_url, **kwargs)  # type: ignore[arg-type]

    return anyio.run(main)


# --- Parsing --------------------------------------------------------------------------------------


def test_parses_vllm_metrics_text():
    samples = parse_prometheus(VLLM_METRICS)
    running = samples["vllm:num_requests_running"]
    assert [(s.labels["engine"], s.value) for s in running] == [("0", 6.0), ("1", 2.0)]
    assert running[0].labels == {"engine": "0", "model_name": MODEL}
    assert samples["process_resident_memory_bytes"][0].value == 2.1474836e09
    assert samples["process_resident_memory_bytes"][0].labels == {}
    buckets = samples["vllm:time_to_first_token_seconds_bucket"]
    assert [b.labels["le"] for b in buckets] == ["0.001", "0.5", "+Inf"]
    assert buckets[-1].value == 42.0
    assert samples["vllm:time_to_first_token_seconds_sum"][0].value == 9.75
    info = samples["vllm:cache_config_info"][0]
    assert info.labels["num_gpu_blocks"] == "27932"
    assert samples["vllm:lora_requests_info"][0].labels["running_lora_adapters"] == ""
    # No HELP/TYPE/comment text leaks in as samples.
    assert all(not name.startswith("#") for name in samples)


def test_escapes_nan_inf_timestamps_and_blanks():
    samples = parse_prometheus(VLLM_METRICS)
    escaped = samples["nsed_test_escapes"][0]
    assert escaped.labels == {"path": "C:\\models\\q", "quote": 'say "hi"', "nl": "a\nb"}
    assert math.isnan(escaped.value)
    neg = samples["nsed_test_negative_inf"][0]
    assert neg.value == -math.inf
    assert neg.timestamp == 1712345678.0  # the text format's milliseconds, in seconds
    spaced = samples["nsed_test_spaces"][0]
    assert spaced.labels == {"a": "1", "b": "2"}
    assert spaced.value == math.inf


def test_quoted_metric_names_and_exemplars():
    text = (
        '{"my.dotted.metric", "label.with.dots"="x"} 3\n'
        'rpc_seconds_bucket{le="0.1"} 7 # {trace_id="abc"} 0.05 1712345678.1\n'
    )
    samples = parse_prometheus(text)
    assert samples["my.dotted.metric"][0].labels == {"label.with.dots": "x"}
    assert samples["my.dotted.metric"][0].value == 3
    assert samples["rpc_seconds_bucket"][0].value == 7


@pytest.mark.parametrize(
    "line",
    [
        "metric_without_value",
        'metric{a="1"',
        'metric{a="1} 2',
        "metric{a=1} 2",
        'metric{a="1",a="2"} 2',
        "metric 1_000",
        "metric abc",
        "9metric 1",
    ],
)
def test_malformed_lines_name_the_line(line):
    with pytest.raises(DataError, match=rf"metrics line 3: .*{re.escape(repr(line))}$"):
        parse_prometheus(f"ok_metric 1\n# a comment\n{line}\n")


def test_parsing_is_prometheus_clients():
    """The same samples as prometheus-client's own parser, on the whole fixture."""
    expected = [
        (s.name, s.labels, repr(s.value), s.timestamp)
        for family in text_string_to_metric_families(VLLM_METRICS)
        for s in family.samples
    ]
    got = [
        (s.name, s.labels, repr(s.value), s.timestamp)
        for samples in parse_prometheus(VLLM_METRICS).values()
        for s in samples
    ]
    assert sorted(got, key=repr) == sorted(expected, key=repr)


# --- The load signal ------------------------------------------------------------------------------


def test_load_formula():
    assert LoadSignal(waiting=0, running=0, kv_cache_usage=0).load == 0
    assert LoadSignal(waiting=0, running=12, kv_cache_usage=1.0).load == 1.0
    assert LoadSignal(waiting=5, running=5, kv_cache_usage=0).load == pytest.approx(0.5)
    assert LoadSignal(waiting=5, running=0, kv_cache_usage=0).load == 1.0
    # 1 − (1 − 0.5)·(1 − 4/12)
    signal = LoadSignal(waiting=4, running=8, kv_cache_usage=0.5)
    assert signal.load == pytest.approx(1 - 0.5 * (1 - 4 / 12))
    assert signal.model_dump()["load"] == pytest.approx(signal.load)


def test_load_from_metrics_sums_engines_and_filters_model():
    samples = parse_prometheus(VLLM_METRICS)
    signal = load_from_metrics(samples)
    assert signal is not None
    assert (signal.waiting, signal.running, signal.kv_cache_usage) == (4.0, 8.0, 0.5)
    assert signal.load == pytest.approx(1 - 0.5 * (1 - 4 / 12))
    assert load_from_metrics(samples, model="some/other-model") is None
    assert load_from_metrics(samples, model=MODEL) == signal
    assert load_from_metrics(parse_prometheus(OTHER_METRICS)) is None


def test_older_servers_gpu_cache_usage():
    old = (
        'vllm:num_requests_running{model_name="m"} 1.0\n'
        'vllm:num_requests_waiting{model_name="m"} 0.0\n'
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n'
    )
    signal = load_from_metrics(parse_prometheus(old))
    assert signal is not None
    assert signal.kv_cache_usage == 0.75
    assert signal.load == pytest.approx(0.75)


def test_metrics_url():
    assert metrics_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("https://h/proxy/v1") == "https://h/proxy/metrics"
    assert metrics_url("http://h:9") == "http://h:9/metrics"
    assert metrics_url("sim://x") is None


# --- Scraping real servers ------------------------------------------------------------------------


def test_fetch_load_from_a_real_vllm_style_server(vllm_server):
    signal = scrape(vllm_server.base_url)
    assert signal is not None
    assert (signal.waiting, signal.running, signal.kv_cache_usage) == (4.0, 8.0, 0.5)
    assert vllm_server.hits == {"/metrics": 1}
    assert scrape(vllm_server.base_url, model="another") is None


def test_no_signal_without_metrics_or_from_other_servers():
    with (
        MetricsServer({}) as no_metrics,
        MetricsServer({"/metrics": (200, OTHER_METRICS)}) as other,
        MetricsServer({"/metrics": (500, "boom")}) as broken,
        MetricsServer({"/metrics": (200, "<html>not metrics</html>\n")}) as html,
    ):
        assert scrape(no_metrics.base_url) is None
        assert no_metrics.hits == {"/metrics": 1}
        assert scrape(other.base_url) is None
        assert scrape(broken.base_url) is None
        assert scrape(html.base_url) is None
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert scrape(f"http://127.0.0.1:{closed}/v1", timeout_s=1.0) is None
    assert scrape("sim://scripted") is None


def test_cache_keeps_a_signal_for_its_ttl(vllm_server):
    now = [100.0]
    cache = MetricsCache(ttl_s=2.0, clock=lambda: now[0])
    with MetricsServer({}) as silent:

        async def main() -> list[LoadSignal | None]:
            async with httpx.AsyncClient() as client:
                first = await cache.get(client, vllm_server.base_url)
                again = await cache.get(client, vllm_server.base_url + "/")
                none_1 = await cache.get(client, silent.base_url)
                none_2 = await cache.get(client, silent.base_url)
                now[0] += 2.5
                assert cache.peek(vllm_server.base_url) is None  # stale
                fresh = await cache.get(client, vllm_server.base_url)
                both = await cache.get_many(client, [vllm_server.base_url, silent.base_url])
                return [first, again, none_1, none_2, fresh, *both.values()]

        first, again, none_1, none_2, fresh, many_vllm, many_silent = anyio.run(main)
        assert first is not None and first == again == fresh == many_vllm
        assert none_1 is None and none_2 is None and many_silent is None
        assert vllm_server.hits["/metrics"] == 2  # once, then once more after the TTL
        assert silent.hits["/metrics"] == 2  # a missing signal is cached too
        assert cache.peek(vllm_server.base_url) == first
    with pytest.raises(ConfigError):
        MetricsCache(ttl_s=-1)


# --- vllm serve -----------------------------------------------------------------------------------


def test_vllm_serve_command(monkeypatch):
    argv = vllm_serve_command(
        MODEL,
        port=8001,
        served_name="qwen-7b",
        gpu_memory_utilization=0.85,
        max_model_len=8192,
        tensor_parallel_size=2,
    )
    assert argv == [
        "vllm", "serve", MODEL, "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "qwen-7b", "--gpu-memory-utilization", "0.85",
        "--max-model-len", "8192", "--tensor-parallel-size", "2",
    ]  # fmt: skip
    assert vllm_serve_command("m", port=1, served_name="m") == [
        "vllm", "serve", "m", "--host", "127.0.0.1", "--port", "1", "--served-model-name", "m",
    ]  # fmt: skip

    monkeypatch.delenv("NSED_TEST_VLLM_KEY", raising=False)
    with pytest.raises(ConfigError, match="NSED_TEST_VLLM_KEY is not set"):
        vllm_serve_command("m", port=8001, served_name="m", api_key_env="NSED_TEST_VLLM_KEY")
    monkeypatch.setenv("NSED_TEST_VLLM_KEY", "sk-secret")
    argv = vllm_serve_command("m", port=8001, served_name="m", api_key_env="NSED_TEST_VLLM_KEY")
    assert "sk-secret" not in " ".join(argv)
    assert vllm_serve_env("NSED_TEST_VLLM_KEY") == {"VLLM_API_KEY": "sk-secret"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"served_name": " "}, "served_name"),
    ],
)
def test_vllm_serve_command_rejects_bad_values(kwargs, message):
    args = {"port": 8001, "served_name": "m", **kwargs}
    with pytest.raises(ConfigError, match=message):
        vllm_serve_command("m", **args)
