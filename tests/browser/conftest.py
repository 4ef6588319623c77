"""A real headless browser for the admin: Debian's chromium driven by Playwright, one browser
for all the browser tests, pages served by pytest-django's live_server.

No skip when chromium is missing: CI installs it (``.ci/run``), and a missing browser must fail
there rather than pass unnoticed. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("DOCTORJOB_CHROMIUM", "/usr/bin/chromium")
WIDTHS = (1024, 1400, 1920)
PASSWORD = "a-browser-test-password"


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium (or set DOCTORJOB_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright (never `playwright install`)")
    # Playwright's sync API runs an event loop on this thread; Django's ORM calls made by the
    # tests between browser steps are still synchronous, so its async-safety check is off while
    # the browser runs.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    try:
        yield browser
    finally:
        browser.close()
        playwright.stop()
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def superuser(transactional_db: None) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_superuser("operator", "operator@example.com", PASSWORD)


@pytest.fixture
def open_page(browser: Any, live_server: Any, superuser: Any) -> Iterator[Callable[..., Any]]:
    """``open_page(path, width=1400, dark=False)``: a logged-in page (the real login form) at
    that width, showing ``path``."""
    contexts: list[Any] = []
    logged_in: dict[str, Any] = {}

    def open_page(path: str, *, width: int = 1400, dark: bool = False) -> Any:
        context = browser.new_context(
            viewport={"width": width, "height": 900}, color_scheme="dark" if dark else "light"
        )
        contexts.append(context)
        if "state" in logged_in:
            context.add_cookies(logged_in["state"])
        page = context.new_page()
        page.set_default_timeout(15_000)
        if "state" not in logged_in:
            page.goto(f"{live_server.url}/admin/login/")
            page.fill("#id_username", superuser.username)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#site-name")
            logged_in["state"] = context.cookies()
        page.goto(f"{live_server.url}{path}")
        return page

    yield open_page
    for context in contexts:
        context.close()


def sideways_overflow(page: Any, selector: str = "html") -> list[str]:
    """The elements matching ``selector`` whose content is wider than their box (a sideways
    scroll, or clipped), as 'selector: scroll width > client width'."""
    return page.eval_on_selector_all(
        selector,
        """els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e =>
            `${e.tagName.toLowerCase()}#${e.id}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)""",
    )
