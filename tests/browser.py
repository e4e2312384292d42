"""Headless Chromium for the browser tests (the `browser` fixture of tests/conftest.py):
Debian's chromium and chromium-driver, driven by selenium, with a fresh profile per test; and
a screenshot check that fails on a blank page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

# Nothing but the page under test: no QUIC, no background fetches, no updates, no sync.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,1000",
)


@contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile in `profile` (the `browser` fixture's)."""
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = binary
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, path: Path) -> Path:
    """Save one, and check it shows something: many colours, not one flat page."""
    assert driver.save_screenshot(str(path)), path
    with Image.open(path) as shot:
        colours = shot.convert("RGB").getcolors(maxcolors=1_000_000) or []
        assert shot.size[0] >= 800 and len(colours) > 50, f"{path} looks blank"
    return path
