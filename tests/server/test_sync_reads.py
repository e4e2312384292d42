"""Under `fsync always`, a read's reply does not wait for its fsync unless `sync_reads` says so.

A read's records (get, /open, /close, /abort) are written before its reply and fsynced with the
next group commit (the server's tick runs one when no write does); a `STORED` still waits for
its fsync, and a read never hands out a message whose ADD is not durable yet. The server is
real, in this process, with the mock transport of test_protocol.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_protocol import connect, run, until

from kestrelq.errors import ConfigError
from kestrelq.journal.format import REMOVE, Add
from kestrelq.journal.item import Item
from kestrelq.journal.policy import FsyncPolicy
from kestrelq.server.config import load
from kestrelq.server.server import Server


def value_x(key: bytes = b"q") -> bytes:
    return b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key


async def stored(server: Server, data: bytes = b"set q 0 0 1\r\nx\r\n") -> None:
    conn, t = connect(server)
    conn.data_received(data)
    await until(lambda: t.buffer, "STORED after its fsync")
    assert t.take() == b"STORED\r\n"


def test_a_reads_reply_goes_out_before_its_fsync_and_the_tick_syncs_it(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        await stored(server)
        await stored(server)
        store, ledger = server.store, server.store.ledger
        fsyncs, size = store.fsyncs, store.journals["q"].size
        conn, t = connect(server)
        conn.data_received(b"get q/open\r\n")
        # Answered at once, its record in the file already (a kill -9 cannot lose it), and
        # owed to the next group commit.
        assert t.take() == value_x(b"q/open")
        assert store.journals["q"].size > size and not store.unwritten
        assert not ledger.waiting and ledger.unsynced
        conn.data_received(b"get q/close\r\nget q/abort\r\nget q\r\n")
        assert t.take() == b"END\r\n" * 2 + value_x()
        assert store.fsyncs == fsyncs
        server.housekeeping()  # the tick: nobody wrote meanwhile, so it runs the group commit
        assert store.fsyncs == fsyncs + 1 and not ledger.unsynced
        assert ledger.durable(ledger.seq)

    run(tmp_path, scenario, fsync="always")


def test_with_sync_reads_a_reads_reply_waits_for_its_fsync(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        await stored(server)
        fsyncs = server.store.fsyncs
        conn, t = connect(server)
        conn.data_received(b"get q/open\r\n")
        assert t.buffer == b"" and server.store.ledger.waiting
        await until(lambda: t.buffer, "the reply after the fsync")
        assert t.take() == value_x(b"q/open") and server.store.fsyncs == fsyncs + 1
        conn.data_received(b"get q/close\r\n")
        assert t.buffer == b""
        await until(lambda: t.buffer, "the reply after the fsync")
        assert t.take() == b"END\r\n" and server.store.fsyncs == fsyncs + 2

    run(tmp_path, scenario, fsync="always", sync_reads=True)


def test_a_read_never_hands_out_a_message_before_its_add_is_durable(tmp_path: Path) -> None:
    async def scenario(server: Server) -> None:
        writer, wt = connect(server)
        reader, rt = connect(server)
        writer.data_received(b"set q 0 0 1\r\nx\r\n")
        # In the same turn, before the group commit: the item is in memory, its ADD only
        # written. The read's reply waits for the fsync that the STORED waits for.
        reader.data_received(b"get q\r\n")
        assert wt.buffer == b"" and rt.buffer == b""
        await until(lambda: wt.buffer and rt.buffer, "both replies after the fsync")
        assert wt.take() == b"STORED\r\n" and rt.take() == value_x()

    run(tmp_path, scenario, fsync="always")


def test_sync_reads_per_queue_beats_the_server(tmp_path: Path) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[server]\nsync_reads = true\n[queues.q]\nsync_reads = false\n")

    async def scenario(server: Server) -> None:
        await stored(server)
        await stored(server, b"set strict 0 0 1\r\ny\r\n")
        conn, t = connect(server)
        conn.data_received(b"get q\r\n")
        assert t.take() == value_x()  # the queue's `false` over the server's `true`
        conn.data_received(b"get strict\r\n")
        assert t.buffer == b""  # the server's `true`
        await until(lambda: t.buffer, "the reply after the fsync")
        assert t.take() == b"VALUE strict 0 1\r\ny\r\nEND\r\n"

    run(tmp_path, scenario, fsync="always", config_file=str(conf))


def test_sync_reads_from_the_file_the_environment_and_the_command_line(tmp_path: Path) -> None:
    assert load({}, {}).queue_fsync("q") == FsyncPolicy("always")
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[queue_defaults]\nsync_reads = true\n[queues.lax]\nsync_reads = false\n")
    cfg = load({"config_file": str(conf)}, {})
    assert not cfg.sync_reads
    assert cfg.queue_fsync("q") == FsyncPolicy("always", sync_reads=True)
    assert cfg.queue_fsync("lax") == FsyncPolicy("always")
    env = {"KESTRELQ_SYNC_READS": "true"}
    assert load({}, env).queue_fsync("q").sync_reads
    assert not load({"sync_reads": False}, env).sync_reads
    with pytest.raises(ConfigError, match="sync_reads"):
        load({}, {"KESTRELQ_SYNC_READS": "sometimes"})
    conf.write_text('[queues.q]\nsync_reads = "sometimes"\n')
    with pytest.raises(ConfigError, match="sync_reads"):
        load({"config_file": str(conf)}, {})


@pytest.mark.parametrize("policy", ["never", "100"])
def test_only_always_holds_replies_whatever_sync_reads_says(policy: str) -> None:
    lax = FsyncPolicy.parse(policy)
    strict = FsyncPolicy("always", sync_reads=True)
    assert not FsyncPolicy(lax.mode, lax.period_ms, sync_reads=True).waits_for(REMOVE)
    assert not lax.waits_for(Add(Item(b"x", 0, 0)))
    assert strict.waits_for(REMOVE) and not FsyncPolicy("always").waits_for(REMOVE)
