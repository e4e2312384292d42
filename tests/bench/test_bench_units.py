"""The harness's own arithmetic and checks: what it reports must be right before it is fast."""

from __future__ import annotations

import socket
import threading
import time
from array import array
from pathlib import Path

import pytest

from bench import procstat, report
from bench.beanstalk import Beanstalk
from bench.drivers import make_payload, parse_id
from bench.miniclient import MiniClient, MiniClientError
from bench.runner import RunConfig, RunResult, _summarise, percentile, share
from bench.servers import ServerSpec, start


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([], 50, 0.0, id="empty"),
        pytest.param([5.0], 99, 5.0, id="one"),
        pytest.param([float(v) for v in range(1, 101)], 50, 50.0, id="p50-of-100"),
        pytest.param([float(v) for v in range(1, 101)], 99, 99.0, id="p99-of-100"),
        pytest.param([float(v) for v in range(100, 0, -1)], 100, 100.0, id="unsorted-max"),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(("messages", "clients"), [(10, 1), (10, 3), (7, 4), (3, 5)])
def test_shares_cover_every_id_once(messages: int, clients: int) -> None:
    ids = [i for c in range(clients) for i in share(messages, clients, c)]
    assert sorted(ids) == list(range(messages))


@pytest.mark.parametrize("size", [13, 64, 1024])
def test_payload_carries_its_id_and_size(size: int) -> None:
    data = make_payload(123456, size)
    assert len(data) == size
    assert parse_id(data) == 123456
    assert make_payload(123457, size) != data


def _row(ids: list[int], corrupt: int = 0) -> tuple[object, ...]:
    got = array("q", ids)
    lat = array("q", [1000] * len(ids))
    return (
        (0, 1_000_000_000, 2_000_000_000, 3_000_000_000),
        lat.tobytes(),
        lat.tobytes(),
        got.tobytes(),
        corrupt,
    )


def test_summary_flags_lost_duplicated_and_foreign_ids() -> None:
    cfg = RunConfig("kestrelq", "plain", 2, 5, 64)
    good = _summarise(cfg, "x", [_row([0, 2, 4]), _row([1, 3])], (0, 10, 30), 1024)
    assert good.complete
    assert good.enqueue.rate == pytest.approx(5.0)
    assert good.enqueue.cpu_us_per_msg == pytest.approx(10 / 1000 / 5)
    assert good.dequeue.percentile(99) == pytest.approx(1.0)

    bad = _summarise(cfg, "x", [_row([0, 2, 2]), _row([1, 99])], (0, 0, 0), 0)
    assert not bad.complete
    assert (bad.missing, bad.duplicates, bad.corrupt) == (2, 1, 1)


def _fake_result(
    label: str, kind: str, mode: str, clients: int, enq: float, deq: float
) -> RunResult:
    cfg = RunConfig(kind, mode, clients, 100, 64)
    ids = list(range(100))
    rows = [_row(ids)]
    r = _summarise(cfg, label, rows, (0, 0, 0), 2048)
    r.enqueue.seconds = 100 / enq
    r.dequeue.seconds = 100 / deq
    return r


def test_aggregate_takes_medians_and_ratios_to_the_reference() -> None:
    ref = "kestrelq fsync=never"
    results = [
        _fake_result(ref, "kestrelq", "plain", 1, 1000, 2000),
        _fake_result(ref, "kestrelq", "plain", 1, 3000, 2000),
        _fake_result(ref, "kestrelq", "plain", 1, 2000, 2000),
        _fake_result(ref, "kestrelq", "reliable", 1, 2000, 1000),
        _fake_result("memcached", "memcached", "kv", 1, 4000, 4000),
        _fake_result("beanstalkd", "beanstalkd", "reliable", 1, 500, 500),
    ]
    rows = {(r.label, r.mode): r for r in report.aggregate(results, ref)}
    kq = rows[(ref, "plain")]
    assert kq.runs == 3 and kq.verified == 3
    assert kq.enq_rate == pytest.approx(2000)
    assert rows[("memcached", "kv")].enq_ratio == pytest.approx(2.0)
    assert rows[("beanstalkd", "reliable")].deq_ratio == pytest.approx(0.5)
    checks = {c.name: c for c in report.target_checks(list(rows.values()), ref)}
    assert checks[f"C=1: {ref} set / memcached set"].value == pytest.approx(0.5)
    assert not checks[f"C=1: {ref} set / memcached set"].passed
    assert checks[f"C=1: {ref} get q/close/open / beanstalkd reserve+delete"].passed
    table = report.table(list(rows.values()), ref)
    assert table.count("\n| ") == 4 and "2.00x" in table
    assert kq.enq_spread == pytest.approx(0.5) and "2,000 ±50%" in table


