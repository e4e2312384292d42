"""Random operations against a real server, checked step by step against a tiny model.

Two connections set, get, open, close, abort and disconnect on one queue while the server is
killed (-9) or stopped now and then. The model is a list (the queue) plus each connection's
open read; every reply must be exactly what the model predicts. Run with a small memory
window (most items only in the journal, read behind) and small journal segments, and with the
defaults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ServerProcess, Wire, server_stats, value, wait_until

QUEUE = "m"
# More sets than takes, so the queue grows well past a small memory window.
OPS = ["set"] * 5 + ["get", "open", "close", "close_open", "abort", "peek", "disconnect"]


@dataclass
class Model:
    ready: list[bytes] = field(default_factory=list)
    # Each connection's open read, with the order in which reads were opened.
    open_reads: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    opened = 0

    def restart(self) -> None:
        # Open reads go back to the head, the oldest first.
        back = [data for _, data in sorted(self.open_reads.values())]
        self.ready[:0] = back
        self.open_reads.clear()


class Harness:
    def __init__(self, srv: ServerProcess, rng: random.Random) -> None:
        self.srv = srv
        self.rng = rng
        self.model = Model()
        self.conns: dict[int, Wire] = {}
        self.counter = 0

    def conn(self, c: int) -> Wire:
        if c not in self.conns:
            self.conns[c] = Wire(self.srv.port)
        return self.conns[c]

    def drop_all(self) -> None:
        for w in self.conns.values():
            w.close()
        self.conns.clear()

    def step(self) -> str:
        m, rng = self.model, self.rng
        c = rng.randrange(2)
        w = self.conn(c)
        holding = c in m.open_reads
        op = "restart" if rng.random() < 0.02 else rng.choice(OPS)
        if op == "set":
            self.counter += 1
            data = b"%d-" % self.counter + b"p" * rng.randrange(0, 400)
            assert w.call(b"set m 0 0 %d\r\n%s\r\n" % (len(data), data)) == b"STORED\r\n"
            m.ready.append(data)
        elif op == "get" and not holding:
            assert w.call(b"get m\r\n") == (value("m", m.ready.pop(0)) if m.ready else b"END\r\n")
        elif op in ("open", "close_open") and (op == "close_open" or not holding):
            key = "m/open" if op == "open" else "m/close/open"
            m.open_reads.pop(c, None)  # close_open confirms first
            expected = value(key, m.ready[0]) if m.ready else b"END\r\n"
            assert w.call(f"get {key}\r\n".encode()) == expected
            if m.ready:
                m.opened += 1
                m.open_reads[c] = (m.opened, m.ready.pop(0))
        elif op == "close":
            assert w.call(b"get m/close\r\n") == b"END\r\n"
            m.open_reads.pop(c, None)
        elif op == "abort":
            assert w.call(b"get m/abort\r\n") == b"END\r\n"
            if holding:
                m.ready.insert(0, m.open_reads.pop(c)[1])
        elif op == "peek":
            assert w.call(b"get m/peek\r\n") == (
                value("m/peek", m.ready[0]) if m.ready else b"END\r\n"
            )
        elif op == "disconnect":
            w.close()
            del self.conns[c]
            if holding:
                m.ready.insert(0, m.open_reads.pop(c)[1])
            self.settle()
        elif op == "restart":
            how = rng.choice(["kill", "stop"])
            if how == "kill":
                self.srv.kill()
            else:
                # On a clean stop the connections close in no defined order; close them
                # ourselves first, one at a time, so the order at the head is defined.
                self.release_all()
                assert self.srv.stop() == 0, self.srv.log()
            self.drop_all()
            m.restart()
            self.srv.start()
        else:
            return "skipped"
        return op

    def release_all(self) -> None:
        """Disconnect one connection at a time, newest read first: the oldest ends at the head."""
        m = self.model
        for conn_id, _ in sorted(m.open_reads.items(), key=lambda kv: -kv[1][0]):
            self.conns.pop(conn_id).close()
            m.ready.insert(0, m.open_reads.pop(conn_id)[1])
            self.settle()
        self.drop_all()

    def settle(self) -> None:
        """Wait until the server has processed a disconnect (its reads are back)."""
        want = (str(len(self.model.ready)), str(len(self.model.open_reads)))

        def done() -> bool:
            stats = server_stats(self.srv.port)
            return (
                stats.get("queue_m_items", "0"),
                stats.get("queue_m_open_transactions", "0"),
            ) == want

        wait_until(done, 60, what=f"items/open = {want}")

    def check_stats(self) -> None:
        stats = server_stats(self.srv.port)
        m = self.model
        assert stats.get("queue_m_items", "0") == str(len(m.ready))
        assert stats.get("queue_m_bytes", "0") == str(sum(len(d) for d in m.ready))
        assert stats.get("queue_m_open_transactions", "0") == str(len(m.open_reads))


@pytest.mark.parametrize(
    ("seed", "window"),
    [(1, "small"), (2, "small"), (3, "small"), (4, "default"), (5, "default")],
    ids=lambda v: str(v),
)
def test_random_operations_match_the_model(tmp_path: Path, seed: int, window: str) -> None:
    conf = tmp_path / "kestrelq.toml"
    if window == "small":
        conf.write_text(
            "[server]\nsegment_bytes = 8192\n[queue_defaults]\nmax_memory_bytes = 2048\n"
        )
    else:
        conf.write_text("")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    harness = Harness(srv, random.Random(seed))
    ops: list[str] = []
    most_bytes = 0
    try:
        for i in range(300):
            ops.append(harness.step())
            most_bytes = max(most_bytes, sum(len(d) for d in harness.model.ready))
            if i % 25 == 0:
                harness.check_stats()
        harness.check_stats()
        # Finally everything comes out, in the model's order.
        harness.release_all()
        with Wire(srv.port) as w:
            for data in harness.model.ready:
                assert w.call(b"get m\r\n") == value("m", data)
            assert w.call(b"get m\r\n") == b"END\r\n"
    except AssertionError:
        print(f"ops so far: {ops[-30:]}")
        raise
    finally:
        harness.drop_all()
        if srv.proc is not None and srv.proc.poll() is None:
            assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log()
    assert ops.count("restart") >= 2
    print(f"seed {seed}: {ops.count('restart')} restarts, queue up to {most_bytes} bytes")
    assert most_bytes > 8 * 2048, "the queue never went far past the small memory window"
