"""vLLM extras: live load from ``/metrics``, and the ``vllm serve`` command line.

vLLM publishes Prometheus text at ``{server root}/metrics``. Three gauges say how busy a server
is right now: ``vllm:num_requests_waiting`` (queued), ``vllm:num_requests_running`` (in the
batch) and ``vllm:kv_cache_usage_perc`` (KV-cache blocks in use, 0..1; older servers call it
``vllm:gpu_cache_usage_perc``). The broker uses them as live load to discount a busy model's
value. Any other server (llama.cpp, a hosted API) simply has no load signal: every failure to
scrape (no endpoint, non-200, unparsable or non-vLLM metrics) is ``None``, never an exception.
:class:`MetricsCache` keeps each server's signal for a short TTL so that choosing a team does
not hammer ``/metrics``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field, computed_field

from nsed.agents.http_limits import call_deadline, request_capped
from nsed.errors import BackendError, ConfigError, DataError, redact_url

log = logging.getLogger("nsed.vllm")

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"
METRICS_MAX_BYTES = 4_000_000  # a /metrics page beyond this is no load signal

# --- Prometheus text format ---------------------------------------------------------------------


class Sample(BaseModel):
    """One sample line: ``name{labels} value [timestamp]``.

    ``timestamp`` is in seconds (the text format writes milliseconds; prometheus-client's parser
    converts them); None when absent.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    value: float
    timestamp: float | None = None


