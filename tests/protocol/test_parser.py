"""The sans-IO parser: commands in, typed commands or RemoteProtocolError out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kestrelq.errors import ItemTooLarge, ProtocolError, RemoteProtocolError
from kestrelq.protocol import commands as c
from kestrelq.protocol import replies
from kestrelq.protocol.buffer import ReceiveBuffer
from kestrelq.protocol.commands import ServerStatus
from kestrelq.protocol.parser import ServerConnection, State
from kestrelq.queue.collection import GetOptions


def parse_all(data: bytes, **limits: int) -> list[c.Command | ProtocolError]:
    conn = ServerConnection(**limits)
    conn.receive_data(data)
    out: list[c.Command | ProtocolError] = []
    while True:
        try:
            cmd = conn.next_command()
        except ProtocolError as exc:
            out.append(exc)
            if exc.close:
                return out
            continue
        if cmd is None:
            return out
        out.append(cmd)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(b"get q\r\n", c.Get(b"q", "q", GetOptions()), id="plain"),
        pytest.param(b"GETS q\n", c.Get(b"q", "q", GetOptions()), id="gets-upper-lf"),
        pytest.param(
            b"get q/t=500/close/open\r\n",
            c.Get(b"q/t=500/close/open", "q", GetOptions(500, open=True, close=True)),
            id="close-open-timeout",
        ),
        pytest.param(
            b"get q/open/t=5/close\r\n",
            c.Get(b"q/open/t=5/close", "q", GetOptions(5, open=True, close=True)),
            id="any-order",
        ),
        pytest.param(
            b"get q/abort\r\n", c.Get(b"q/abort", "q", GetOptions(abort=True)), id="abort"
        ),
        pytest.param(
            b"get q/peek/t=1\r\n", c.Get(b"q/peek/t=1", "q", GetOptions(1, peek=True)), id="peek"
        ),
        pytest.param(
            b"get q/t=-5/bogus\r\n", c.Get(b"q/t=-5/bogus", "q", GetOptions()), id="neg-t-unknown"
        ),
        pytest.param(b"get a+b\r\n", c.Get(b"a+b", "a+b", GetOptions()), id="fanout-child"),
        pytest.param(b"delete q\r\n", c.Delete("q"), id="delete"),
        pytest.param(b"delete q noreply\r\n", c.Delete("q", True), id="delete-noreply"),
        pytest.param(b"flush q\r\n", c.Flush("q"), id="flush"),
        pytest.param(b"flush_all\r\n", c.FlushAll(), id="flush_all"),
        pytest.param(b"flush_expired q\r\n", c.FlushExpired("q"), id="flush_expired"),
        pytest.param(b"flush_all_expired\r\n", c.FlushAllExpired(), id="flush_all_expired"),
        pytest.param(b"stats\r\n", c.Stats(), id="stats"),
        pytest.param(b"dump_stats a b\r\n", c.DumpStats(("a", "b")), id="dump_stats"),
        pytest.param(b"version\r\n", c.Version(), id="version"),
        pytest.param(b"reload\r\n", c.Reload(), id="reload"),
        pytest.param(b"shutdown\r\n", c.Shutdown(), id="shutdown"),
        pytest.param(b"quit\r\n", c.Quit(), id="quit"),
        pytest.param(b"monitor q 5\r\n", c.Monitor("q", 5, 0), id="monitor"),
        pytest.param(b"monitor q 5 3\r\n", c.Monitor("q", 5, 3), id="monitor-max"),
        pytest.param(b"confirm q 2\r\n", c.Confirm("q", 2), id="confirm"),
        pytest.param(b"status\r\n", c.GetStatus(), id="status"),
        pytest.param(b"STATUS\r\n", c.GetStatus(), id="status-upper"),
        pytest.param(b"status readonly\r\n", c.SetStatus(ServerStatus.READONLY), id="readonly"),
        pytest.param(b"status Quiescent\r\n", c.SetStatus(ServerStatus.QUIESCENT), id="quiet"),
        pytest.param(b"status UP\r\n", c.SetStatus(ServerStatus.UP), id="up"),
    ],
)
def test_commands(line: bytes, expected: c.Command) -> None:
    assert parse_all(line) == [expected]


def test_set_with_block_split_across_reads() -> None:
    conn = ServerConnection()
    data = b"set q 7 0 5\r\nhello\r\nset q 0 100 0 noreply\r\n\r\n"
    commands = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        while (cmd := conn.next_command()) is not None:
            commands.append(cmd)
    assert commands == [c.Set("q", 7, 0, b"hello"), c.Set("q", 0, 100, b"", noreply=True)]


def test_binary_data_with_crlf_inside() -> None:
    payload = b"a\r\nb\r\n\x00\xff"
    assert parse_all(b"set q 0 0 %d\r\n%s\r\n" % (len(payload), payload)) == [
        c.Set("q", 0, 0, payload)
    ]


@pytest.mark.parametrize(
    ("data", "reason", "close"),
    [
        pytest.param(b"bogus\r\n", "unknown command 'bogus'", True, id="unknown"),
        pytest.param(b"\r\n", "empty command line", True, id="empty-line"),
        pytest.param(b"add q 0 0 1\r\nx\r\n", "unknown command 'add'", True, id="add"),
        pytest.param(b"set q 0 0\r\n", "bad command line format", True, id="set-short"),
        pytest.param(b"set q 0 0 1 x\r\n", "bad command line format", True, id="set-extra"),
        pytest.param(b"set q x 0 1\r\n", "bad flags", True, id="set-flags"),
        pytest.param(b"set q 0 0 -1\r\n", "data length out of range", True, id="set-neg-len"),
        pytest.param(b"set q 0 0 3\r\nabcd\r\n", "bad data chunk", True, id="bad-chunk"),
        pytest.param(b"set ../x 0 0 1\r\nx\r\n", "bad queue name", False, id="set-dotdot"),
        pytest.param(b"get ../x\r\n", "bad queue name", True, id="get-dotdot"),
        pytest.param(b"get /open\r\n", "empty queue name", True, id="get-empty-name"),
        pytest.param(b"get\r\n", "get needs a key", False, id="get-no-key"),
        pytest.param(b"get q/t=abc\r\n", "bad timeout", True, id="bad-timeout"),
        pytest.param(
            b"get q/open/peek\r\n",
            "peek and abort cannot be combined with open or close",
            True,
            id="open-peek",
        ),
        pytest.param(
            b"get q/close/abort\r\n",
            "peek and abort cannot be combined with open or close",
            True,
            id="close-abort",
        ),
        pytest.param(
            b"get q/peek/abort\r\n", "peek cannot be combined with abort", True, id="peek-abort"
        ),
        pytest.param(b"delete\r\n", "delete needs a queue name", False, id="delete-no-name"),
        pytest.param(b"get " + b"q" * 129 + b"\r\n", "queue name longer", True, id="long-name"),
        pytest.param(b"get q\xc3\xa9\r\n", "bad queue name", True, id="non-ascii"),
        pytest.param(b"status down\r\n", "unknown status 'down'", False, id="status-down"),
        pytest.param(b"status up now\r\n", "unknown status 'up now'", False, id="status-2"),
    ],
)
def test_errors(data: bytes, reason: str, close: bool) -> None:
    out = parse_all(data)
    assert isinstance(out[0], RemoteProtocolError)
    assert out[0].reason.startswith(reason)
    assert out[0].close is close


def test_line_too_long_is_refused_without_a_newline() -> None:
    conn = ServerConnection(max_line_bytes=64)
    conn.receive_data(b"get " + b"x" * 100)
    with pytest.raises(RemoteProtocolError, match="line too long"):
        conn.next_command()
    assert conn.state is State.CLOSED


def test_oversize_item_is_refused_at_once_and_closes() -> None:
    conn = ServerConnection(max_item_bytes=10)
    # Refused on the command line alone: none of the 999999999999 bytes need to arrive.
    conn.receive_data(b"set q 0 0 999999999999\r\n")
    with pytest.raises(ItemTooLarge) as info:
        conn.next_command()
    assert info.value.close and not info.value.noreply
    assert str(info.value).startswith("object too large")
    conn.receive_data(b"x" * 20 + b"\r\nversion\r\n")
    assert conn.next_command() is None  # closed: nothing more is parsed


@pytest.mark.parametrize(
    ("line", "close"),
    [
        pytest.param(b"set a.b 0 0 3 noreply\r\nabc\r\n", False, id="bad-name"),
        pytest.param(b"set q 0 0 99 noreply\r\n", True, id="oversize"),
        pytest.param(b"set q x 0 3 noreply\r\nabc\r\n", True, id="bad-flags"),
        pytest.param(b"set q 0 0 3 noreply\r\nabcde\r\n", True, id="bad-data-chunk"),
        pytest.param(b"set q 0 0 3 4 noreply\r\nabc\r\n", True, id="set-format"),
        pytest.param(b"delete a.b noreply\r\n", False, id="delete-bad-name"),
        pytest.param(b"flush_all 9 noreply\r\n", False, id="flush-all-delay"),
        pytest.param(b"add q 0 0 3 noreply\r\nabc\r\n", True, id="unknown-command"),
    ],
)
def test_errors_of_noreply_commands_say_so(line: bytes, close: bool) -> None:
    conn = ServerConnection(max_item_bytes=10)
    conn.receive_data(line)
    with pytest.raises(ProtocolError) as info:
        conn.next_command()
    assert info.value.noreply
    assert info.value.close == close


def test_errors_without_noreply_are_answered() -> None:
    out = parse_all(b"set a.b 0 0 3\r\nabc\r\ndelete a.b\r\nflush_all 9\r\n")
    assert [isinstance(e, ProtocolError) and not e.noreply for e in out] == [True] * 3


@pytest.mark.parametrize(
    ("line", "cmd"),
    [
        (b"flush_all\r\n", c.FlushAll()),
        (b"flush_all noreply\r\n", c.FlushAll(noreply=True)),
        (b"flush_all 0 noreply\r\n", c.FlushAll(noreply=True)),  # pymemcache's default
        (b"flush_all 0\r\n", c.FlushAll()),
    ],
)
def test_flush_all_takes_memcache_arguments(line: bytes, cmd: c.Command) -> None:
    assert parse_all(line) == [cmd]


def test_get_with_several_keys_is_refused_and_the_connection_goes_on() -> None:
    out = parse_all(b"get a b\r\nversion\r\n")
    assert isinstance(out[0], RemoteProtocolError) and not out[0].close
    assert "one key" in str(out[0])
    assert out[1] == c.Version()


def test_a_block_being_received_is_reported_with_its_size() -> None:
    conn = ServerConnection()
    conn.receive_data(b"set q 0 0 100\r\nabc")
    assert conn.next_command() is None
    assert conn.block_size == 100 and conn.in_command
    conn.receive_data(b"x" * 97 + b"\r\n")
    assert isinstance(conn.next_command(), c.Set)
    assert conn.block_size == 0 and not conn.in_command
    conn.receive_data(b"ver")
    assert conn.next_command() is None
    assert conn.block_size == 0 and conn.in_command


def test_bad_name_set_skips_its_block() -> None:
    out = parse_all(b"set a.b 0 0 3\r\nabc\r\nversion\r\n")
    assert isinstance(out[0], RemoteProtocolError)
    assert out[1] == c.Version()


class _CountingBytes(bytearray):
    """The parser's buffer storage, counting the bytes its line searches look at."""

    scanned = 0

    def find(self, sub: bytes, start: int = 0, *rest: int) -> int:  # type: ignore[override]
        self.scanned += len(self) - start
        return super().find(sub, start, *rest)