def test_check_sense() -> None:
    assert report.Check("a", 1.0, 0.9).passed
    assert not report.Check("a", 0.8, 0.9).passed
    assert report.Check("b", 40.0, 50.0, "le").passed
    assert not report.Check("b", 60.0, 50.0, "le").passed


def test_cpu_reading_grows_with_work_and_memory_is_read() -> None:
    import os

    pid = os.getpid()
    before = procstat.cpu_ns(pid)
    # /proc accounts CPU in clock ticks, by sampling: on a loaded machine 30 ms of CPU by the
    # process's own clock can show as less. So burn until the reading has grown by 20 ms, and
    # fail only if that takes far more CPU than it should (the reading does not follow work).
    start = time.process_time()
    while procstat.cpu_ns(pid) - before < 20_000_000:
        assert time.process_time() - start < 5.0, "5 s of CPU burnt, the reading did not grow"
        spin_until = time.process_time() + 0.005
        while time.process_time() < spin_until:
            pass
    assert procstat.peak_rss_kb(pid) >= procstat.rss_kb(pid) > 0


def test_dir_size_counts_nested_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 1000)
    (tmp_path / "g").write_bytes(b"y" * 24)
    assert procstat.dir_size(tmp_path) == 1024


def test_beanstalk_client_against_real_beanstalkd(tmp_path: Path) -> None:
    server = start(ServerSpec("beanstalkd"), tmp_path)
    try:
        client = Beanstalk("127.0.0.1", server.port)
        ids = [client.put(make_payload(i, 32)) for i in range(3)]
        assert len(set(ids)) == 3
        assert client.stats_job_count() == 3
        got = []
        while (job := client.reserve(0)) is not None:
            client.delete(job[0])
            got.append(parse_id(job[1]))
        assert got == [0, 1, 2]
        assert client.stats_job_count() == 0
        client.close()
    finally:
        server.stop()


def test_loadgen_tally_counts_missing_corrupt_and_duplicates() -> None:
    from bench.loadgen import Tally

    tally = Tally(32)
    for i in (0, 1, 1, 3):
        tally.add(make_payload(i, 32))
    tally.add(b"not a message at all, no id here")
    tally.add(make_payload(2, 32)[:-1] + b"!")  # right id, wrong bytes
    tally.add(make_payload(7, 32))  # an id this run never sent
    assert tally.returned == 7
    assert tally.verify(4) == (1, 3, 1)
    clean = Tally(16)
    for i in range(5):
        clean.add(make_payload(i, 16))
    assert clean.verify(5) == (0, 0, 0)


def test_profiled_kestrelq_writes_a_profile_that_names_the_server(tmp_path: Path) -> None:
    import pstats

    from bench.drivers import MemcacheQueueDriver

    prof_dir = tmp_path / "prof"
    prof_dir.mkdir()
    server = start(ServerSpec("kestrelq", fsync="never", profile_dir=prof_dir), tmp_path)
    try:
        driver = MemcacheQueueDriver(server.port, reliable=True)
        driver.put(1, make_payload(1, 32))
        assert driver.take(0) == make_payload(1, 32)
        driver.close()
    finally:
        assert server.stop() == 0, server.log_tail()
    (prof,) = prof_dir.glob("kestrelq-fsyncnever-*.prof")
    stats = pstats.Stats(str(prof))
    files = {key[0] for key in stats.stats}  # type: ignore[attr-defined]
    assert any("kestrelq" in f for f in files)


