"""The dashboard's sampler against a real supervisord and a real queue server: the programs
with a password that needs quoting in a URL, a wrong password said as such, the queues."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from helpers import Supervisord, render_test_stack, wait_until

from kestrelq.client import Client
from kestrelq.credentials import Credentials
from kestrelq.dashboard.collect import Collector
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
