"""What lives as long as the app (``Runtime``) and what one admitted request carries (``Job``).

Kept on the app, never in module globals, so several servers can run in one process.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from nsed.config import DeliberationConfig
from nsed.council import Council
from nsed.results import Deliberation
from nsed.server.limits import Admission
from nsed.server.metrics import ServerMetrics
from nsed.server.protocol import ChatCompletionRequest
from nsed.server.settings import ServerSettings
from nsed.steps import StepFormat
from nsed.store import Store


class Runtime:
    """What lives as long as the app: councils (with open connection pools), limits, traces."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.councils: dict[str, Council] = {}
        self.admission = Admission(settings.max_concurrent, settings.max_queue, metrics)
        self.recent: OrderedDict[str, tuple[Deliberation, str | None]] = OrderedDict()
        self.store: Store | None = None
        self.latency_ewma_s = 0.0

    def remember(self, result: Deliberation, owner: str | None = None) -> None:
        """Keep a finished trace with its owner (a key id, see ``limits.may_read``)."""
        self.recent[result.id] = (result, owner)
        self.recent.move_to_end(result.id)
        while len(self.recent) > self.settings.keep_deliberations:
            self.recent.popitem(last=False)

    def observe_latency(self, seconds: float) -> None:
        a = 0.2
        self.latency_ewma_s = (
            seconds if self.latency_ewma_s == 0 else (a * seconds + (1 - a) * self.latency_ewma_s)
        )

    def retry_after_s(self) -> int:
        """A hint for a rejected client: about one deliberation's time, 1..60 s."""
        return max(1, min(60, math.ceil(self.latency_ewma_s or 1.0)))


@dataclass(frozen=True)
class Job:
    """One admitted chat request, ready to deliberate."""

    run_id: str
    council_name: str
    model: str
    council: Council
    question: str
    config: DeliberationConfig
    request: ChatCompletionRequest
    step: StepFormat | None = None  # tools / response_format: the step's format
    owner: str | None = None  # the key id of the caller: the trace is theirs
