"""Parser fuzz over a real socket: any bytes get replies or a clean close, never a dead server.

Two properties:
- Arbitrary input (random bytes, and random sequences of protocol fragments) sent in one go
  and then half-closed: the server answers and closes the connection within a deadline, stays
  up, and a fresh connection still gets `VERSION`.
- Split at every offset: a fixed input sent in two writes (or a byte at a time) gets exactly
  the replies it gets when sent whole, with no reset, even after an error that closes. Each
  run uses its own queue names (same length), so runs share no state.
The server log must have no traceback at the end.
"""

from __future__ import annotations

import errno
import itertools
import random
import socket
from collections.abc import Iterator

import pytest
from helpers import ServerProcess, Wire, connect, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrelq import WIRE_VERSION

VERSION = f"VERSION {WIRE_VERSION}\r\n".encode()

TOKENS = [
    b"set", b"get", b"gets", b"GET", b"delete", b"flush", b"flush_all", b"flush_expired",
    b"flush_all_expired", b"stats", b"dump_stats", b"version", b"reload", b"quit", b"monitor",
    b"confirm", b"fz", b"fz/open", b"fz/close", b"fz/abort", b"fz/peek", b"fz/t=5", b"/open",
    b"fz+c", b"../x", b"a.b", b"/", b"0", b"1", b"2", b"5", b"-1", b"4294967296", b"99999999999",
    b"noreply", b" ", b" ", b"  ", b"\r\n", b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b"hello",
]  # fmt: skip
# `shutdown` is left out on purpose: it would (correctly) stop the server under test.
fragments = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=6))
protocolish = st.lists(fragments, max_size=80).map(b"".join)
payloads = st.one_of(st.binary(max_size=600), protocolish)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(tmp_path_factory.mktemp("fuzz") / "data") as proc:
        yield proc


def exchange(port: int, *parts: bytes, timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """Send `parts` as separate writes, half-close, read until the server closes.

    Returns the bytes read and whether the connection was reset: a server that closes after
    an error while more of our bytes are unread resets the connection, which may also drop
    replies already in flight. A server that neither replies nor closes makes recv time
    out, which fails the test.
    """
    data = b""
    with connect(port, timeout_s) as sock:
        try:
            for part in parts:
                if part:
                    sock.sendall(part)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up early (after an error): read what it said
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            return data, True
    return data, False


def assert_alive(srv: ServerProcess) -> None:
    assert srv.proc is not None and srv.proc.poll() is None, srv.log()
    with Wire(srv.port) as w:
        assert w.call(b"version\r\n") == VERSION


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads)
def test_arbitrary_bytes_get_replies_or_a_clean_close(srv: ServerProcess, payload: bytes) -> None:
    exchange(srv.port, payload)
    assert_alive(srv)


# Inputs replayed split at every offset. `QQQQQQ` becomes a queue name unique to each run.
SPLIT_INPUTS = {
    "session": (
        b"set QQQQQQ 5 0 5\r\nhello\r\nget QQQQQQ/open\r\nget QQQQQQ/close\r\n"
        b"set QQQQQQ 0 0 3 noreply\r\nabc\r\nget QQQQQQ/peek\r\ngets QQQQQQ\r\n"
        b"delete QQQQQQ\r\nversion\r\nget QQQQQQ\r\n"
    ),
    "crlf-in-data-and-errors": (
        b"SET QQQQQQ 0 0 4\r\nab\r\n\r\nget QQQQQQ/t=1/open\r\nget QQQQQQ/abort\r\n"
        b"flush_expired QQQQQQ\r\nset QQQQQQ 0 -1 1\nx\r\nflush_expired QQQQQQ\r\n"
        b"confirm QQQQQQ 1\r\nget\r\nset ../x 0 0 2\r\nhi\r\nget QQQQQQ\r\nbogus\r\nversion\r\n"
    ),
    "bad-data-chunk": (
        b"set QQQQQQ 0 0 10\r\n0123456789\r\nset QQQQQQ 0 0 2\r\nxyz\r\nget QQQQQQ\r\n"
    ),
    "forbidden-mix": b"set QQQQQQ 0 0 1\r\nz\r\nget QQQQQQ/open\r\nget QQQQQQ/peek/open\r\n",
}
# Commands whose replies depend on other runs' queues are left out of the random inputs.
_LOCAL_TOKENS = [t for t in TOKENS if t not in (b"stats", b"dump_stats", b"flush_all_expired")]
for _seed in range(3):
    _rng = random.Random(_seed)
    SPLIT_INPUTS[f"random-seed-{_seed}"] = b"\r\n".join(
        _rng.choice(_LOCAL_TOKENS).replace(b"fz", b"QQQQQQ")
        + b" "
        + _rng.randbytes(_rng.randint(0, 8))
        for _ in range(12)
    )


@pytest.mark.parametrize("name", sorted(SPLIT_INPUTS))
def test_split_at_every_offset_gives_the_same_replies(srv: ServerProcess, name: str) -> None:
    template = SPLIT_INPUTS[name]
    runs = iter(range(10**6))

    def replay(parts: list[int]) -> tuple[bytes, bool]:
        queue = b"%s%05d" % (name[0].encode(), next(runs))
        payload = template.replace(b"QQQQQQ", queue)
        cuts = [0, *parts, len(payload)]
        pieces = [payload[a:b] for a, b in itertools.pairwise(cuts)]
        data, reset = exchange(srv.port, *pieces)
        return data.replace(queue, b"QQQQQQ"), reset

    whole, reset = replay([])
    assert whole and not reset, (whole, reset)
    splits = [[offset] for offset in range(1, len(template))]
    # ... and one byte at a time.
    splits.append(list(range(1, len(template))))
    for cut in splits:
        # After an error that closes the connection, the server reads and drops what we still
        # send until our EOF before it closes: no reset, so every reply arrives, whatever the
        # timing of the pieces.
        assert replay(cut) == (whole, False), f"split at {cut[:3]}"
    assert_alive(srv)


def test_split_replies_are_the_expected_bytes(srv: ServerProcess) -> None:
    # Pin what the "session" input must answer, so the split test compares against truth.
    queue = b"s99999"
    payload = SPLIT_INPUTS["session"].replace(b"QQQQQQ", queue)
    assert exchange(srv.port, payload) == (
        b"STORED\r\nVALUE s99999/open 5 5\r\nhello\r\nEND\r\nEND\r\n"
        b"VALUE s99999/peek 0 3\r\nabc\r\nEND\r\nVALUE s99999 0 3\r\nabc\r\nEND\r\n"
        b"DELETED\r\n" + VERSION + b"END\r\n",
        False,
    )


def test_server_log_has_no_traceback(srv: ServerProcess) -> None:
    assert_alive(srv)
    log = srv.log()
    assert "Traceback" not in log
    assert " CRITICAL " not in log
