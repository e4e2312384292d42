"""The client half against the server half, in memory, and the client half under fuzz.

A `Pair` joins a `ClientConnection` and a `ServerConnection` by plain bytes: every command the
client encodes must come out of the server's parser equal to what went in, and every reply the
server's encoders (`kestrelq.protocol.replies`) build must come out of the client as the event
the command expects. Pipelined, and split at every byte offset, since TCP may cut anywhere.
"""

from __future__ import annotations

import itertools
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrelq import WIRE_VERSION
from kestrelq.errors import RemoteProtocolError
from kestrelq.protocol import commands as c
from kestrelq.protocol import replies
from kestrelq.protocol.client import (
    ClientConnection,
    Count,
    DumpStats,
    ErrorReply,
    Message,
    Reply,
    Stats,
    Status,
    Value,
    Values,
    Version,
)
from kestrelq.protocol.parser import ServerConnection, parse_get_key

TRICKY = b"line one\r\nEND\r\nVALUE x 0 3\r\n\r\n"  # a body that looks like replies

# (command, the server's reply bytes, the event the client must return; None: no reply)
CASES: list[tuple[str, c.Command, bytes, Reply | None]] = [
    ("get-hit", parse_get_key(b"jobs"), b"".join(replies.value(b"jobs", 0, b"one")),
     Values((Value(b"jobs", 0, b"one"),))),
    ("get-options-echoed", parse_get_key(b"jobs/close/open/t=500"),
     b"".join(replies.value(b"jobs/close/open/t=500", 7, TRICKY)),
     Values((Value(b"jobs/close/open/t=500", 7, TRICKY),))),
    ("get-empty-data", parse_get_key(b"jobs/peek"), b"".join(replies.value(b"jobs/peek", 0, b"")),
     Values((Value(b"jobs/peek", 0, b""),))),
    ("get-miss", parse_get_key(b"jobs/t=10"), replies.END, Values(())),
    ("get-error", parse_get_key(b"jobs/open"), replies.error("ERROR", "too many open reads"),
     ErrorReply("ERROR", "too many open reads")),
    ("set-stored", c.Set("jobs", 3, 60, b"payload"), replies.STORED, Status.STORED),
    ("set-data-with-crlf", c.Set("jobs", 0, 0, TRICKY), replies.STORED, Status.STORED),
    ("set-not-stored", c.Set("full", 0, 0, b"x"), replies.NOT_STORED, Status.NOT_STORED),
    ("set-server-error", c.Set("jobs", 0, 0, b"x"), replies.error("SERVER_ERROR", "disk full"),
     ErrorReply("SERVER_ERROR", "disk full")),
    ("set-noreply", c.Set("jobs", 0, 0, b"quiet", noreply=True), b"", None),
    ("delete", c.Delete("jobs"), replies.DELETED, Status.DELETED),
    ("delete-noreply", c.Delete("jobs", noreply=True), b"", None),
    ("flush", c.Flush("jobs"), replies.END, Status.END),
    ("flush-all", c.FlushAll(), replies.FLUSHED_ALL, Message("Flushed all queues.")),
    ("flush-all-noreply", c.FlushAll(noreply=True), b"", None),
    ("flush-expired", c.FlushExpired("jobs"), replies.count(12), Count(12)),
    ("flush-all-expired", c.FlushAllExpired(), replies.count(0), Count(0)),
    ("stats", c.Stats(), replies.stats([("pid", 42), ("version", "0.1.0"), ("note", "a b")]),
     Stats({"pid": "42", "version": "0.1.0", "note": "a b"})),
    ("dump-stats", c.DumpStats(("a", "b_c")),
     replies.dump_stats([("a", [("items", 1)]), ("b_c", [("items", 0), ("age", 5)])]),
     DumpStats({"a": {"items": "1"}, "b_c": {"items": "0", "age": "5"}})),
    ("dump-stats-none", c.DumpStats(("nosuch",)), replies.dump_stats([]), DumpStats({})),
    ("version", c.Version(), replies.version(WIRE_VERSION), Version(WIRE_VERSION)),
    ("reload", c.Reload(), replies.RELOADED, Message("Reloaded config.")),
    ("monitor", c.Monitor("jobs", 5, 2),
     b"".join([*replies.value(b"jobs", 0, b"a")[:2], b"\r\n", *replies.value(b"jobs", 1, b"b")]),
     Values((Value(b"jobs", 0, b"a"), Value(b"jobs", 1, b"b")))),
    ("monitor-default-limit", c.Monitor("jobs", 1, 0), replies.END, Values(())),
    ("confirm", c.Confirm("jobs", 2), replies.END, Status.END),
    ("confirm-refused", c.Confirm("jobs", 9), replies.ERROR, ErrorReply("ERROR", "")),
    ("status", c.GetStatus(), replies.status("READONLY"), Message("READONLY")),
    ("status-set", c.SetStatus(c.ServerStatus.QUIESCENT), replies.END, Status.END),
    ("set-read-only", c.Set("jobs", 0, 0, b"x"),
     replies.error("SERVER_ERROR", "server is read-only"),
     ErrorReply("SERVER_ERROR", "server is read-only")),
    # No reply: the server closes the connection (last, as nothing follows them for real).
    ("quit", c.Quit(), b"", None),
    ("shutdown", c.Shutdown(), b"", None),
]  # fmt: skip
IDS = [case[0] for case in CASES]


