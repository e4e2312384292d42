"""The dashboard's pure parts (history and rates, restarts, names, chart lines) and its web
side's locks (basic auth, the page token) through Flask's test client, in-process. The queue
server it names is a closed port: what the page shows of a server that is down."""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from kestrelq.credentials import Credentials
from kestrelq.dashboard.collect import (
    Collector,
    History,
    Restarts,
    dead_letter_target,
    parse_dead_letters,
    parse_supervisors,
)
from kestrelq.dashboard.web import create_app, duration, line
from kestrelq.errors import ConfigError
from kestrelq.servers import Entry, ServerList


def test_without_got_items_the_rates_come_from_depth_and_a_reset_counter_starts_over() -> None:
    h = History(window_s=60)
    h.add(0, items=0, total=0)
    h.add(10, items=20, total=50)  # 50 put, depth +20: 30 taken
    h.add(20, items=0, total=70)  # 20 put, depth -20: 40 taken
    h.add(30, items=5, total=5)  # restarted: total went back, 5 put since
    assert h.rates() == [(10, 5.0, 3.0), (20, 2.0, 4.0), (30, 0.5, 0.0)]
    assert h.recent_rates(15) == (1.25, 2.0)
    h.add(100, items=5, total=5)  # the first points fall out of the window
    assert [p.at for p in h.points] == [100]
    assert h.recent_rates(60) == (0.0, 0.0)


def test_the_got_rate_is_the_servers_own_count_when_it_has_one() -> None:
    h = History(window_s=60)
    h.add(0, items=0, total=0, got=0)
    h.add(10, items=0, total=10, got=30)  # 20 redeliveries: got counts each hand-out
    h.add(20, items=0, total=10, got=5)  # restarted: counted from 0 again
    assert h.rates() == [(10, 1.0, 3.0), (20, 0.0, 0.5)]


def test_restarts_are_start_times_that_changed() -> None:
    r = Restarts()
    assert r.seen("w:9001", "work_worker_00", 100) == 0
    assert r.seen("w:9001", "work_worker_00", 100) == 0
    assert r.seen("w:9001", "work_worker_00", 160) == 1
    assert r.seen("w:9001", "work_worker_00", 0) == 1  # stopped: no start time, no restart
    assert r.seen("w:9001", "work_worker_00", 200) == 2
    assert r.seen("w2:9001", "work_worker_00", 300) == 0  # another container's process


def test_which_queues_are_dead_letter_queues() -> None:
    assert dead_letter_target("work_dead", {}) == "work"
    assert dead_letter_target("work", {}) is None
    assert dead_letter_target("_dead", {}) is None
    assert dead_letter_target("graveyard", {"graveyard": "mail"}) == "mail"
    assert parse_dead_letters(" graveyard=mail , x=y") == {"graveyard": "mail", "x": "y"}
    with pytest.raises(ConfigError, match="DEAD_QUEUE=QUEUE"):
        parse_dead_letters("graveyard")


def test_supervisors_default_to_port_9001() -> None:
    assert parse_supervisors("worker, http://w2:9005/ ,[::1]") == [
        Entry("worker", 9001),
        Entry("w2", 9005),
        Entry("::1", 9001),
    ]


def test_chart_lines_and_durations() -> None:
    # Scaled to the largest value of any column, over the window before `end`...
    points = [(40.0, 2.0, 4.0), (45.0, 1.0, 0.0)]
    assert line(points, 50, 10, 1, w=100, h=10) == "0.0,5.0 50.0,7.0"
    assert line(points, 50, 10, 2, w=100, h=10) == "0.0,1.0 50.0,9.0"
    # ...or over the history, when it is shorter than the window.
    assert line(points, 50, 60, 1, w=100, h=10) == "0.0,5.0 50.0,7.0"
    assert line(points[-1:], 45, 60, 1, w=100, h=10) == "100.0,1.0"
    assert line([], 50, 10, 1) == ""
    assert [duration(s) for s in (3.21, 42, 250, 7300, 200000)] == [
        "3.2s", "42s", "4m 10s", "2h 1m", "2d 7h",
    ]  # fmt: skip


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector(
        ServerList([Entry("127.0.0.1", closed_port())]),
        Credentials(),
        supervisors=[Entry("127.0.0.1", closed_port())],
        timeout_s=1.0,
    )
    yield c
    c.stop()


@pytest.fixture
def web(collector: Collector) -> FlaskClient:
    return create_app(collector, "s3cret").test_client()


def auth(password: str = "s3cret", user: str = "kestrelq") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_every_page_but_healthz_wants_the_login(web: FlaskClient) -> None:
    assert web.get("/healthz").status_code == 200
    for path in ("/", "/api/state", "/static/dashboard.js"):
        reply = web.get(path)
        assert reply.status_code == 401, path
        assert reply.headers["WWW-Authenticate"].startswith("Basic ")
    assert web.get("/", headers=auth("wrong")).status_code == 401
    assert web.get("/", headers=auth(user="admin")).status_code == 401
    assert web.get("/", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    assert web.get("/", headers=auth()).status_code == 200


def test_no_password_no_dashboard(collector: Collector) -> None:
    with pytest.raises(ConfigError, match="KESTRELQ_SUPERVISOR_PASSWORD"):
        create_app(collector, "")


def test_a_server_and_a_supervisord_that_are_down_are_shown_down(
    web: FlaskClient, collector: Collector
) -> None:
    snap = collector.sample()
    assert [s.up for s in snap.servers] == [False]
    assert [s.up for s in snap.supervisors] == [False]
    state = web.get("/api/state", headers=auth()).get_json()
    assert state["servers"][0]["up"] is False and "refused" in state["servers"][0]["error"]
    assert 'class="server down"' in state["html"]["servers"]
    assert "supervisord" in state["html"]["workers"] and "down" in state["html"]["workers"]
    page = web.get("/", headers=auth()).get_data(as_text=True)
    assert 'class="server down"' in page
    assert web.get("/", headers=auth()).headers["Cache-Control"] == "no-store"


def test_actions_want_the_page_token(web: FlaskClient) -> None:
    page = web.get("/", headers=auth()).get_data(as_text=True)
    match = re.search(r'data-token="([^"]+)"', page)
    assert match is not None
    token = {"X-Kestrelq-Dashboard": match.group(1)}
    body = {"server": "nowhere:1", "queue": "work_dead"}
    # The login alone is what a browser would send with another site's form: refused.
    assert web.post("/api/requeue", json=body, headers=auth()).status_code == 403
    assert (
        web.post("/api/drop", json=body, headers=auth() | {"X-Kestrelq-Dashboard": "x"}).status_code
        == 403
    )
    reply = web.post("/api/requeue", json=body, headers=auth() | token)
    assert reply.status_code == 400 and "no queue server" in reply.get_json()["error"]
    assert web.post("/api/requeue", data="[]", headers=auth() | token).status_code == 400


def test_a_click_waits_for_the_server_longer_than_a_sample() -> None:
    with socket.socket() as listener:  # accepts (the kernel does); never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        address = listener.getsockname()
        c = Collector(
            ServerList([Entry(*address)]), Credentials(), timeout_s=1.0, action_timeout_s=30.0
        )
        with c.client(address) as sample, c.client(address, c.action_timeout_s) as action:
            assert (sample.sock.gettimeout(), action.sock.gettimeout()) == (1.0, 30.0)
