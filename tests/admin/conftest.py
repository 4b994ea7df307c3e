"""A headless Chromium driven by Selenium for the admin's browser tests, against pytest-django's
`live_server` (transactional tests: the server thread sees what a test commits).

Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver; .ci/run
installs them). Missing, the tests are skipped, except in CI (CI=true), where they fail.
Screenshots are written to docs/screenshots/ only with SAVE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WINDOW = (1280, 900)
# The machine's network is closed: without the background-networking flags Chromium keeps
# trying to reach Google's services and misbehaves.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]


def _missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return ""


@pytest.fixture(scope="session")
def browser_downloads() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="admin-downloads-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def _chromium(browser_downloads):
    if reason := _missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run in CI: {reason}")
        pytest.skip(f"browser tests need a browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="admin-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(browser_downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    # The driver named explicitly, so Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(5)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(browser_downloads)})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(_chromium, live_server):
    """The session's browser, signed out, on a blank page."""
    _chromium.get(f"{live_server.url}/admin/login/")
    _chromium.delete_all_cookies()
    yield _chromium
    _chromium.delete_all_cookies()


@pytest.fixture
def root(transactional_db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "root-password")


@pytest.fixture
def signed_in(browser, live_server, root):
    """The browser signed in as `root` (a session made by Django's test client): the login
    form itself is driven once, in the cancel test."""
    client = Client()
    client.force_login(root)
    browser.get(f"{live_server.url}/admin/login/")
    browser.add_cookie(
        {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value, "path": "/"}
    )
    return browser


@pytest.fixture
def screenshot():
    """`screenshot(browser, name)`: docs/screenshots/<name>.png, only with SAVE_SCREENSHOTS=1
    (so an ordinary run does not rewrite the committed ones)."""

    def take(browser, name: str) -> None:
        if os.environ.get("SAVE_SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        # The page's content, not the apps' menu beside it (the state stays for the session).
        if [sidebar for sidebar in browser.find_elements("id", "nav-sidebar") if sidebar.is_displayed()]:
            browser.find_element("id", "toggle-nav-sidebar").click()
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    return take
