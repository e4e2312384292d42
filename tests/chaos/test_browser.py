"""The web front end in a real browser against the running compose stack.

Headless Chromium (Debian's chromium and chromium-driver) driven by selenium opens the page,
uploads two photos, a text file and a photo cut short in one go, and without reloading sees:
the text file rejected at once, both thumbnails appear (made by the workers, with their sizes),
and the cut photo fail in the worker until its deliveries are spent and it is dead-lettered.
Screenshots are saved and checked (not blank); KESTRELQ_SCREENSHOT=path also writes the last
one there (`make screenshot` regenerates the README's image that way).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_stack import REPO, Stack
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(REPO / "tests" / "app"))
from images import photo

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,1000",
)
# Generous: the cut photo is retried with backoff until max_deliveries (5) are spent.
SETTLE_S = 180


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
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


def states(driver: WebDriver) -> dict[str, str]:
    return {
        li.find_element(By.CLASS_NAME, "name").text: str(li.get_attribute("data-state"))
        for li in driver.find_elements(By.CSS_SELECTOR, "li.upload")
    }


def test_upload_in_a_browser(stack: Stack, browser: WebDriver, tmp_path: Path) -> None:
    files = {
        "landscape.jpg": photo(800, 600),
        "portrait.png": photo(300, 400, "PNG"),
        "notes.txt": b"this is not a photo\n",
        "cut.jpg": photo(800, 600)[:9000],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    url = f"http://127.0.0.1:{stack.web_port}/"
    browser.get(url)
    assert "kestrelq" in browser.title
    screenshot(browser, tmp_path / "1-empty.png")

    browser.find_element(By.ID, "photos").send_keys(
        "\n".join(str(tmp_path / name) for name in files)
    )
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 30).until(lambda d: len(states(d)) == 3)
    # The answer came at once: the accepted photos are queued (or already done), the text
    # file is refused with its reason.
    rejected = browser.find_element(By.ID, "rejected").text
    assert "notes.txt: rejected: not an image" in rejected
    assert set(states(browser)) == {"landscape.jpg", "portrait.png", "cut.jpg"}
    # Marks this page: if anything reloaded it, the mark is gone.
    browser.execute_script("window.kestrelqMark = 42;")
    screenshot(browser, tmp_path / "2-queued.png")

    WebDriverWait(browser, SETTLE_S, poll_frequency=0.5).until(
        lambda d: states(d) == {"landscape.jpg": "done", "portrait.png": "done", "cut.jpg": "dead"}
    )
    assert browser.execute_script("return window.kestrelqMark;") == 42, "the page was reloaded"
    WebDriverWait(browser, 30).until(
        lambda d: (
            all(
                d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0;", img
                )
                for img in d.find_elements(By.CSS_SELECTOR, "li.upload img")
            )
            and len(d.find_elements(By.CSS_SELECTOR, "li.upload img")) == 2
        )
    )
    sizes = {
        li.find_element(By.CLASS_NAME, "name").text: browser.execute_script(
            "const i = arguments[0]; return [i.naturalWidth, i.naturalHeight];",
            li.find_element(By.TAG_NAME, "img"),
        )
        for li in browser.find_elements(By.CSS_SELECTOR, "li.upload")
        if li.get_attribute("data-state") == "done"
    }
    assert sizes == {"landscape.jpg": [256, 192], "portrait.png": [192, 256]}
    details = browser.find_element(By.ID, "uploads").text
    assert details.count("made by ") == 2 and "s in the queue" in details
    assert "work_worker_" in details
    assert "cannot decode" in details and "dead-letter queue" in details
    final = screenshot(browser, tmp_path / "3-thumbnails.png")
    # The cut photo's task is in the dead-letter queue, with nothing else.
    dead = stack.exec("app", "kestrelq", "peek", "work_dead", check=False)
    assert dead.count('"task":"thumbnail"') == 1, dead
    target = os.environ.get("KESTRELQ_SCREENSHOT")
    if target:
        shutil.copyfile(final, target)
