"""The server list and the producers' rotation, without I/O: parsing, resolving, order."""

from __future__ import annotations

import random
import re

import pytest

from kestrelq.errors import ConfigError
from kestrelq.servers import (
    Address,
    Entry,
    Rotation,
    ServerList,
    parse_servers,
    servers_from_env,
    servers_from_options,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("q1:22133,q2:22134", [Entry("q1", 22133), Entry("q2", 22134)], id="two"),
        pytest.param("q1", [Entry("q1", 22133)], id="default-port"),
        pytest.param(" q1:1 , ,q1:1,q2 ", [Entry("q1", 1), Entry("q2", 22133)], id="dups-blanks"),
        pytest.param("[::1]:5,[fe80::1]", [Entry("::1", 5), Entry("fe80::1", 22133)], id="v6"),
        pytest.param("tasks.queue", [Entry("tasks.queue", 22133)], id="dns-name"),
    ],
)
def test_parse_servers(text: str, expected: list[Entry]) -> None:
    assert parse_servers(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("", "names no server", id="empty"),
        pytest.param(" , ", "names no server", id="commas"),
        pytest.param("q1:x", "port must be a number", id="port-word"),
        pytest.param("q1:0", "port must be a number", id="port-zero"),
        pytest.param("q1:70000", "port must be a number", id="port-big"),
        pytest.param(":22133", "no host", id="no-host"),
        pytest.param("::1:5", "IPv6", id="v6-unbracketed"),
        pytest.param("[::1", "IPv6", id="v6-unclosed"),
    ],
)
def test_bad_server_lists_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_servers(text)


def test_environment_a_list_or_host_and_port_as_a_list_of_one() -> None:
    assert servers_from_env({}) == [Entry("127.0.0.1", 22133)]
    assert servers_from_env({"KESTRELQ_HOST": "q", "KESTRELQ_PORT": "7"}) == [Entry("q", 7)]
    assert servers_from_env({"KESTRELQ_SERVERS": "a:1,b:2"}) == [Entry("a", 1), Entry("b", 2)]
    with pytest.raises(ConfigError, match="not both"):
        servers_from_env({"KESTRELQ_SERVERS": "a:1", "KESTRELQ_HOST": "q"})
    with pytest.raises(ConfigError, match="KESTRELQ_PORT must be a number"):
        servers_from_env({"KESTRELQ_PORT": "many"})


IMAGE = {"KESTRELQ_HOST": "queue", "KESTRELQ_PORT": "7"}  # what the images set
LISTED = {"KESTRELQ_SERVERS": "a:1,b:2"}


@pytest.mark.parametrize(
    ("servers", "host", "port", "env", "expected"),
    [
        pytest.param(None, None, None, {}, [Entry("127.0.0.1", 22133)], id="default"),
        pytest.param(None, None, None, IMAGE, [Entry("queue", 7)], id="variables-host-port"),
        pytest.param(None, None, None, LISTED, [Entry("a", 1), Entry("b", 2)], id="variables-list"),
        pytest.param("c:3,d", None, None, IMAGE, [Entry("c", 3), Entry("d", 22133)],
                     id="servers-option-wins-over-host-variables"),
        pytest.param(None, "h", 9, LISTED, [Entry("h", 9)], id="host-options-win-over-list"),
        pytest.param(None, "h", None, IMAGE, [Entry("h", 7)], id="host-option-port-variable"),
        pytest.param(None, None, 9, IMAGE, [Entry("queue", 9)], id="port-option-host-variable"),
        pytest.param(None, "h", None, {}, [Entry("h", 22133)], id="host-option-default-port"),
        pytest.param(None, None, 9, {}, [Entry("127.0.0.1", 9)], id="port-option-default-host"),
        pytest.param(None, "h", None, {"KESTRELQ_PORT": ""}, [Entry("h", 22133)],
                     id="empty-variable-is-unset"),
    ],
)  # fmt: skip
def test_options_then_variables_then_the_default(
    servers: str | None,
    host: str | None,
    port: int | None,
    env: dict[str, str],
    expected: list[Entry],
) -> None:
    assert servers_from_options(servers, host, port, env) == expected


