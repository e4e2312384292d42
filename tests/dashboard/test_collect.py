"""The dashboard's sampler against a real supervisord and a real queue server: the programs
with a password that needs quoting in a URL, a wrong password said as such, the queues; the
history of deleted queues forgotten, and a QUIESCENT server shown up with its queues."""

from __future__ import annotations

import base64
import itertools
from functools import partial
from pathlib import Path

from helpers import ServerProcess, Supervisord, render_test_stack, wait_until

from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.dashboard.collect import Collector, Snapshot
from kestrelq.dashboard.web import create_app
from kestrelq.protocol.commands import ServerStatus
from kestrelq.servers import Entry, ServerList

PASSWORD = "p@ss/w:rd 1"


def answers(port: int) -> bool:
    try:
        with Client("127.0.0.1", port, 2.0) as client:
            return bool(client.version())
    except OSError:
        return False


def test_sampler(tmp_path: Path) -> None:
    conf, stack = render_test_stack(tmp_path, workers=1)
    sup = Supervisord(
        conf / "supervisord.conf", stack.http_port, tmp_path / "supervisord.out", PASSWORD
    )
    try:
        sup.wait_ready()
        wait_until(partial(sup.running, "queue"), 60, what="queue RUNNING")
        wait_until(partial(sup.running, "work_worker:work_worker_00"), 60, what="the worker")
        wait_until(partial(answers, stack.port), 60, what="the queue to answer")
        with Client("127.0.0.1", stack.port) as client:
            client.set("work_dead", b"poison")

        def collector(password: str) -> Collector:
            return Collector(
                ServerList([Entry("127.0.0.1", stack.port)]),
                Credentials(),
                supervisors=[Entry("127.0.0.1", stack.http_port)],
                supervisor_password=password,
            )

        snap = collector(PASSWORD).sample()
        assert [(s.up, s.error) for s in snap.supervisors] == [(True, "")]
        states = {p.name: p.state for p in snap.processes}
        assert states["queue"] == states["work_worker:work_worker_00"] == "RUNNING"
        assert all(p.uptime_s >= 0 and p.restarts == 0 for p in snap.processes)
        dead = [(d.name, d.target, d.items, d.head) for d in snap.dead]
        assert dead == [("work_dead", "work", 1, "poison")]
        # (`work` exists once the worker's first read reached the server, which may be later.)
        assert "work_dead" in {q.name for q in snap.queues}

        wrong = collector("nope").sample()
        assert [(s.up, s.error) for s in wrong.supervisors] == [(False, "wrong password")]
        assert wrong.processes == [] and [s.up for s in wrong.servers] == [True]
    finally:
        assert sup.stop() == 0


def sampler(port: int) -> Collector:
    """A collector of one server with a clock of its own: one second more at every call."""
    ticks = itertools.count(1000)
    return Collector(
        ServerList([Entry("127.0.0.1", port)]), Credentials(), clock=lambda: float(next(ticks))
    )


def depth_points(snap: Snapshot, queue: str) -> int | None:
    rows = [q for q in snap.queues if q.name == queue]
    return len(rows[0].depth_line) if rows else None


def test_a_deleted_queue_is_forgotten_and_a_silent_servers_queues_are_kept(
    server: ServerProcess,
) -> None:
    c = sampler(server.port)
    with Client("127.0.0.1", server.port) as client:
        client.set("tenant_a", b"x")
        client.set("kept", b"y")
    c.sample()
    assert depth_points(c.sample(), "tenant_a") == 2
    with Client("127.0.0.1", server.port) as client:
        client.delete("tenant_a")
    snap = c.sample()
    assert depth_points(snap, "tenant_a") is None
    assert {queue for _, queue in c._history} == {"kept"}
    # The same name again is a new queue: its chart starts over, not from the deleted one's.
    with Client("127.0.0.1", server.port) as client:
        client.set("tenant_a", b"x")
    assert depth_points(c.sample(), "tenant_a") == 1

    # A server that does not answer for a while loses nothing of what it had shown.
    kept = depth_points(c.sample(), "kept")
    assert kept == 5
    server.stop()
    assert [s.up for s in c.sample().servers] == [False]
    server.start()
    assert depth_points(c.sample(), "kept") == kept + 1


def test_a_quiescent_server_is_up_with_its_queues_and_the_refused_peek_noted(
    server: ServerProcess,
) -> None:
    with Client("127.0.0.1", server.port) as client:
        client.set("work", b"job")
        client.set("work_dead", b"poison")
        client.set("other_dead", b"poison too")
        client.set_status(ServerStatus.QUIESCENT)
    c = sampler(server.port)
    snap = c.sample()
    note = "server is quiescent: dead letters' heads not shown"
    assert [(s.up, s.error, s.note) for s in snap.servers] == [(True, "", note)]
    assert {q.name: q.items for q in snap.queues} == {"work": 1, "work_dead": 1, "other_dead": 1}
    assert sorted((d.name, d.items, d.head) for d in snap.dead) == [
        ("other_dead", 1, ""),
        ("work_dead", 1, ""),
    ]
    login = base64.b64encode(b"kestrelq:pw").decode()
    state = (
        create_app(c, "pw")
        .test_client()
        .get("/api/state", headers={"Authorization": f"Basic {login}"})
        .get_json()
    )
    assert 'class="server up"' in state["html"]["servers"]
    assert "server is quiescent" in state["html"]["servers"]
    # Back UP, the heads are shown again and the note is gone.
    with Client("127.0.0.1", server.port) as client:
        client.set_status(ServerStatus.UP)
    snap = c.sample()
    assert [(s.up, s.note) for s in snap.servers] == [(True, "")]
    assert sorted(d.head for d in snap.dead) == ["poison", "poison too"]
