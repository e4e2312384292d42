"""Crash tests of the queue server: kill -9 under load, torn and damaged journals, a full disk.

What must hold: every message that got STORED is delivered at least once after any
number of crashes, and a confirmed read comes back only if it was still open at the crash
(a read's records reach the file before its reply, so `sync_reads` changes nothing here: it
is about power cuts); what was never opened comes out in FIFO order; a torn journal tail is cut
off with a warning and the intact prefix served; a damaged record mid-file stops the start
with a message naming the file and offset (unless salvaging); with the disk full, writes are
refused with an error reply while reads go on, and writes work again once there is room.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    ServerProcess,
    Wire,
    child_env,
    drain,
    fill_disk,
    record_spans,
    segments,
    server_stats,
    small_tmpfs,
    wait_until,
)

from kestrelq.journal.format import Add, decode

pytestmark = pytest.mark.chaos

LOAD_CLIENT = Path(__file__).resolve().parent.parent / "server" / "load_client.py"
PRODUCER = Path(__file__).resolve().parent.parent / "producer.py"
QUEUE = "chaos"
PRODUCERS = 4
CONSUMERS = 2
KILLS = 3
MAX_ITEMS_PER_PRODUCER = 3000
# Makes a backlog big enough to outgrow a small memory window (read-behind).
PADDING = 100


# -- helpers ------------------------------------------------------------------------------------


def spawn(script: Path, *args: object) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(script), *map(str, args)]
    return subprocess.Popen(cmd, env=child_env(), stderr=subprocess.DEVNULL)


def stored_ids(path: Path) -> list[str]:
    """The ids a producer saw STORED so far (its REFUSED and FAILED lines are not)."""
    return [line.split()[1] for line in lines(path) if line.startswith("STORED ")]


def lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    # A line being written right now has no newline yet: leave it for the next read.
    text = path.read_text()
    return text.split("\n")[:-1]


def longest_increasing(seq: list[int]) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting)."""
    import bisect

    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        tails[i : i + 1] = [x]
    return len(tails)


# -- kill -9 under load ----------------------------------------------------------------------


Id = tuple[int, int]  # (producer, n)


WINDOWS = {
    "default": "",
    "small": "[server]\nsegment_bytes = 16384\n[queue_defaults]\nmax_memory_bytes = 4096\n",
    # Rotations many times a second under load: kills land in the middle of them.
    "tiny": "[server]\nsegment_bytes = 4096\n[queue_defaults]\nmax_memory_bytes = 2048\n",
}