@pytest.mark.parametrize(
    ("servers", "host", "port", "env", "says"),
    [
        pytest.param("a:1", "h", None, {}, "--servers or --host/--port, not both", id="list-host"),
        pytest.param("a:1", None, 9, {}, "--servers or --host/--port, not both", id="list-port"),
        pytest.param(None, None, None, {**LISTED, "KESTRELQ_PORT": "7"},
                     "set KESTRELQ_SERVERS or KESTRELQ_HOST/KESTRELQ_PORT, not both",
                     id="list-and-port-variables"),
        pytest.param(None, None, 0, {}, "the port must be from 1 to 65535, not 0", id="port-0"),
        pytest.param(None, None, 70000, {}, "from 1 to 65535, not 70000", id="port-too-big"),
        pytest.param(None, "h", None, {"KESTRELQ_PORT": "x"}, "KESTRELQ_PORT must be a number",
                     id="host-option-bad-port-variable"),
        pytest.param("a:x", None, None, {}, "port must be a number", id="bad-list-option"),
        pytest.param(" , ", None, None, {}, "names no server", id="empty-list-option"),
    ],
)  # fmt: skip
def test_ambiguous_or_bad_server_options_are_refused(
    servers: str | None, host: str | None, port: int | None, env: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        servers_from_options(servers, host, port, env)


def test_a_port_option_ignores_a_bad_port_variable() -> None:
    # The variable that is not used cannot stop the command: --port replaces it.
    assert servers_from_options(None, None, 9, {"KESTRELQ_PORT": "x"}) == [Entry("127.0.0.1", 9)]


def test_a_name_is_resolved_again_after_refresh_and_keeps_its_addresses_on_failure() -> None:
    clock = Clock()
    answers: dict[str, list[Address] | OSError] = {
        "tasks.queue": [("10.0.0.2", 22133), ("10.0.0.1", 22133)],
        "single": [("10.0.0.9", 22133)],
    }
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[Address]:
        calls.append(host)
        answer = answers[host]
        if isinstance(answer, OSError):
            raise answer
        return answer

    servers = ServerList(
        parse_servers("tasks.queue,single,127.0.0.1:5"), resolver=resolver, clock=clock
    )
    # Several addresses: sorted, so DNS round robin does not move the order; one address:
    # kept as the name (TLS checks the certificate against it); a literal is not resolved.
    expected = [("10.0.0.1", 22133), ("10.0.0.2", 22133), ("single", 22133), ("127.0.0.1", 5)]
    assert servers.addresses() == expected
    assert calls == ["tasks.queue", "single"]
    clock.now += 29.9
    assert servers.addresses() == expected
    assert len(calls) == 2, "resolved again before refresh_s"
    answers["tasks.queue"] = [("10.0.0.1", 22133), ("10.0.0.3", 22133), ("10.0.0.2", 22133)]
    answers["single"] = OSError("Temporary failure in name resolution")
    clock.now += 0.1
    assert servers.addresses() == [
        ("10.0.0.1", 22133), ("10.0.0.2", 22133), ("10.0.0.3", 22133),
        ("single", 22133), ("127.0.0.1", 5),
    ]  # fmt: skip


def test_a_name_that_never_resolved_counts_for_nothing_until_it_does() -> None:
    clock = Clock()
    answers: list[Address] = []

    def resolver(host: str, port: int) -> list[Address]:
        if not answers:
            raise OSError("Name or service not known")
        return answers

    servers = ServerList([Entry("later", 1)], resolver=resolver, clock=clock)
    assert servers.addresses() == []
    answers.extend([("10.0.0.1", 1), ("10.0.0.2", 1)])
    clock.now += 30
    assert servers.addresses() == [("10.0.0.1", 1), ("10.0.0.2", 1)]


SERVERS: list[Address] = [("a", 1), ("b", 1), ("c", 1)]


def test_round_robin_is_exactly_even_from_a_random_start() -> None:
    starts = set()
    for seed in range(20):
        rotation = Rotation(rng=random.Random(seed), clock=Clock())
        firsts = [rotation.order(SERVERS)[0] for _ in range(3 * 100)]
        assert {s: firsts.count(s) for s in SERVERS} == {s: 100 for s in SERVERS}
        # Each order tries every server once, the chosen one first.
        assert sorted(rotation.order(SERVERS)) == sorted(SERVERS)
        starts.add(firsts[0])
    assert starts == set(SERVERS), "the start is not random: every producer hits one server"


def test_a_failed_server_is_left_out_for_a_growing_backoff_then_tried_again() -> None:
    clock = Clock()
    rotation = Rotation(backoff_initial_s=1.0, backoff_max_s=4.0, clock=clock)
    assert rotation.failed(("b", 1)) == 1.0
    for _ in range(10):
        assert rotation.order(SERVERS)[0] != ("b", 1)
        assert rotation.order(SERVERS)[-1] == ("b", 1)  # last resort only
    firsts = [rotation.order(SERVERS)[0] for _ in range(10)]
    assert firsts.count(("a", 1)) == firsts.count(("c", 1)) == 5, "even over those left"
    clock.now += 1.0
    assert ("b", 1) in [rotation.order(SERVERS)[0] for _ in range(3)]
    assert [rotation.failed(("b", 1)) for _ in range(3)] == [2.0, 4.0, 4.0]
    assert rotation.succeeded(("b", 1)) is True
    assert rotation.succeeded(("b", 1)) is False
    assert rotation.available(("b", 1))


def test_when_every_server_failed_they_are_all_still_tried_soonest_first() -> None:
    clock = Clock()
    rotation = Rotation(backoff_initial_s=1.0, clock=clock)
    rotation.failed(("c", 1))
    clock.now += 0.5
    rotation.failed(("a", 1))
    rotation.failed(("a", 1))
    rotation.failed(("b", 1))
    assert rotation.order(SERVERS) == [("c", 1), ("b", 1), ("a", 1)]