def _feed_bytewise(data: bytes) -> tuple[list[c.Command], int]:
    conn = ServerConnection()
    storage = conn._buffer.data = _CountingBytes()
    got: list[c.Command] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        while (cmd := conn.next_command()) is not None:
            got.append(cmd)
    assert conn.buffered == 0
    return got, storage.scanned


def test_line_split_at_every_offset_is_linear_and_correct() -> None:
    # Long lines (unknown get options are ignored) make a rescan from the start of the line
    # cost hundreds of times the line, where a search that resumes costs about its length.
    key = b"q/open/" + b"/".join(b"opt%d" % i for i in range(150))
    data = b"get %s\r\nset q 3 0 2\r\nhi\r\n" % key
    data *= 20
    got, scanned = _feed_bytewise(data)

    expected = c.Get(key, "q", GetOptions(open=True))
    assert got == [expected, c.Set("q", 3, 0, b"hi")] * 20
    assert got == parse_all(data)  # the same commands as when it all arrives at once
    # Linear: each byte is looked at about once (a line search stops at the LF it finds).
    assert scanned <= 2 * len(data), (scanned, len(data))


def _run(chunks: list[bytes]) -> list[c.Command | tuple[str, bool]]:
    """The fuzz invariant: commands, None, or a ProtocolError; never anything else.

    Returns what came out, errors as (reason, close), up to the first error that closes.
    """
    conn = ServerConnection(max_line_bytes=256, max_item_bytes=1024)
    out: list[c.Command | tuple[str, bool]] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for _ in range(10_000):
            try:
                cmd = conn.next_command()
            except ProtocolError as exc:
                out.append((exc.reason, exc.close))
                if exc.close:
                    return out
                continue
            if cmd is None:
                break
            out.append(cmd)
        else:
            raise AssertionError("next_command() never asked for more bytes")
    return out


