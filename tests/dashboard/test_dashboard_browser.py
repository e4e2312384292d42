"""The dashboard in a real browser, against real processes on this machine: the host stack
under supervisord (the queue server and a worker), `kestrelq dashboard` over it, and a second
"server" that accepts connections and never answers.

Headless Chromium opens the page (with the login) and, without reloading it, sees: the worker
RUNNING (supervisord's XML-RPC), the silent server down, a queue's depth change as messages are
sent, a dead letter appear with its message, requeued with the button and then handled by the
worker, and another dropped. A screenshot is checked (not blank);
KESTRELQ_DASHBOARD_SCREENSHOT=path also writes it there (`make screenshot`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from browser import screenshot
from helpers import Supervisord, child_env, free_port, render_test_stack, wait_until
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from kestrelq.client import Client

pytestmark = pytest.mark.timeout(600)

WAIT_S = 90


class Dashboard:
    """`kestrelq dashboard` in a subprocess, on a free port."""

    def __init__(self, tmp: Path, password: str, *args: str) -> None:
        self.port = free_port()
        self.password = password
        self.log_path = tmp / "dashboard.log"
        cmd = [sys.executable, "-m", "kestrelq", "dashboard", "--listen", f"127.0.0.1:{self.port}"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(KESTRELQ_SUPERVISOR_PASSWORD=password),
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"dashboard exited:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(self.url + "healthz", timeout=5) as reply:
                return int(reply.status) == 200
        except OSError:
            return False

    @property
    def auth(self) -> dict[str, str]:
        token = base64.b64encode(f"kestrelq:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never answers a byte."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def items_shown(driver: WebDriver, queue: str) -> int | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr.queue[data-queue="{queue}"]')
    return int(rows[0].get_attribute("data-items") or 0) if rows else None


def click(selector: str, driver: WebDriver) -> bool:
    driver.find_element(By.CSS_SELECTOR, selector).click()
    return True


def handled(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("done ")]


def envelope(message_id: str, text: str) -> bytes:
    return json.dumps({"task": "echo", "id": message_id, "args": {"text": text}}).encode()


def test_dashboard_page(tmp_path: Path, browser: WebDriver, silent_server: int) -> None:
    conf, stack = render_test_stack(tmp_path, workers=1)
    handled_log = tmp_path / "handled.log"
    sup = Supervisord(
        conf / "supervisord.conf", stack.http_port, tmp_path / "supervisord.out",
        KESTRELQ_HANDLED_LOG=str(handled_log),
    )  # fmt: skip
    dashboard: Dashboard | None = None
    try:
        sup.wait_ready()
        for name in ("queue:queue", "work_worker:work_worker_00"):
            wait_until(partial(sup.running, name), WAIT_S, what=f"{name} RUNNING")
        servers = f"127.0.0.1:{stack.port},127.0.0.1:{silent_server}"
        # --timeout is for the clicks (a loaded machine may hold a request up for seconds);
        # the samples wait 2 s at most whatever it says, so the silent server is still shown
        # down within seconds.
        dashboard = Dashboard(
            tmp_path, sup.password, "--servers", servers, "--timeout", "60",
            "--supervisor", f"127.0.0.1:{stack.http_port}", "--interval", "0.5", "--window", "60",
        )  # fmt: skip
        wait_until(dashboard.healthy, WAIT_S, what="the dashboard's /healthz")
        check_the_page(browser, dashboard, stack.port, silent_server, handled_log, tmp_path)
        check_a_restart_is_counted(browser, sup)
    finally:
        if dashboard is not None:
            dashboard.stop()
        assert sup.stop() == 0
    assert dashboard is not None and "Traceback" not in dashboard.log_path.read_text()


def check_a_restart_is_counted(browser: WebDriver, sup: Supervisord) -> None:
    """The worker killed with kill -9: supervisord starts it again, the page counts one."""
    name = "work_worker:work_worker_00"
    pid = sup.info(name)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(partial(sup.running, name, pid), WAIT_S, what=f"{name} started again")
    row = f'tr.process[data-name="{name}"]'

    def restarts(driver: WebDriver) -> str:
        return str(driver.find_element(By.CSS_SELECTOR, f"{row} td.restarts").text)

    WebDriverWait(
        browser, WAIT_S, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    ).until(lambda d: restarts(d) == "1")
    assert browser.execute_script("return window.kestrelqMark;") == 42, "the page was reloaded"


def check_the_page(
    browser: WebDriver,
    dashboard: Dashboard,
    port: int,
    silent_port: int,
    handled_log: Path,
    tmp_path: Path,
) -> None:
    # The login, as a user's browser sends it after the prompt, on every request of the page.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": dashboard.auth})
    browser.get(dashboard.url)
    assert browser.title == "kestrelq dashboard"
    browser.execute_script("window.kestrelqMark = 42;")  # gone if anything reloads the page
    # The parts are swapped in as updates arrive: an element found may be replaced before it
    # is read or clicked, and each wait then simply looks again.
    wait = WebDriverWait(
        browser,
        WAIT_S,
        poll_frequency=0.2,
        ignored_exceptions=[StaleElementReferenceException, NoSuchElementException],
    )

    # supervisord's programs, and the server that never answers shown down (not a hung page).
    wait.until(lambda d: d.find_elements(
        By.CSS_SELECTOR, 'tr.process[data-name="work_worker:work_worker_00"][data-state=RUNNING]'
    ))  # fmt: skip
    # Both in one look at the page: a sample in which the real server was slow too (a loaded
    # machine, past the sample's 2 s) shows it down, and the next one up again.
    silent = f'li.server.down[data-server="127.0.0.1:{silent_port}"]'
    real = f'li.server.up[data-server="127.0.0.1:{port}"]'
    wait.until(
        lambda d: (
            "timed out" in d.find_element(By.CSS_SELECTOR, silent).text
            and d.find_elements(By.CSS_SELECTOR, real)
        )
    )

    # A queue nobody reads: its depth follows what is sent.
    with Client("127.0.0.1", port) as client:
        for n in range(4):
            client.set("reports", f"report {n}".encode())
        wait.until(lambda d: items_shown(d, "reports") == 4)
        for n in range(4, 7):
            client.set("reports", f"report {n}".encode())
        wait.until(lambda d: items_shown(d, "reports") == 7)

        # A dead letter appears with its message; requeued, the worker handles it.
        client.set("work_dead", envelope("revived-1", "back from the dead"))
        peek = 'li.deadq[data-queue="work_dead"] pre.peek'
        wait.until(lambda d: '"id": "revived-1"' in d.find_element(By.CSS_SELECTOR, peek).text)
        shot = screenshot(browser, tmp_path / "dashboard.png")
        wait.until(partial(click, 'li.deadq[data-queue="work_dead"] .requeue'))
        wait.until(
            lambda d: "moved 1 from work_dead to work" in d.find_element(By.ID, "notice").text
        )
        wait.until(lambda d: d.find_elements(By.ID, "no-dead"))
        wait_until(lambda: "revived-1" in handled(handled_log), WAIT_S, what="revived-1 handled")

        # Another dead letter, dropped: gone from the queue, never handled.
        client.set("work_dead", envelope("dropped-1", "not wanted"))
        wait.until(lambda d: '"id": "dropped-1"' in d.find_element(By.CSS_SELECTOR, peek).text)
        wait.until(partial(click, 'li.deadq[data-queue="work_dead"] .drop'))
        wait.until(
            lambda d: "dropped the head of work_dead" in d.find_element(By.ID, "notice").text
        )
        wait.until(lambda d: d.find_elements(By.ID, "no-dead"))
        assert client.dump_stats("work_dead")["work_dead"]["items"] == "0"
        assert client.dump_stats("work")["work"]["items"] == "0"
    assert "dropped-1" not in handled(handled_log)
    assert browser.execute_script("return window.kestrelqMark;") == 42, "the page was reloaded"
    target = os.environ.get("KESTRELQ_DASHBOARD_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
