"""The stack with the `metrics` profile: Prometheus scrapes the queue and the worker pool.

One compose project with the profile (the images built from the same layer cache as every
other test stack; Prometheus' own image adds one apt layer). Messages go in through the app
container, the workers handle them, and Prometheus' HTTP API (/api/v1/query) is asked until
the queue's and the workers' series say exactly that many, polled against a deadline: the
scrape interval is 10 s, and nothing here waits for a fixed time.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from compose_stack import REPO, Stack, assert_no_images_left, make_stack, record_timing
from helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

MESSAGES = 25
RULES = "/etc/kestrelq/prometheus"


@pytest.fixture(scope="module")
def metrics_stack(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(REPO, tmp_path_factory.mktemp("stack"), "metrics", profiles=("metrics",))
    start = time.monotonic()
    with s.running():
        record_timing(
            "metrics", "build + up --wait (healthy, Prometheus too)", time.monotonic() - start
        )
        yield s
    assert_no_images_left(s.project)


def api(stack: Stack, path: str, **params: str) -> Any:
    """One call of Prometheus' HTTP API on its published port; the `data` of a success."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    url = f"http://127.0.0.1:{stack.prometheus_port}/api/v1/{path}{query}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.load(reply)
    assert body["status"] == "success", body
    return body["data"]


def value(stack: Stack, promql: str) -> float | None:
    """The single value an instant query returns, or None while it returns nothing."""
    result = api(stack, "query", query=promql)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_prometheus_sees_the_queue_and_the_workers_handle_what_was_sent(
    metrics_stack: Stack,
) -> None:
    stack = metrics_stack
    producer = stack.start_producer(f"prom{secrets.token_hex(2)}", MESSAGES, 0)
    assert producer.wait(120) == 0
    stored = producer.ids("STORED")
    assert len(stored) == MESSAGES, producer.lines[-5:]
    stack.wait_handled(stored, 120)

    seen: dict[str, str] = {}

    def targets_up() -> bool:
        active = api(stack, "targets", state="active")["activeTargets"]
        seen.clear()
        seen.update({t["scrapeUrl"]: t["health"] + " " + t["lastError"] for t in active})
        return {t["labels"]["job"]: t["health"] for t in active} == {
            "kestrelq-queue": "up",
            "kestrelq-workers": "up",
        }

    try:
        wait_until(targets_up, 120, 1.0, what="both scrape targets up")
    except TimeoutError:
        raise AssertionError(f"scrape targets: {seen}") from None
    # The queue server's series: every message put on `work`, none left there.
    wait_until(
        lambda: value(stack, 'kestrelq_queue_items_put_total{queue="work"}') == MESSAGES,
        120,
        1.0,
        what=f"kestrelq_queue_items_put_total{{queue=work}} = {MESSAGES}",
    )
    # The pool's series, summed over its processes by kestrelq worker-metrics.
    wait_until(
        lambda: value(stack, 'kestrelq_worker_processed_total{queue="work"}') == MESSAGES,
        120,
        1.0,
        what=f"kestrelq_worker_processed_total{{queue=work}} = {MESSAGES}",
    )
    assert value(stack, 'kestrelq_worker_failed_total{queue="work"}') == 0
    count = 'kestrelq_worker_handler_duration_seconds_count{queue="work"}'
    assert value(stack, count) == MESSAGES

    # The alert rules are loaded, every one of them.
    groups = api(stack, "rules")["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert alerts == {
        "KestrelqQueueServerDown",
        "KestrelqWorkersDown",
        "KestrelqQueueNotConsumed",
        "KestrelqQueueDepthGrowing",
        "KestrelqOldestItemTooOld",
        "KestrelqDeadLetters",
        "KestrelqHandlersFailing",
    }


def test_the_alert_rules_pass_promtool(metrics_stack: Stack) -> None:
    """`promtool check rules` and the rules' unit tests (alerts_test.yml: each alert fires
    on series that should set it off, none on a healthy stack's), in the running image."""
    checked = metrics_stack.exec("prometheus", "promtool", "check", "rules", f"{RULES}/alerts.yml")
    assert "SUCCESS: 7 rules found" in checked
    tested = metrics_stack.exec(
        "prometheus", "promtool", "test", "rules", f"{RULES}/alerts_test.yml"
    )
    assert "SUCCESS" in tested and "FAILED" not in tested, tested


def test_prometheus_runs_unprivileged_on_a_read_only_root(metrics_stack: Stack) -> None:
    config = json.loads(metrics_stack.inspect("prometheus", "{{json .HostConfig}}"))
    assert config["CapDrop"] in (["ALL"], ["all"]), config["CapDrop"]
    assert config["ReadonlyRootfs"] is True
    assert metrics_stack.exec("prometheus", "id", "-u").strip() == "10001"
    status = metrics_stack.exec("prometheus", "cat", "/proc/1/status")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert int(fields["CapEff"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    # Published on the host's loopback only.
    ports = metrics_stack.run("port", "prometheus", "9090").stdout.split()
    assert ports == [f"127.0.0.1:{metrics_stack.prometheus_port}"], ports