class Pair:
    """A client half and a server half joined by an in-memory network."""

    def __init__(self) -> None:
        self.client = ClientConnection()
        self.server = ServerConnection()

    def commands_through(self, wire: bytes, cuts: list[int]) -> list[c.Command]:
        """Feed `wire` to the server half in pieces cut at `cuts`; every command parsed."""
        out: list[c.Command] = []
        for piece in _pieces(wire, cuts):
            self.server.receive_data(piece)
            while (cmd := self.server.next_command()) is not None:
                out.append(cmd)
        return out

    def replies_through(self, wire: bytes, cuts: list[int]) -> list[Reply]:
        out: list[Reply] = []
        for piece in _pieces(wire, cuts):
            self.client.receive_data(piece)
            while (reply := self.client.next_event()) is not None:
                out.append(reply)
        return out


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_every_command_kind_has_a_case() -> None:
    # A command added to the server half without a client case fails here, not in a tool.
    assert {type(case[1]) for case in CASES} == set(typing.get_args(c.Command))


@pytest.mark.parametrize(("name", "command", "reply", "event"), CASES, ids=IDS)
def test_one_command_round_trips(
    name: str, command: c.Command, reply: bytes, event: Reply | None
) -> None:
    pair = Pair()
    wire = pair.client.send(command)
    assert pair.commands_through(wire, []) == [command]
    assert pair.client.pending == (0 if event is None else 1)
    assert pair.replies_through(reply, []) == ([] if event is None else [event])
    assert pair.client.pending == 0
    assert pair.client.consumed == len(reply)


def _pipelined() -> tuple[Pair, bytes, bytes, list[c.Command], list[Reply]]:
    pair = Pair()
    commands = [case[1] for case in CASES]
    wire = b"".join(pair.client.send(cmd) for cmd in commands)
    reply_wire = b"".join(case[2] for case in CASES)
    events = [case[3] for case in CASES if case[3] is not None]
    return pair, wire, reply_wire, commands, events


def test_pipelined_whole() -> None:
    pair, wire, reply_wire, commands, events = _pipelined()
    assert pair.commands_through(wire, []) == commands
    assert pair.replies_through(reply_wire, []) == events
    assert pair.client.pending == 0


def test_pipelined_split_at_every_offset() -> None:
    _, wire, reply_wire, commands, events = _pipelined()
    for cut in range(1, len(wire)):
        pair = Pair()
        for cmd in commands:
            pair.client.send(cmd)
        assert pair.commands_through(wire, [cut]) == commands, cut
    for cut in range(1, len(reply_wire)):
        pair, *_ = _pipelined()
        assert pair.replies_through(reply_wire, [cut]) == events, cut


def test_pipelined_byte_at_a_time() -> None:
    pair, wire, reply_wire, commands, events = _pipelined()
    assert pair.commands_through(wire, list(range(1, len(wire)))) == commands
    assert pair.replies_through(reply_wire, list(range(1, len(reply_wire)))) == events


def test_expect_reply_frames_any_reply_by_its_first_line() -> None:
    # Bytes sent by other means: the reply's kind comes from its first line, and `consumed`
    # marks where each reply ends, so a caller can cut out the exact bytes.
    client = ClientConnection()
    wire = b""
    for _, _, reply, event in CASES:
        if event is None:
            continue
        client.expect_reply()
        client.receive_data(reply)
        start = len(wire)
        wire += reply
        got = client.next_event()
        assert got is not None and client.consumed == len(wire), reply
        assert wire[start : client.consumed] == reply
    assert client.pending == 0