def run_with_kills(
    tmp_path: Path,
    fsync: str,
    consumers: int,
    rng: random.Random,
    window: str = "default",
    kills: int = KILLS,
    progress: tuple[int, int] = (300, 900),
) -> tuple[set[Id], list[list[Id]], list[Id]]:
    """4 producers and `consumers` consumers against a server killed -9 `kills` times.

    With window="small" most of the backlog lives only in the journal (read behind) and
    segments rotate often. Returns the ids that got STORED, each consumer's received ids in
    order, and what a plain drain found after everyone stopped (consumers stop only once the
    queue is empty).
    """
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(WINDOWS[window])
    fsync, _, sync_reads = fsync.partition("+")  # "always+sync_reads": the flag too
    flags = ["--sync-reads"] if sync_reads else []
    srv = ServerProcess(tmp_path / "data", "--fsync", fsync, *flags, "--config", str(conf))
    srv.start()
    stop_producers, stop_consumers = tmp_path / "stop-producers", tmp_path / "stop-consumers"
    acked_files = [tmp_path / f"acked-{p}" for p in range(PRODUCERS)]
    got_files = [tmp_path / f"received-{c}" for c in range(consumers)]
    producer_procs = [
        spawn(
            PRODUCER,
            *("--port", srv.port, "--queue", QUEUE, "--prefix", p, "--pad", PADDING),
            *("--count", MAX_ITEMS_PER_PRODUCER, "--stop", stop_producers, "--out", acked_files[p]),
        )
        for p in range(PRODUCERS)
    ]
    consumer_procs = [
        spawn(LOAD_CLIENT, "consume", srv.port, QUEUE, f, stop_consumers) for f in got_files
    ]

    def acked_total() -> int:
        return sum(len(stored_ids(f)) for f in acked_files)

    def received_total() -> int:
        return sum(len(lines(f)) for f in got_files)

    try:
        for _ in range(kills):
            # Kill at a random point, once producers (and consumers) made progress.
            acked_goal = acked_total() + rng.randint(*progress)
            received_goal = received_total() + min(consumers, 1)
            wait_until(lambda: acked_total() >= acked_goal, 30, what="producer progress")  # noqa: B023
            wait_until(lambda: received_total() >= received_goal, 30, what="consumer progress")  # noqa: B023
            srv.kill()
            srv.start()
        acked_goal = acked_total() + 100
        wait_until(lambda: acked_total() >= acked_goal, 30, what="progress after restarts")
        stop_producers.touch()
        for proc in producer_procs:
            assert proc.wait(60) == 0
        stop_consumers.touch()
        for proc in consumer_procs:
            assert proc.wait(90) == 0
        leftovers = drain(srv.port, QUEUE)
        stats = server_stats(srv.port)
        assert stats[f"queue_{QUEUE}_open_transactions"] == "0"
        assert stats[f"queue_{QUEUE}_items"] == "0"
    finally:
        stop_producers.touch()
        stop_consumers.touch()
        for proc in producer_procs + consumer_procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if srv.proc is not None and srv.proc.poll() is None:
            assert srv.stop() == 0
    assert "Traceback" not in srv.log()

    def ids(raw: list[str]) -> list[Id]:
        # Message ids are `<producer>-<n>`; a drained body still has its `:<padding>`.
        return [(int(a), int(b)) for a, b in (x.split(":")[0].split("-") for x in raw)]

    stored = set(ids([i for f in acked_files for i in stored_ids(f)]))
    received = [ids(lines(f)) for f in got_files]
    return stored, received, ids([x.decode() for x in leftovers])


def out_of_fifo_order(sequences: list[list[Id]], counts: Counter[Id]) -> int:
    """How many ids (received once) break their producer's order, summed over `sequences`."""
    total = 0
    for seq in sequences:
        firsts = list(dict.fromkeys(seq))  # first occurrences, in order
        for p in range(PRODUCERS):
            mine = [n for q, n in firsts if q == p and counts[(q, n)] == 1]
            total += len(mine) - longest_increasing(mine)
    return total


@pytest.mark.parametrize(
    ("fsync", "window"),
    [
        ("always", "default"),
        ("always+sync_reads", "default"),
        ("never", "default"),
        ("always", "small"),
    ],
)
def test_kill_9_under_load_loses_nothing_stored(tmp_path: Path, fsync: str, window: str) -> None:
    stored, received, drained = run_with_kills(
        tmp_path, fsync, CONSUMERS, random.Random(f"kill-{fsync}"), window
    )
    everything = [i for seq in received for i in seq] + drained
    counts = Counter(everything)
    duplicates = {i: n for i, n in counts.items() if n > 1}
    missing = sorted(stored - set(counts))
    print(
        f"fsync={fsync} window={window}: {len(stored)} stored, {len(everything)} received "
        f"({len(counts)} distinct, {len(drained)} left for the final drain), "
        f"{len(duplicates)} delivered more than once: {sorted(duplicates)[:20]}"
    )
    assert len(stored) >= KILLS * 300
    assert not missing, f"{len(missing)} STORED messages never delivered: {missing[:20]}"
    assert all(0 <= p < PRODUCERS for p, _ in counts), "a message nobody sent"
    # Redelivery happens only for reads open at a crash: one per consumer connection per kill.
    assert sum(n - 1 for n in duplicates.values()) <= CONSUMERS * KILLS

    # FIFO: a producer's ids come out in order, except reads that were open at a crash and
    # went back to the head on restart (at most one per consumer per kill).
    disorder = out_of_fifo_order([*received, drained], counts)
    print(f"fsync={fsync}: {disorder} messages out of FIFO order")
    assert disorder <= CONSUMERS * KILLS