def test_compare_shows_new_over_old_per_row() -> None:
    from bench.compare import compare

    row = {"label": "kestrelq fsync=never", "mode": "plain", "clients": 1}
    old = {
        "revision": "`aaa`",
        "matrix": [row | {"enq_rate": 1000.0, "deq_rate": 2000.0, "enq_cpu": 10.0, "deq_cpu": 8.0}],
    }
    new = {
        "revision": "`bbb`",
        "matrix": [row | {"enq_rate": 1500.0, "deq_rate": 1000.0, "enq_cpu": 5.0, "deq_cpu": 8.0}],
        "loadgen": [],
    }
    text = compare(old, new)
    assert "old: `aaa`  new: `bbb`" in text
    line = next(x for x in text.splitlines() if x.startswith("| kestrelq"))
    assert line.split(" | ")[3:] == [
        "1,000 → 1,500",
        "1.50",
        "2,000 → 1,000",
        "0.50",
        "0.50",
        "1.00 |",
    ]
    assert "Pipelined" not in text and "Minimal client" not in text

    # The minimal client's table compares the same way, in its own section.
    mini = {"label": "darner", "mode": "reliable", "clients": 4}
    old["minimal"] = [mini | {"enq_rate": 100.0, "deq_rate": 100.0, "enq_cpu": 1.0, "deq_cpu": 1.0}]
    new["minimal"] = [mini | {"enq_rate": 300.0, "deq_rate": 100.0, "enq_cpu": 1.0, "deq_cpu": 2.0}]
    text = compare(old, new)
    assert "## Minimal client" in text
    line = next(x for x in text.splitlines() if x.startswith("| darner"))
    assert line.split(" | ")[3:] == ["100 → 300", "3.00", "100 → 100", "1.00", "1.00", "2.00 |"]


def _scripted_server(sock: socket.socket, script: list[tuple[bytes, bytes]], chunk: int) -> None:
    """Read each expected request whole, then answer it `chunk` bytes per send."""
    for request, reply in script:
        got = b""
        while len(got) < len(request):
            data = sock.recv(len(request) - len(got))
            if not data:
                return
            got += data
        assert got == request
        for i in range(0, len(reply), chunk):
            sock.sendall(reply[i : i + chunk])
    sock.close()


def _mini_pair(
    script: list[tuple[bytes, bytes]], chunk: int = 1 << 16
) -> tuple[MiniClient, threading.Thread]:
    ours, theirs = socket.socketpair()
    ours.settimeout(60)
    thread = threading.Thread(target=_scripted_server, args=(theirs, script, chunk), daemon=True)
    thread.start()
    return MiniClient(ours), thread


@pytest.mark.parametrize("chunk", [1, 3, 1 << 16], ids=["byte-at-a-time", "3-bytes", "whole"])
def test_miniclient_reads_kestrelq_and_darner_replies_however_they_arrive(chunk: int) -> None:
    value = make_payload(7, 40)
    script = [
        (b"set q 0 0 40\r\n" + value + b"\r\n", b"STORED\r\n"),
        # kestrelq echoes the key it was asked for, darner the bare queue name: both accepted.
        (b"get q/close/open\r\n", b"VALUE q/close/open 0 40\r\n" + value + b"\r\nEND\r\n"),
        (b"get q/close/open\r\n", b"VALUE q 0 40\r\n" + value + b"\r\nEND\r\n"),
        (b"get q\r\n", b"END\r\n"),
        # A value holding CRLF and "END" is read by its length, not by its content.
        (b"get k\r\n", b"VALUE k 5 7\r\nA\r\nEND\r\r\nEND\r\n"),
    ]
    client, thread = _mini_pair(script, chunk)
    client.set(b"q", value)
    assert client.get(b"q/close/open") == value
    assert client.get(b"q/close/open") == value
    assert client.get(b"q") is None
    assert client.get(b"k") == b"A\r\nEND\r"
    client.close()
    thread.join(60)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("reply", "call"),
    [
        pytest.param(b"NOT_STORED\r\n", "set", id="set-not-stored"),
        pytest.param(b"SERVER_ERROR out of memory\r\n", "set", id="set-server-error"),
        pytest.param(b"ERROR\r\n", "get", id="get-error"),
        pytest.param(b"VALUE q 0 3\r\nabcd\r\nEND\r\n", "get", id="value-longer-than-announced"),
        pytest.param(b"VALUE q 0\r\n", "get", id="value-line-short"),
        pytest.param(b"VAL", "get", id="closed-mid-line"),
        pytest.param(b"VALUE q 0 3\r\nab", "get", id="closed-mid-value"),
    ],
)
def test_miniclient_raises_on_anything_but_the_expected_reply(reply: bytes, call: str) -> None:
    request = b"set q 0 0 1\r\nx\r\n" if call == "set" else b"get q\r\n"
    client, thread = _mini_pair([(request, reply)])
    with pytest.raises(MiniClientError):
        if call == "set":
            client.set(b"q", b"x")
        else:
            client.get(b"q")
    client.close()
    thread.join(60)