def test_unprompted_error_is_returned_without_answering_anything() -> None:
    client = ClientConnection()
    client.receive_data(replies.error("SERVER_ERROR", "too many connections"))
    assert client.next_event() == ErrorReply("SERVER_ERROR", "too many connections")
    assert client.pending == 0


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        pytest.param(c.Set("q", 0, 0, b"x"), b"DELETED\r\n", id="wrong-status"),
        pytest.param(c.Version(), b"STORED\r\n", id="not-a-version"),
        pytest.param(parse_get_key(b"q"), b"VALUE q 0 3\r\nabcd\r\nEND\r\n", id="value-too-long"),
        pytest.param(parse_get_key(b"q"), b"VALUE q 0 x\r\n", id="bad-length"),
        pytest.param(parse_get_key(b"q"), b"VALUE q -1 1\r\n", id="negative-flags"),
        pytest.param(c.Stats(), b"STAT lonely\r\nEND\r\n", id="stat-without-value"),
        pytest.param(c.DumpStats(()), b"queue 'a' {\r\nEND\r\n", id="dump-stats-unclosed"),
        pytest.param(c.FlushExpired("q"), b"+1\r\n", id="signed-count"),
        pytest.param(c.Stats(), b"STAT a \xff\r\nEND\r\n", id="not-utf8"),
        pytest.param(None, b"STORED\r\n", id="reply-with-nothing-sent"),
    ],
)
def test_malformed_reply_raises_the_protocol_error(command: c.Command | None, reply: bytes) -> None:
    client = ClientConnection()
    if command is not None:
        client.send(command)
    client.receive_data(reply)
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    # Out of step for good: it does not guess where the next reply starts.
    client.receive_data(b"STORED\r\n")
    with pytest.raises(RemoteProtocolError):
        client.next_event()


def test_limits_bound_what_a_server_can_make_the_client_buffer() -> None:
    client = ClientConnection(max_line_bytes=100, max_value_bytes=1000)
    client.send(parse_get_key(b"q"))
    client.receive_data(b"VALUE q 0 1001\r\n")
    with pytest.raises(RemoteProtocolError, match="over the client's limit"):
        client.next_event()
    client = ClientConnection(max_line_bytes=100)
    client.send(c.Stats())
    client.receive_data(b"STAT " + b"x" * 200)
    with pytest.raises(RemoteProtocolError, match="too long"):
        client.next_event()


# -- fuzz: events or the project's error, never anything else --------------------------------

COMMANDS = [case[1] for case in CASES]
REPLY_TYPES = (Status, Values, Stats, DumpStats, Version, Count, Message, ErrorReply)


def _drive(commands: list[c.Command], data: bytes, cuts: list[int]) -> None:
    client = ClientConnection(max_line_bytes=512, max_value_bytes=4096)
    for cmd in commands:
        client.send(cmd)
    try:
        for piece in _pieces(data, sorted(set(cuts))):
            client.receive_data(piece)
            while (event := client.next_event()) is not None:
                assert isinstance(event, REPLY_TYPES)
    except RemoteProtocolError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(COMMANDS), max_size=6),
    st.binary(max_size=300),
    st.lists(st.integers(0, 300), max_size=8),
)
def test_fuzz_random_bytes(commands: list[c.Command], data: bytes, cuts: list[int]) -> None:
    _drive(commands, data, [x for x in cuts if x <= len(data)])


REPLY_PARTS = sorted({case[2] for case in CASES} | {b"\r\n", b"\n", b" ", b"VALUE ", b"0", b"9"})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(COMMANDS), max_size=8),
    st.lists(st.sampled_from(REPLY_PARTS), max_size=10),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_fuzz_mixed_reply_fragments(
    commands: list[c.Command], parts: list[bytes], cuts: list[int]
) -> None:
    # Real replies cut, shuffled and glued: reaches deep into VALUE and STAT parsing, which
    # random bytes rarely do.
    data = b"".join(parts)
    _drive(commands, data, [x for x in cuts if x <= len(data)])
    _drive(commands, data, list(range(1, len(data))))  # byte at a time
