"""/metrics against a real server: prometheus_client's own parser reads what `stats` says.

The server's figures are read twice, by `stats` on the queue port and by a scrape of the
metrics port; after a known sequence of sets, gets, a dead letter and an expiry both must give
the same numbers, and the numbers the sequence implies.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    ServerProcess,
    Wire,
    child_env,
    free_port,
    put,
    serving,
    value,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from kestrelq.server import config as config_mod

CONFIG = """
[queues.work]
max_deliveries = 1

[queues.brief]
max_age_ms = 1
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
GROWING = ("kestrelq_uptime_seconds", "kestrelq_queue_oldest_item_age_seconds")


def steady(samples: Samples) -> Samples:
    """The samples that stay put while nothing happens (not the ages, not the uptime)."""
    return {key: v for key, v in samples.items() if key[0] not in GROWING}


def scrape(port: int, token: str = "") -> Samples:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def status(port: int, path: str = "/metrics", token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            code: int = reply.status
            return code
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def wire_stats(w: Wire) -> dict[str, str]:
    reply = w.call(b"stats\r\n").decode()
    return {
        line.split(" ")[1]: line.split(" ")[2]
        for line in reply.split("\r\n")
        if line.startswith("STAT ")
    }


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def watched(tmp_path: Path, metrics_port: int) -> Iterator[ServerProcess]:
    with serving(tmp_path / "data", "--metrics-port", str(metrics_port), config=CONFIG) as srv:
        wait_until(lambda: "metrics on http://127.0.0.1:" in srv.log(), 60, what="metrics port")
        yield srv


# Per queue: the metric and the `stats` figure that must say the same.
QUEUE_PAIRS = {
    "kestrelq_queue_items": "items",
    "kestrelq_queue_bytes": "bytes",
    "kestrelq_queue_open_reads": "open_transactions",
    "kestrelq_queue_waiters": "waiters",
    "kestrelq_queue_items_put_total": "total_items",
    "kestrelq_queue_items_got_total": "got_items",
    "kestrelq_queue_items_expired_total": "expired_items",
    "kestrelq_queue_items_dead_lettered_total": "dead_lettered",
    "kestrelq_queue_items_discarded_total": "discarded",
}
SERVER_PAIRS = {
    "kestrelq_connections": "curr_connections",
    "kestrelq_journal_bytes": "journal_bytes",
    "kestrelq_fsyncs_total": "fsyncs",
}


def test_metrics_say_what_stats_says_after_a_known_sequence(
    watched: ServerProcess, metrics_port: int
) -> None:
    with Wire(watched.port) as w:
        for data in (b"a", b"bb", b"ccc", b"dddd"):
            put(w, "work", data)
        assert w.call(b"get work\r\n") == value("work", b"a")
        # b is opened and aborted: at its limit, the next open dead-letters it and opens ccc.
        assert w.call(b"get work/open\r\n") == value("work/open", b"bb")
        assert w.call(b"get work/abort\r\n") == b"END\r\n"
        assert w.call(b"get work/open\r\n") == value("work/open", b"ccc")
        assert w.call(b"get work/close\r\n") == b"END\r\n"
        assert w.call(b"get work/open\r\n") == value("work/open", b"dddd")  # left open
        put(w, "brief", b"gone soon")  # max_age_ms = 1: the housekeeping expires it
        wait_until(lambda: wire_stats(w)["queue_brief_expired_items"] == "1", 60, what="expiry")

        def agreeing() -> tuple[Samples, dict[str, str], Samples] | None:
            # The housekeeping runs meanwhile (an fsync, a new segment): a stats reply
            # between two scrapes that agree is a view of one state. Ages and uptime grow.
            before = scrape(metrics_port)
            stats = wire_stats(w)
            after = scrape(metrics_port)
            if steady(before) != steady(after):
                return None
            return before, stats, after

        agreed = wait_until(agreeing, 60, what="two scrapes that agree")
        assert agreed is not None
        samples, stats, later = agreed

    def queue(metric: str, name: str, scraped: Samples = samples) -> float:
        return scraped[(metric, (("queue", name),))]

    age = "kestrelq_queue_oldest_item_age_seconds"
    for name in ("work", "work_dead", "brief"):
        for metric, stat in QUEUE_PAIRS.items():
            assert queue(metric, name) == int(stats[f"queue_{name}_{stat}"]), (name, metric)
        oldest_s = int(stats[f"queue_{name}_oldest_age_ms"]) / 1000
        assert queue(age, name) <= oldest_s <= queue(age, name, later), name
    # Only the dead letter waits: since its set, which was before the expiry (>= 1 ms).
    assert queue(age, "work_dead") > 0 and queue(age, "work") == queue(age, "brief") == 0
    for metric, stat in SERVER_PAIRS.items():
        assert samples[(metric, ())] == int(stats[stat]), metric
    # And what the sequence implies.
    assert {m: queue(m, "work") for m in QUEUE_PAIRS} == {
        "kestrelq_queue_items": 0, "kestrelq_queue_bytes": 0, "kestrelq_queue_open_reads": 1,
        "kestrelq_queue_waiters": 0, "kestrelq_queue_items_put_total": 4,
        "kestrelq_queue_items_got_total": 4, "kestrelq_queue_items_expired_total": 0,
        "kestrelq_queue_items_dead_lettered_total": 1, "kestrelq_queue_items_discarded_total": 0,
    }  # fmt: skip
    assert queue("kestrelq_queue_items", "work_dead") == 1
    assert queue("kestrelq_queue_items_put_total", "work_dead") == 1
    assert queue("kestrelq_queue_items_expired_total", "brief") == 1
    assert queue("kestrelq_queue_items", "brief") == 0
    assert samples[("kestrelq_connections", ())] == 1  # the Wire; a scrape is not a client
    # The fsync histogram: cumulative buckets, +Inf equal to the count, a positive sum.
    fsync = "kestrelq_fsync_duration_seconds"
    buckets = sorted(
        (float(labels[0][1]), v) for (n, labels), v in samples.items() if n == f"{fsync}_bucket"
    )
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    assert buckets[-1][1] == samples[(f"{fsync}_count", ())] > 0
    assert samples[(f"{fsync}_sum", ())] > 0
    assert samples[("kestrelq_uptime_seconds", ())] > 0


def test_metrics_port_refuses_what_is_not_a_scrape(
    watched: ServerProcess, metrics_port: int
) -> None:
    assert status(metrics_port, "/") == 404
    assert status(metrics_port, "/metrics?x=1") == 200
    request = urllib.request.Request(f"http://127.0.0.1:{metrics_port}/metrics", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, data=b"", timeout=30)
    refused.value.close()
    assert refused.value.code == 405
    # A scraper that sends half a request and stalls holds up no one.
    with Wire(watched.port) as w, Wire(metrics_port) as stalled:
        stalled.send(b"GET /metrics HTTP/1.1\r\n")
        put(w, "q", b"served")
        assert scrape(metrics_port)[("kestrelq_queue_items", (("queue", "q"),))] == 1
        w.close()
        assert watched.stop() == 0  # nor a stop (the fixture then checks the log)


def test_connections_that_send_nothing_do_not_shut_out_a_scrape(
    watched: ServerProcess, metrics_port: int
) -> None:
    idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=30) for _ in range(8)]
    try:
        idle[-1].sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request is no request either
        assert ("kestrelq_connections", ()) in scrape(metrics_port)
        # The oldest was pushed out to make room: the server closed it.
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


