"""Prometheus instruments of one app, served at ``GET /metrics``.

Each app gets a registry of its own so that two servers in one process (tests, notebooks)
never share or double-register counters.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, math.inf)


class ServerMetrics:
    """Prometheus metrics in a registry of this app's own (two apps never share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliberations = Counter(
            "nsed_deliberations",
            "Chat requests that reached a council, by outcome",
            ["council", "status"],
            registry=r,
        )
        self.rounds = Counter("nsed_rounds", "Completed rounds", ["council"], registry=r)
        self.latency = Histogram(
            "nsed_deliberation_seconds",
            "Seconds from request to answer (queueing included), successful deliberations",
            ["council"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nsed_tokens", "Tokens used by deliberations", ["council", "type"], registry=r
        )
        self.cost = Counter(
            "nsed_cost_usd", "Dollars spent by deliberations", ["council"], registry=r
        )
        self.failures = Counter(
            "nsed_failures",
            "Failures: agent calls inside deliberations, and failed deliberations",
            ["council", "kind"],
            registry=r,
        )
        self.truncated = Counter(
            "nsed_truncated_calls",
            "Agent calls cut at max_tokens, by phase",
            ["council", "phase"],
            registry=r,
        )
        self.errors = Counter(
            "nsed_http_errors", "Error responses by HTTP status", ["status"], registry=r
        )
        self.in_flight = Gauge(
            "nsed_deliberations_in_flight", "Deliberations running now", registry=r
        )
        self.queued = Gauge("nsed_deliberations_queued", "Requests waiting for a slot", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
