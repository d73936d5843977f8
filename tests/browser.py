"""A real headless browser for the tests: Debian's chromium driven by Playwright for Python.

Playwright's own browser download does not work on these machines, so the tests launch /usr/bin/chromium
(`apt-get install -y chromium`). Without it (or without playwright) the browser tests skip, except where
MAKEMORE_REQUIRE_BROWSER=1 (CI sets it): there a missing browser fails them, so CI cannot pass by skipping.

    from browser import browser_page, chromium  # noqa: F401  (fixtures; pytest puts tests/ on sys.path)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser() -> None:
    """Skip (or, in CI, fail) when the browser or playwright is missing."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install playwright)"
    if missing is None:
        return
    if os.environ.get("MAKEMORE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required but {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """One headless chromium per test module (launching costs about a second)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium) -> Iterator:
    """`page(width=1280, height=800)` opens a fresh page (its own context: no shared storage or downloads)."""
    contexts = []

    def page(width: int = 1280, height: int = 800):
        context = chromium.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(context)
        return context.new_page()

    yield page
    for context in contexts:
        context.close()