def test_peer_ratios_hold_kestrelq_against_darner_darner_sync_and_the_floor() -> None:
    never, always = "kestrelq fsync=never", "kestrelq fsync=always"
    results = [
        _fake_result(never, "kestrelq", "reliable", 1, 5000, 4000),
        _fake_result(never, "kestrelq", "plain", 1, 5000, 6000),
        _fake_result(always, "kestrelq", "reliable", 1, 1000, 3000),
        _fake_result(always, "kestrelq", "reliable", 4, 3000, 9000),
        _fake_result("darner", "darner", "reliable", 1, 10000, 8000),
        _fake_result("darner", "darner", "plain", 1, 10000, 12000),
        _fake_result("darner-sync", "darner-sync", "reliable", 1, 500, 6000),
        _fake_result("darner-sync", "darner-sync", "reliable", 4, 2500, 9000),
        _fake_result("python floor", "pyfloor", "plain", 1, 20000, 16000),
        _fake_result("memcached", "memcached", "kv", 1, 40000, 24000),
    ]
    rows = report.aggregate(results, never)
    report.peer_ratios(rows)
    by = {(r.label, r.mode, r.clients): r for r in rows}
    # fsync=never against darner, get against the same kind of get.
    assert by[(never, "reliable", 1)].enq_vs_darner == pytest.approx(0.5)
    assert by[(never, "reliable", 1)].deq_vs_darner == pytest.approx(0.5)
    assert by[(never, "plain", 1)].deq_vs_darner == pytest.approx(0.5)
    # fsync=always against darner-sync, which fsyncs every set too.
    assert by[(always, "reliable", 1)].enq_vs_darner == pytest.approx(2.0)
    assert by[(always, "reliable", 1)].deq_vs_darner == pytest.approx(0.5)
    # memcached's keyed get against darner's plain get; everything against the floor's.
    assert by[("memcached", "kv", 1)].deq_vs_darner == pytest.approx(2.0)
    assert by[(never, "reliable", 1)].deq_vs_floor == pytest.approx(0.25)
    assert by[("python floor", "plain", 1)].enq_vs_floor == pytest.approx(1.0)
    # No darner and no floor at C=4: no ratio to them, and the table says "-".
    assert by[(always, "reliable", 4)].enq_vs_floor is None
    assert by[("darner-sync", "reliable", 4)].enq_vs_darner is None
    # With darner's reliable get only (--modes reliable), plain gets are held against it.
    only_reliable = report.aggregate(
        [
            _fake_result("darner", "darner", "reliable", 2, 10000, 8000),
            _fake_result("memcached", "memcached", "kv", 2, 20000, 16000),
        ],
        never,
    )
    report.peer_ratios(only_reliable)
    mc = next(r for r in only_reliable if r.label == "memcached")
    assert mc.enq_vs_darner == pytest.approx(2.0)
    assert mc.deq_vs_darner == pytest.approx(2.0)

    table = report.minimal_table(rows)
    lines = [x for x in table.splitlines() if x.startswith("| ") and "---" not in x][1:]
    # The order: the ceiling, the peer, the floor, kestrelq, then what fsyncs every set.
    assert [x.split(" | ")[0][2:] for x in lines] == [
        "memcached", "darner", "darner", "python floor", never, never,
        "darner-sync", "darner-sync", always, always,
    ]  # fmt: skip
    row = next(x for x in lines if x.startswith(f"| {always} | 1 |"))
    assert " | 1,000 | 2.00x | 0.05x | get q/close/open | 3,000 | 0.50x | 0.19x |" in row
    assert "| darner-sync | 1 | set q/sync |" in table

    # The summary: one line per server and get, the client counts side by side ("1 / 4").
    summary = report.summary_table(rows)
    assert (
        f"| {always} | get q/close/open | 1 / 4 | 1.0k / 3.0k | 3.0k / 9.0k | 2.00 / 1.20 "
        "| 0.50 / 1.00 | 0.05 / - | 0.19 / - |" in summary
    )
    assert "| memcached | get key | 1 | 40.0k | 24.0k | 4.00 | 2.00 | 2.00 | 1.50 |" in summary
    assert summary.count("\n| ") == 8

    checks = {c.name: c for c in report.peer_checks(rows)}
    assert set(checks) == {
        f"C=1: {never} set / darner set (minimal client)",
        f"C=1: {never} get q/close/open / darner's (minimal client)",
        f"C=1: {always} set / darner-sync set (minimal client)",
        f"C=1: {always} get q/close/open / darner-sync's (minimal client)",
        f"C=4: {always} set / darner-sync set (minimal client)",
        f"C=4: {always} get q/close/open / darner-sync's (minimal client)",
    }
    assert not checks[f"C=1: {never} set / darner set (minimal client)"].passed
    assert checks[f"C=1: {always} set / darner-sync set (minimal client)"].passed
    # At C=4 group commit must beat one sync per set by half again: 1.2x is not enough.
    c4 = checks[f"C=4: {always} set / darner-sync set (minimal client)"]
    assert c4.value == pytest.approx(1.2) and c4.target == 1.5 and not c4.passed
    assert checks[f"C=4: {always} get q/close/open / darner-sync's (minimal client)"].passed