@pytest.mark.parametrize(
    ("fsync", "window"),
    [("always", "default"), ("never", "default"), ("never", "small"), ("100", "small")],
)
def test_kill_9_while_producing_then_fifo_drain(tmp_path: Path, fsync: str, window: str) -> None:
    # Nothing is ever opened here, so after the crashes the queue must hold every STORED id
    # exactly once, each producer's ids in strictly increasing order.
    stored, received, drained = run_with_kills(
        tmp_path, fsync, 0, random.Random(f"produce-{fsync}"), window
    )
    assert received == []
    counts = Counter(drained)
    print(f"fsync={fsync} window={window}: {len(stored)} stored, {len(drained)} drained")
    assert len(stored) >= KILLS * 300
    assert not sorted(stored - set(counts))
    assert max(counts.values()) == 1, "a message came out twice though never opened"
    for p in range(PRODUCERS):
        mine = [n for q, n in drained if q == p]
        assert mine == sorted(mine), f"producer {p} out of order"


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_many_kills_during_journal_rotations(tmp_path: Path, fsync: str) -> None:
    kills = 10
    stored, received, drained = run_with_kills(
        tmp_path, fsync, 1, random.Random(f"rotate-{fsync}"), "tiny", kills, (50, 400)
    )
    counts = Counter([*received[0], *drained])
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"fsync={fsync}: {len(stored)} stored, {len(counts)} received, {duplicates} again")
    assert not sorted(stored - set(counts))
    assert duplicates <= kills  # one consumer: at most one open read per kill
    assert out_of_fifo_order([received[0], drained], counts) <= kills


# -- torn and damaged journals ---------------------------------------------------------------

ITEMS = [b"item%03d-" % i + b"x" * (i % 7) for i in range(40)]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path, bytes]]:
    """A stopped server whose queue `t` holds ITEMS; yields (server, journal file, its bytes)."""
    srv = ServerProcess(tmp_path / "data", "--fsync", "always").start()
    with Wire(srv.port) as w:
        for i, data in enumerate(ITEMS):
            assert w.call(b"set t %d 0 %d\r\n%s\r\n" % (i, len(data), data)) == b"STORED\r\n"
    assert srv.stop() == 0
    (path,) = segments(srv.data_dir, "t")
    yield srv, path, path.read_bytes()
    if srv.proc is not None and srv.proc.poll() is None:
        assert srv.stop() == 0, srv.log()


def served(port: int) -> list[bytes]:
    return drain(port, "t")


def _damage_cases() -> list[object]:
    rng = random.Random("torn")
    cases: list[object] = []
    for k in range(5):
        cases.append(pytest.param("cut", rng.random(), id=f"cut-{k}"))
    cases.append(pytest.param("cut", 0.0, id="cut-at-record-start+1"))
    cases.append(pytest.param("garbage", 0.0, id="append-random-garbage"))
    cases.append(pytest.param("zeros", 0.0, id="append-zeros"))
    cases.append(pytest.param("huge-header", 0.0, id="append-impossible-header"))
    return cases


@pytest.mark.parametrize(("how", "where"), _damage_cases())
def test_torn_tail_is_cut_and_the_intact_prefix_served(
    journal: tuple[ServerProcess, Path, bytes], how: str, where: float
) -> None:
    srv, path, original = journal
    last_start, last_end = record_spans(original)[-1]
    rng = random.Random(f"{how}-{where}")
    if how == "cut":
        # Somewhere strictly inside the last record: a write the crash tore apart.
        offset = last_start + 1 + int(where * (last_end - last_start - 1))
        path.write_bytes(original[:offset])
        expected = ITEMS[:-1]
    elif how == "garbage":
        path.write_bytes(original + rng.randbytes(61))
        expected = ITEMS
    elif how == "zeros":
        path.write_bytes(original + bytes(4096))
        expected = ITEMS
    else:
        path.write_bytes(original + (10**9).to_bytes(4, "little") + b"\x00" * 9)
        expected = ITEMS
    damaged_size = path.stat().st_size

    srv.start()
    log = srv.log()
    if how == "zeros":
        # What the room written ahead of the records leaves after a crash: a clean end.
        assert "torn tail" not in log, log[-2000:]
    elif damaged_size != len(original):
        assert "torn tail" in log, log[-2000:]
    assert served(srv.port) == expected
    # The cut must really be gone: a record appended now is found after the next restart.
    with Wire(srv.port) as w:
        assert w.call(b"set t 0 0 5\r\nafter\r\n") == b"STORED\r\n"
    assert srv.stop() == 0
    srv.start()
    assert served(srv.port) == [b"after"]
    assert "Traceback" not in srv.log()


