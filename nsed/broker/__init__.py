"""Choosing the team: catalog, knapsack ILP, telemetry, free agency, and the Broker tying them.

``from nsed.broker import Broker`` is resolved lazily so that importing the light modules
(``nsed.broker.catalog``) does not load the store and the solver.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Broker", "FreeAgencyPolicy"]


def __getattr__(name: str) -> Any:
    if name == "Broker":
        from nsed.broker.broker import Broker

        return Broker
    if name == "FreeAgencyPolicy":
        from nsed.broker.free_agency import FreeAgencyPolicy

        return FreeAgencyPolicy
    raise AttributeError(f"module 'nsed.broker' has no attribute {name!r}")