def test_darner_runs_only_with_its_binary_and_only_with_the_minimal_client(
    tmp_path: Path,
) -> None:
    from bench.cli import parse_args, plan
    from bench.servers import command

    fake = tmp_path / "darner"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    args = parse_args(["--darner", str(fake), "-c", "1,4", "--fsync", "never"])
    runs = plan(args)
    darner = [(cfg, spec) for cfg, spec in runs if spec.kind.startswith("darner")]
    assert {(cfg.client, spec.kind, cfg.mode, cfg.clients) for cfg, spec in darner} == {
        ("minimal", kind, mode, c)
        for kind in ("darner", "darner-sync")
        for mode in ("plain", "reliable")
        for c in (1, 4)
    }
    spec = darner[0][1]
    assert command(spec, 4242, tmp_path / "d") == [
        str(fake),
        "-p",
        "4242",
        "-d",
        str(tmp_path / "d"),
    ]
    # The minimal client runs every memcache server, never beanstalkd's or redis' protocol.
    minimal = {spec.kind for cfg, spec in runs if cfg.client == "minimal"}
    assert minimal == {"kestrelq", "memcached", "pyfloor", "darner", "darner-sync"}
    pymemcache = {spec.kind for cfg, spec in runs if cfg.client == "pymemcache"}
    assert pymemcache == {"kestrelq", "memcached", "beanstalkd", "redis", "pyfloor"}
    # Without --darner there is none, and asking for it by name says what is missing.
    assert not any(s.kind.startswith("darner") for _, s in plan(parse_args([])))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--servers", "kestrelq,darner"], "--darner BIN", id="darner-without-binary"),
        pytest.param(["--darner", "/nonexistent/darner"], "not an executable", id="no-such-file"),
        pytest.param(["--client", "pymemcache,libmc"], "libmc", id="unknown-client"),
        pytest.param(["--builds", "pure,cython"], "cython", id="unknown-build"),
        pytest.param(["--builds", ","], "at least one", id="no-build"),
    ],
)
def test_bad_darner_and_client_flags_are_refused_clearly(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_builds_flag_runs_each_kestrelq_in_both_builds_side_by_side() -> None:
    from bench.cli import kestrelq_template, parse_args, plan, reference_build

    def kestrelqs(argv: list[str]) -> list[tuple[str, str, int]]:
        return [
            (spec.label, cfg.client, cfg.clients)
            for cfg, spec in plan(parse_args(argv))
            if spec.kind == "kestrelq"
        ]

    common = ["--fsync", "never,always", "--modes", "reliable", "-c", "1", "--client", "minimal"]
    both = parse_args(common)
    assert both.builds == ["pure", "compiled"] and not both.builds_asked
    assert kestrelqs(common) == [
        ("kestrelq fsync=never", "minimal", 1),
        ("kestrelq fsync=never compiled", "minimal", 1),
        ("kestrelq fsync=always", "minimal", 1),
        ("kestrelq fsync=always compiled", "minimal", 1),
    ]
    # The targets, ratios and scenarios take the compiled build when it runs, else the pure one.
    assert reference_build(both) == "compiled" == kestrelq_template(both).build
    pure = parse_args([*common, "--builds", "pure"])
    assert pure.builds_asked and reference_build(pure) == "pure"
    assert kestrelqs([*common, "--builds", "pure"]) == [
        ("kestrelq fsync=never", "minimal", 1),
        ("kestrelq fsync=always", "minimal", 1),
    ]
    # Named in any order, the builds run pure first, so that the rows pair up.
    assert parse_args(["--builds", "compiled,pure"]).builds == ["pure", "compiled"]


def test_compiled_rows_sit_beside_their_pure_ones_and_carry_the_targets() -> None:
    never, always = "kestrelq fsync=never", "kestrelq fsync=always"
    results = [
        _fake_result(f"{always} compiled", "kestrelq", "reliable", 1, 1500, 6000),
        _fake_result(always, "kestrelq", "reliable", 1, 1000, 3000),
        _fake_result(f"{never} compiled", "kestrelq", "reliable", 1, 12000, 9000),
        _fake_result(never, "kestrelq", "reliable", 1, 5000, 4000),
        _fake_result("darner", "darner", "reliable", 1, 10000, 8000),
        _fake_result("darner-sync", "darner-sync", "reliable", 1, 500, 6000),
        _fake_result("python floor", "pyfloor", "plain", 1, 20000, 16000),
    ]
    rows = report.aggregate(results, f"{never} compiled")
    report.peer_ratios(rows)
    by = {r.label: r for r in rows}
    # The compiled fsync=always is held against darner-sync, as the pure one is.
    assert by[f"{always} compiled"].enq_vs_darner == pytest.approx(3.0)
    assert by[f"{never} compiled"].deq_vs_darner == pytest.approx(9000 / 8000)
    # The pure rows' ratio to the reference (the compiled build) shows the gain.
    assert by[never].deq_ratio == pytest.approx(4000 / 9000)

    table = report.minimal_table(rows)
    order = [x.split(" | ")[0][2:] for x in table.splitlines() if x.startswith("| ")][1:]
    assert order == [
        "darner", "python floor", never, f"{never} compiled",
        "darner-sync", always, f"{always} compiled",
    ]  # fmt: skip

    checks = {c.name: c for c in report.peer_checks(rows, "compiled")}
    assert set(checks) == {
        f"C=1: {never} compiled set / darner set (minimal client)",
        f"C=1: {never} compiled get q/close/open / darner's (minimal client)",
        f"C=1: {always} compiled set / darner-sync set (minimal client)",
        f"C=1: {always} compiled get q/close/open / darner-sync's (minimal client)",
    }
    assert checks[f"C=1: {never} compiled set / darner set (minimal client)"].passed
    assert not report.peer_checks(rows, "pure")[0].passed


def test_compiled_build_is_current_only_with_this_checkouts_sources(tmp_path: Path) -> None:
    import shutil

    from bench.servers import REPO_ROOT, compiled_is_current

    build = tmp_path / "compiled"
    shutil.copytree(
        REPO_ROOT / "kestrelq", build / "kestrelq", ignore=shutil.ignore_patterns("__pycache__")
    )
    assert not compiled_is_current(build)  # the sources, but nothing compiled
    (build / "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert compiled_is_current(build)
    edited = build / "kestrelq" / "protocol" / "buffer.py"
    edited.write_text(edited.read_text() + "\n# an edit the compiled build has not seen\n")
    assert not compiled_is_current(build)
    assert not compiled_is_current(tmp_path / "nothing-here")


def test_a_row_labelled_compiled_that_runs_pure_fails_loudly(tmp_path: Path) -> None:
    from bench.servers import ServerStartError

    # No compiled package there: the server imports the checkout's pure kestrelq instead.
    spec = ServerSpec("kestrelq", fsync="never", build="compiled", compiled_dir=tmp_path)
    with pytest.raises(ServerStartError) as exc:
        start(spec, tmp_path)
    message = str(exc.value)
    assert "kestrelq fsync=never compiled" in message
    assert "did not run the compiled build" in message
    assert "'hot path: pure Python'" in message