_alphabet = st.sampled_from(
    [b"set ", b"get ", b"q", b"/open", b"/close", b"/t=", b"1", b"0", b" ", b"\r\n", b"\n",
     b"noreply", b"peek", b"abort", b"+", b"-", b"\xff", b"\x00", b"monitor ", b"confirm "]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.lists(_alphabet, max_size=40).map(b"".join)))
def test_fuzz_whole_and_split(data: bytes) -> None:
    # However the bytes are split into reads, the same commands and errors come out.
    whole = _run([data])
    for cut in range(0, len(data) + 1, max(1, len(data) // 17)):
        assert _run([data[:cut], data[cut:]]) == whole, cut
    assert _run([data[i : i + 1] for i in range(len(data))]) == whole


_buffer_ops = st.lists(
    st.one_of(
        st.binary(max_size=12).map(lambda b: ("feed", b)),
        st.just(("line", b"")),
        st.integers(0, 8).map(lambda n: ("block", n)),
        st.integers(0, 8).map(lambda n: ("skip", n)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_buffer_ops)
def test_buffer_storage_is_empty_exactly_when_nothing_is_buffered(
    ops: list[tuple[str, Any]],
) -> None:
    # The parser sees the end of a batch by `data` being empty, without a call: that must
    # hold after whatever sequence of feeds and extractions.
    buf = ReceiveBuffer()
    for op, arg in ops:
        if op == "feed":
            buf.data += arg
        elif op == "line":
            buf.maybe_extract_line()
        elif op == "block":
            try:
                buf.maybe_extract_block(arg, b"\r\n")
            except ValueError:
                pass
        else:
            buf.skip(arg)
        assert (len(buf.data) == 0) == (len(buf) == 0)


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1), st.binary(max_size=5000))
def test_a_small_get_hit_in_one_piece_is_the_same_bytes(
    key: bytes, flags: int, data: bytes
) -> None:
    assert replies.value_joined(key, flags, data) == b"".join(replies.value(key, flags, data))
