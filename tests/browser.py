"""Browser fixtures: Debian's Chromium driven by Playwright (no browser download), one page per test, screenshots.

The tests run as a new user would click: a real Chromium, headless, on this machine without outside network. Each
screenshot is saved under the test's tmp_path, and copied into `UPSELL_SCREENSHOTS_DIR` when that is set (the
README shows them from docs/screenshots/). Without /usr/bin/chromium the browser tests are skipped, unless
`UPSELL_REQUIRE_BROWSER` is set (`make test` installs Chromium and sets it): then a missing browser fails them.

Import the fixtures (`browser`, `page`) into a test module:
`from tests.browser import browser_fixture, page_fixture  # noqa: F401`.
"""

from __future__ import annotations

import contextvars
import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
#: No sandbox (the tests may run as root), and nothing that reaches for the network on its own.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOTS_ENV = "UPSELL_SCREENSHOTS_DIR"
REQUIRE_ENV = "UPSELL_REQUIRE_BROWSER"
VIEWPORT = {"width": 1280, "height": 900}
#: How long a page may take to show what a test waits for (the UI is a single-page app on a loaded machine).
PAGE_TIMEOUT_MS = 20_000


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (make test installs it: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    """One headless Chromium per test module (launching one takes a second or two)."""
    missing = browser_missing()
    if missing:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but the browser tests cannot run: {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(name="page")
def page_fixture(browser: Browser) -> Iterator[Page]:
    """A fresh page in a context of its own (no cookies or storage shared between tests)."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    """Save what the page shows as `<name>.png` under tmp_path, and copy it into UPSELL_SCREENSHOTS_DIR if set."""
    filename = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + ".png"
    path = tmp_path / "screenshots" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 0, f"empty screenshot {path}"
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / filename)
    return path


def off_the_browser_loop(call: Callable[[], T]) -> T:
    """`call()` in a worker thread, with this thread's context (so Prefect's temporary settings apply there too).

    Playwright's sync API keeps its event loop marked as running in the test's thread: there `asyncio.run` refuses
    to start and Prefect's dual sync/async methods (`State.result()`) return a coroutine instead of the value.
    """
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(context.run, call).result()
