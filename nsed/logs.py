"""Where nsed's log records go when nsed runs as a program.

The library only logs to the ``nsed`` logger and leaves the choice to the application (the
package installs a ``NullHandler``). The command line is an application: it shows nsed's
warnings on stderr through rich by default (a preflight "model not listed" warning, a structured
output downgrade, a failed agent), more with ``-v``/``--log-level``, and ``nsed serve`` sends
uvicorn's records through the same handler so one stream tells the whole story.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

from nsed.errors import ConfigError

LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
DEFAULT_LEVEL = logging.WARNING

_handler: RichHandler | None = None
_explicit = False


def parse_level(name: str) -> int:
    """``"info"`` → ``logging.INFO``; an unknown name is a ConfigError naming the valid ones."""
    key = name.strip().lower()
    if key not in LEVELS:
        raise ConfigError(f"unknown log level {name!r}: use one of {', '.join(LEVELS)}")
    return int(logging.getLevelName(key.upper()))


def level_for(verbose: int = 0, log_level: str | None = None) -> int:
    """The level a program runs at: ``--log-level`` wins, else WARNING lowered per ``-v``."""
    if log_level is not None:
        return parse_level(log_level)
    return max(logging.DEBUG, DEFAULT_LEVEL - 10 * max(0, verbose))


def configure_logging(
    level: int = DEFAULT_LEVEL, *, explicit: bool = False, console: Console | None = None
) -> None:
    """Show records of ``level`` and above from nsed (and uvicorn, when it runs) on stderr.

    Idempotent: a later call only changes the level. ``explicit`` marks a level the user chose
    (``-v``/``--log-level``), which a command's own default (``default_level``) never overrides.
    """
    global _handler, _explicit
    if _handler is None:
        if console is None:
            # Piped to a file or a test: long lines stay whole, so a grep finds a message.
            console = Console(stderr=True)
            if not console.is_terminal:
                console = Console(stderr=True, width=240)
        _handler = RichHandler(
            console=console,
            show_path=False,
            markup=False,
            log_time_format="[%X]",
        )
        _handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    _explicit = _explicit or explicit
    _handler.setLevel(level)
    # uvicorn's children ("uvicorn.error", "uvicorn.access") propagate to "uvicorn" when it
    # runs with log_config=None, as nsed serve runs it.
    for name in ("nsed", "uvicorn"):
        logger = logging.getLogger(name)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.setLevel(level)
        logger.propagate = False


def default_level(level: int) -> None:
    """A command's own default (``nsed serve`` shows INFO), unless the user chose a level."""
    if not _explicit:
        configure_logging(level)


def current_level() -> int:
    """The level the ``nsed`` logger runs at now."""
    return logging.getLogger("nsed").getEffectiveLevel()


__all__ = [
    "LEVELS",
    "configure_logging",
    "current_level",
    "default_level",
    "level_for",
    "parse_level",
]