@pytest.mark.parametrize("field", ["data", "crc", "length"])
def test_damaged_record_mid_file_refuses_start_until_salvage(
    journal: tuple[ServerProcess, Path, bytes], field: str
) -> None:
    srv, path, original = journal
    spans = record_spans(original)
    start, end = spans[len(spans) // 2]
    index = len(spans) // 2  # the damaged record is ITEMS[index]
    position = {"data": (start + end) // 2, "crc": start + 5, "length": start + 1}[field]
    damaged = bytearray(original)
    damaged[position] ^= 0x5A
    path.write_bytes(bytes(damaged))

    srv.start(wait=False)
    assert srv.proc is not None
    code = srv.proc.wait(20)
    log = srv.log()
    assert code != 0, "the server started on a journal damaged mid-file"
    assert str(path) in log and f"offset {start}" in log, log[-2000:]
    assert "--salvage" in log

    srv.start("--salvage")
    got = served(srv.port)
    assert got == ITEMS[:index] + ITEMS[index + 1 :]
    assert srv.stop() == 0
    # Salvage rewrote the journal: a normal start works again.
    srv.start()
    assert served(srv.port) == []
    assert srv.stop() == 0


# -- damage in an older segment, behind the in-memory window ---------------------------------

BEHIND_ITEMS = [b"b%03d-" % i + b"z" * 95 for i in range(100)]
DAMAGED = 60  # an item read behind, in an older segment


@pytest.fixture
def damaged_behind(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path, int]]:
    """A stopped server whose queue `b` spans several segments, with the record of
    BEHIND_ITEMS[DAMAGED] (behind the memory window, in an older segment) damaged.

    Yields (server, damaged file, offset of the damaged record).
    """
    conf = tmp_path / "kestrelq.toml"
    conf.write_text("[server]\nsegment_bytes = 2048\n[queue_defaults]\nmax_memory_bytes = 1024\n")
    srv = ServerProcess(tmp_path / "data", "--config", str(conf)).start()
    with Wire(srv.port) as w:
        for k in range(4):
            # A quarter per segment: wait for the rotation before writing the next quarter.
            before = int(server_stats(srv.port).get("queue_b_journal_rotations", "0"))
            for data in BEHIND_ITEMS[k * 25 : (k + 1) * 25]:
                assert w.call(b"set b 0 0 %d\r\n%s\r\n" % (len(data), data)) == b"STORED\r\n"

            def rotated(before: int = before) -> bool:
                return int(server_stats(srv.port)["queue_b_journal_rotations"]) > before

            wait_until(rotated, 60, what="a journal rotation")
    assert int(server_stats(srv.port)["queue_b_mem_items"]) < 20  # most are read behind
    assert srv.stop() == 0
    files = segments(srv.data_dir, "b")
    assert len(files) >= 4
    for path in files[:-1]:
        buf = path.read_bytes()
        for start, end in record_spans(buf):
            decoded = decode(buf, start, len(buf))
            assert decoded is not None
            record = decoded[0]
            if isinstance(record, Add) and record.item.data == BEHIND_ITEMS[DAMAGED]:
                damaged = bytearray(buf)
                damaged[(start + end) // 2] ^= 0x5A
                path.write_bytes(bytes(damaged))
                yield srv, path, start
                if srv.proc is not None and srv.proc.poll() is None:
                    assert srv.stop() == 0, srv.log()
                return
    raise AssertionError("the item to damage is not in an older segment")


def test_damage_behind_the_memory_window_refuses_start_until_salvage(
    damaged_behind: tuple[ServerProcess, Path, int],
) -> None:
    srv, path, offset = damaged_behind
    srv.start(wait=False)
    assert srv.proc is not None
    assert srv.proc.wait(20) != 0, "started on a damaged journal"
    assert str(path) in srv.log() and f"offset {offset}" in srv.log()

    srv.start("--salvage")
    assert drain(srv.port, "b") == BEHIND_ITEMS[:DAMAGED] + BEHIND_ITEMS[DAMAGED + 1 :]
    with Wire(srv.port) as w:
        assert w.call(b"set b 0 0 3\r\nnew\r\n") == b"STORED\r\n"
        assert w.call(b"get b\r\n") == b"VALUE b 0 3\r\nnew\r\nEND\r\n"


def test_after_salvaging_damage_behind_a_normal_start_works(
    damaged_behind: tuple[ServerProcess, Path, int],
) -> None:
    srv, _, _ = damaged_behind
    srv.start("--salvage")
    assert len(drain(srv.port, "b")) == len(BEHIND_ITEMS) - 1
    assert srv.stop() == 0
    # Salvage has dealt with the damage (and nothing is left that needs those records):
    # a supervisor restarting the server without --salvage must not be refused.
    srv.start()
    assert drain(srv.port, "b") == []


# -- disk full --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at teardown."""
    with small_tmpfs(tmp_path / "small-disk") as mount_point:
        yield mount_point


def full_disk_server(tmp_path: Path, small_disk: Path, fsync: str) -> ServerProcess:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(f'[server]\nfsync = "{fsync}"\ndisk_reserve_bytes = 262144\n')
    srv = ServerProcess(small_disk / "data", "--config", str(conf))
    srv.log_path = tmp_path / "server.log"  # the log must not live on the full disk
    return srv.start()


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_disk_full_refuses_writes_serves_reads_then_recovers(
    tmp_path: Path, small_disk: Path, fsync: str
) -> None:
    srv = full_disk_server(tmp_path, small_disk, fsync)
    try:
        stored: list[bytes] = []
        refusals: list[bytes] = []
        with Wire(srv.port) as w:
            fill_disk(w, stored, refusals)
            assert len(refusals) == 6
            assert all(r.startswith(b"SERVER_ERROR ") for r in refusals), refusals
            assert len(stored) >= 100
            assert os.statvfs(small_disk).f_bavail == 0, "the disk is not full"
            # Refused, not dropped: the connection is still in step, and so is the server.
            assert w.call(b"version\r\n").startswith(b"VERSION ")
            # Reads go on: reliable reads for the first half, plain gets for the rest.
            got: list[bytes] = []
            half = len(stored) // 2
            for _ in range(half):
                reply = w.call(b"get full/close/open\r\n")
                assert reply.startswith(b"VALUE "), reply
                got.append(reply.split(b"\r\n")[1])
            assert w.call(b"get full/close\r\n") == b"END\r\n"
        got += drain(srv.port, "full")
        assert got == stored, "every STORED item comes back, in order"
        assert "disk full" in srv.log()  # the reads above needed the reserve

        # Once drained, the journal shrinks and the reserve is re-armed: sets work again.
        def accepts() -> bool:
            with Wire(srv.port) as w:
                return w.call(b"set full 0 0 5\r\nagain\r\n") == b"STORED\r\n"

        wait_until(accepts, 60, interval_s=0.25, what="writes accepted after draining")
        assert server_stats(srv.port)["disk_full"] == "0"
        assert srv.stop() == 0
        srv.start()
        assert drain(srv.port, "full") == [b"again"]
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
    assert "Traceback" not in srv.log()


def test_restart_on_a_full_disk_serves_every_stored_item(tmp_path: Path, small_disk: Path) -> None:
    # A crash while the disk is full: the restarted server must come up and drain.
    srv = full_disk_server(tmp_path, small_disk, "always")
    try:
        stored: list[bytes] = []
        refusals: list[bytes] = []
        with Wire(srv.port) as w:
            fill_disk(w, stored, refusals)
        assert os.statvfs(small_disk).f_bavail == 0 and len(stored) >= 100
        srv.kill()
        srv.start()
        got: list[bytes] = []
        with Wire(srv.port) as w:
            for _ in range(len(stored)):
                reply = w.call(b"get full/close/open\r\n")
                assert reply.startswith(b"VALUE "), reply
                got.append(reply.split(b"\r\n")[1])
            assert w.call(b"get full/close/open\r\n") == b"END\r\n"
        assert got == stored
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            assert srv.stop() == 0
    assert "Traceback" not in srv.log()
