"""A real browser for the web page's tests: Debian's chromium, headless, driven by Playwright.

Playwright for Python is pointed at the system Chromium (``executable_path``), so it never
downloads a browser of its own; each launch gets a fresh profile (Playwright's temporary
user-data-dir). The flags keep a headless Chromium from calling out: the network here is
closed, and without them it floods refused connections (updates, sync, QUIC probes).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL = "make install-dev (it runs apt-get install -y chromium and pip install playwright)"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
README_SCREENSHOT_ENV = "NSED_UI_SCREENSHOT"


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if chromium_path() is None:
        return "Debian's chromium is not installed"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``); a test without one fails, never skips."""
    why = browser_missing()
    if why is not None:
        pytest.fail(
            f"the web page's tests need a browser: {why}. Install: {INSTALL}", pytrace=False
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def pixel_spread(png: bytes) -> float:
    """Standard deviation of the grey levels of a screenshot: about 0 for a blank page."""
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(png)) as image:
        return float(ImageStat.Stat(image.convert("L")).stddev[0])


def screenshot(page: Any, path: Path, *, full_page: bool = True) -> Path:
    """Save a screenshot of ``page`` at ``path`` and check it shows something (not blank)."""
    png = page.screenshot(path=str(path), full_page=full_page)
    spread = pixel_spread(png)
    assert spread > 8, f"{path.name} looks blank (grey-level spread {spread:.1f})"
    return path


def save_readme_screenshot(page: Any, top: str) -> Path | None:
    """With ``NSED_UI_SCREENSHOT=path``: a small PNG of the window scrolled to ``top`` (a CSS
    selector), for the README. Quantised to 64 colours: text stays sharp, the file small."""
    target = os.environ.get(README_SCREENSHOT_ENV)
    if not target:
        return None
    from PIL import Image

    page.locator(top).first.evaluate("e => window.scrollTo(0, e.offsetTop - 8)")
    with Image.open(io.BytesIO(page.screenshot(full_page=False))) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        small.save(target, optimize=True)
    return Path(target)
