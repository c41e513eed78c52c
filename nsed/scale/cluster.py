"""Connecting to a Ray cluster: ``auto`` (``RAY_ADDRESS``, else the cluster started on this
machine with ``ray start --head``) or ``HOST:PORT`` of a head node.

nsed never starts a cluster behind the user's back: a missing one is a ConfigError that says
how to start it, and Ray not installed is one that says which extra to install.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from nsed.errors import ConfigError

INSTALL_RAY = 'pip install "nsed[ray]"'


def import_ray() -> ModuleType:
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_RAY}") from None
    return ray


def connect(address: str = "auto") -> ModuleType:
    """Join the cluster at ``address`` as a driver (idempotent); returns the ``ray`` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    target = address.strip() or "auto"
    if target == "auto" and os.environ.get("RAY_ADDRESS"):
        target = os.environ["RAY_ADDRESS"]
    extra: dict[str, str] = {}
    host = target.rsplit(":", 1)[0] if ":" in target else ""
    if host.startswith("127."):
        # A cluster on this machine's loopback (ray start --node-ip-address 127.0.0.2): the
        # driver must say it is on that node too, or Ray looks for a raylet at the LAN address.
        extra["_node_ip_address"] = host
    try:
        ray.init(
            address=target,
            **extra,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "on this machine" if target == "auto" else f"at {target}"
        raise ConfigError(
            f"no Ray cluster {where} ({str(exc).splitlines()[0][:200]}); start one with "
            "`ray start --head` (and `ray start --address HEAD:PORT` on other nodes), or "
            "pass --ray HEAD:PORT (--ray auto: this machine's cluster or RAY_ADDRESS)"
        ) from None
    return ray


__all__ = ["INSTALL_RAY", "connect", "import_ray"]