def parse_prometheus(text: str) -> dict[str, list[Sample]]:
    """Parse Prometheus text exposition format into samples grouped by sample name.

    The parsing is prometheus-client's (``text_string_to_metric_families``): histogram and
    summary series keep their own names (``x_bucket``, ``x_sum``, ``x_count``), ``# HELP`` /
    ``# TYPE`` lines and comments are skipped, escaped label values, ``NaN`` / ``±Inf``,
    quoted (UTF-8) metric names and exemplars are accepted. Text it rejects is a DataError
    naming the first bad line.
    """
    samples: dict[str, list[Sample]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for raw in family.samples:
                sample = Sample(
                    name=raw.name, labels=raw.labels, value=raw.value, timestamp=raw.timestamp
                )
                samples.setdefault(sample.name, []).append(sample)
    except ValueError as exc:
        raise DataError(_bad_line(text, exc)) from None
    return samples


def _bad_line(text: str, exc: ValueError) -> str:
    """Which line the parser rejected (found by parsing line by line, on the error path only)."""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            list(text_string_to_metric_families(line + "\n"))
        except ValueError as line_exc:
            shown = line if len(line) <= 120 else line[:117] + "..."
            return f"metrics line {lineno}: {line_exc}: {shown!r}"
    return f"metrics text: {exc}"


# --- Load signal --------------------------------------------------------------------------------


class LoadSignal(BaseModel):
    """How busy a vLLM server is now, and one number for it.

    ``load = 1 − (1 − kv_cache_usage) · (1 − queue_pressure)`` with ``queue_pressure =
    waiting / (waiting + running)`` (0 with nothing waiting): treating a full KV cache and a
    queue as independent sources of contention, it is 0 for an idle server, 1 when the cache
    is full or every request is queued, and at least 0.5 when as many requests wait as run.
    """

    model_config = ConfigDict(frozen=True)

    waiting: float = Field(ge=0)
    running: float = Field(ge=0)
    kv_cache_usage: float = Field(ge=0, le=1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def queue_pressure(self) -> float:
        total = self.waiting + self.running
        return self.waiting / total if self.waiting > 0 else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def load(self) -> float:
        value = 1.0 - (1.0 - self.kv_cache_usage) * (1.0 - self.queue_pressure)
        return min(1.0, max(0.0, value))


def load_from_metrics(
    samples: dict[str, list[Sample]], *, model: str | None = None
) -> LoadSignal | None:
    """The load signal in parsed metrics; None when none of vLLM's gauges are there.

    Counts are summed over engines (data-parallel ranks); KV-cache usage is the highest engine's.
    With ``model``, samples labelled with another ``model_name`` are ignored. A missing gauge
    counts as 0; NaN samples are ignored; a usage above 1 is read as a percentage.
    """

    def values(name: str) -> list[float]:
        out = []
        for s in samples.get(name, []):
            if model is not None and s.labels.get("model_name", model) != model:
                continue
            if not math.isnan(s.value):
                out.append(s.value)
        return out

    waiting, running = values(WAITING), values(RUNNING)
    kv = values(KV_CACHE) or values(KV_CACHE_OLD)
    if not (waiting or running or kv):
        return None
    usage = max(kv, default=0.0)
    if usage > 1.0:
        usage /= 100.0
    return LoadSignal(
        waiting=_clamp(sum(waiting), _MAX_COUNT),
        running=_clamp(sum(running), _MAX_COUNT),
        kv_cache_usage=_clamp(usage, 1.0),
    )


_MAX_COUNT = 1e12  # keeps +Inf counts finite so the load stays a number


def _clamp(value: float, top: float) -> float:
    return min(top, max(0.0, value))


def metrics_url(base_url: str) -> str | None:
    """``{server root}/metrics`` for an OpenAI base URL (a trailing ``/v1`` is dropped)."""
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        return None
    return url.removesuffix("/v1") + "/metrics"


async def fetch_load(
    client: httpx.AsyncClient,
    base_url: str,
    *,
    model: str | None = None,
    timeout_s: float = 2.0,
) -> LoadSignal | None:
    """Scrape a server's ``/metrics`` for vLLM's load gauges; None when there is no signal."""
    url = metrics_url(base_url)
    if url is None:
        return None
    where = redact_url(url)
    try:  # bounded like a model call: a dripping or huge /metrics is no signal, not a hang
        with call_deadline(timeout_s, url):
            response = await request_capped(
                client, "GET", url, timeout=timeout_s, max_bytes=METRICS_MAX_BYTES, endpoint=url
            )
    except (httpx.HTTPError, httpx.InvalidURL, BackendError) as exc:
        log.debug("no load signal from %s: %s", where, type(exc).__name__)
        return None
    if response.status_code != 200:
        log.debug("no load signal from %s: HTTP %s", where, response.status_code)
        return None
    try:
        samples = parse_prometheus(response.text)
    except DataError as exc:
        log.debug("no load signal from %s: %s", where, exc)
        return None
    return load_from_metrics(samples, model=model)


class MetricsCache:
    """Load signals per server, kept for ``ttl_s`` seconds (a missing signal is cached too).

    ``clock`` is injectable so that expiry can be tested without sleeping.
    """

    def __init__(
        self,
        ttl_s: float = 2.0,
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0:
            raise ConfigError(f"ttl_s = {ttl_s} must be >= 0")
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._entries: dict[tuple[str, str | None], tuple[float, LoadSignal | None]] = {}

    def _key(self, base_url: str, model: str | None) -> tuple[str, str | None]:
        return (metrics_url(base_url) or base_url.strip(), model)

    def peek(self, base_url: str, *, model: str | None = None) -> LoadSignal | None:
        """The cached signal if still fresh, without any I/O (None otherwise)."""
        entry = self._entries.get(self._key(base_url, model))
        if entry is None or self._clock() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    async def get(
        self, client: httpx.AsyncClient, base_url: str, *, model: str | None = None
    ) -> LoadSignal | None:
        """The fresh cached signal, or a new scrape (stored for ``ttl_s``)."""
        key = self._key(base_url, model)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] <= self.ttl_s:
            return entry[1]
        signal = await fetch_load(client, base_url, model=model, timeout_s=self.timeout_s)
        self._entries[key] = (self._clock(), signal)
        return signal

    async def get_many(
        self, client: httpx.AsyncClient, base_urls: Iterable[str]
    ) -> dict[str, LoadSignal | None]:
        """Signals for several servers, scraped concurrently."""
        urls = list(dict.fromkeys(base_urls))
        out: dict[str, LoadSignal | None] = {}

        async def one(url: str) -> None:
            out[url] = await self.get(client, url)

        async with anyio.create_task_group() as tg:
            for url in urls:
                tg.start_soon(one, url)
        return {url: out[url] for url in urls}

    def clear(self) -> None:
        self._entries.clear()


# --- Launching ----------------------------------------------------------------------------------


def vllm_serve_command(
    model: str,
    *,
    port: int,
    served_name: str,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    tensor_parallel_size: int | None = None,
    api_key_env: str | None = None,
    host: str = "127.0.0.1",
    reasoning_parser: str | None = None,
    enable_prefix_caching: bool = False,
    extra_args: Sequence[str] = (),
    executable: Sequence[str] = ("vllm",),
) -> list[str]:
    """The argv of ``vllm serve`` for one model (not run here: the caller launches it).

    ``executable`` is what runs ``serve`` (``vllm``, or a stand-in with the same CLI);
    ``reasoning_parser`` returns a reasoning model's thinking apart (and lets a JSON grammar
    apply to the answer only); ``enable_prefix_caching`` reuses the KV cache of the prompt
    prefixes agents share (their static system prompts); ``extra_args`` come last.

    ``served_name`` is the model id clients send (``ModelSpec.model``); the server listens on
    ``host`` (loopback by default, so nothing is exposed by accident) at ``port``.
    ``gpu_memory_utilization`` (0..1] is the fraction of GPU memory vLLM may take,
    ``max_model_len`` caps the context (and so the KV cache), ``tensor_parallel_size`` splits
    the model over GPUs. With ``api_key_env``, the server requires that key; it is never put on
    the command line (where ``ps`` shows it): launch with ``env={**os.environ,
    **vllm_serve_env(api_key_env)}``, which sets the ``VLLM_API_KEY`` that vLLM reads.
    """
    if not model.strip():
        raise ConfigError("model must not be empty (a Hugging Face id or a local path)")
    if not served_name.strip():
        raise ConfigError("served_name must not be empty")
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} must be within 1..65535")
    if not executable or not all(part.strip() for part in executable):
        raise ConfigError("executable must name the vllm command (e.g. ['vllm'])")
    argv = [*executable, "serve", model, "--host", host, "--port", str(port)]
    argv += ["--served-model-name", served_name]
    if gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization {gpu_memory_utilization} must be within (0, 1]"
            )
        argv += ["--gpu-memory-utilization", f"{gpu_memory_utilization:g}"]
    if max_model_len is not None:
        if max_model_len < 1:
            raise ConfigError(f"max_model_len {max_model_len} must be >= 1")
        argv += ["--max-model-len", str(max_model_len)]
    if tensor_parallel_size is not None:
        if tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size {tensor_parallel_size} must be >= 1")
        argv += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if reasoning_parser is not None:
        argv += ["--reasoning-parser", reasoning_parser]
    if enable_prefix_caching:
        argv.append("--enable-prefix-caching")
    if api_key_env is not None:
        vllm_serve_env(api_key_env)  # fail now, not with an open server later
    return [*argv, *extra_args]


def vllm_serve_env(api_key_env: str) -> dict[str, str]:
    """Environment for ``vllm serve`` so it requires the key held in ``$api_key_env``."""
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(
            f"environment variable {api_key_env} is not set: export the API key the vLLM "
            "server should require, or leave api_key_env out"
        )
    return {"VLLM_API_KEY": key}


__all__ = [
    "LoadSignal",
    "MetricsCache",
    "Sample",
    "fetch_load",
    "load_from_metrics",
    "metrics_url",
    "parse_prometheus",
    "vllm_serve_command",
    "vllm_serve_env",
]