def test_a_token_file_makes_the_port_ask_for_it(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("s3cret-token\n")
    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-token-file", str(token_file))
    with serving(tmp_path / "data", *args) as srv:
        wait_until(lambda: "metrics on" in srv.log(), 60, what="metrics port")
        assert status(port) == 401
        assert status(port, token="wrong") == 401
        assert status(port, token="s3cret-token") == 200
        assert ("kestrelq_connections", ()) in scrape(port, token="s3cret-token")


def test_an_empty_token_file_stops_the_start(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("\n")
    args = ("--metrics-port", str(free_port()), "--metrics-token-file", str(token_file))
    srv = ServerProcess(tmp_path / "data", *args).start(wait=False)
    assert srv.proc is not None
    assert srv.proc.wait(60) == 2
    assert "is empty" in srv.log()


def test_metrics_settings_come_from_toml_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text('[server]\nmetrics_port = 9133\nmetrics_host = "0.0.0.0"\n')
    from_file = config_mod.load({"config_file": str(conf)}, environ={})
    assert (from_file.metrics_port, from_file.metrics_host) == (9133, "0.0.0.0")
    env = {"KESTRELQ_METRICS_PORT": "9200", "KESTRELQ_METRICS_TOKEN_FILE": "/run/t"}
    from_env = config_mod.load({"config_file": str(conf)}, environ=env)
    assert (from_env.metrics_port, from_env.metrics_token_file) == (9200, "/run/t")
    assert config_mod.load({}, environ={}).metrics_port == 0  # off unless asked for


def test_a_server_without_metrics_does_not_load_prometheus_client() -> None:
    # Imported at every start, it cost 90-150 ms of each restart and 1 MB of every server.
    code = (
        "import sys; import kestrelq.cli, kestrelq.server.server; "
        "sys.exit('prometheus_client' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), timeout=60)
    assert result.returncode == 0
