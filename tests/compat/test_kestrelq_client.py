"""kestrelq.client, our own tools' client, against a real server."""

from __future__ import annotations

import pytest
from helpers import ServerProcess, Wire

from kestrelq import WIRE_VERSION
from kestrelq.client import Client, address_from_env
from kestrelq.errors import ReplyError
from kestrelq.protocol import commands as c
from kestrelq.protocol.client import Status, Value, Values
from kestrelq.protocol.parser import parse_get_key


def test_commands_and_their_answers(server: ServerProcess) -> None:
    with Client("127.0.0.1", server.port) as client:
        assert client.version() == WIRE_VERSION
        assert client.set("jobs", b"one\r\nEND\r\n", flags=3) is True
        assert client.set("jobs", b"two") is True
        assert client.get("jobs/peek") == Value(b"jobs/peek", 3, b"one\r\nEND\r\n")
        assert client.dump_stats("jobs")["jobs"]["items"] == "2"
        assert client.stats()["curr_items"] == "2"
        assert client.get("jobs") == Value(b"jobs", 3, b"one\r\nEND\r\n")
        assert client.get("jobs/open") == Value(b"jobs/open", 0, b"two")
        assert client.get("jobs/close") is None
        assert client.flush_expired("jobs") == 0
        client.delete("jobs")
        assert "jobs" not in client.dump_stats()


def test_pipeline_answers_in_order_and_noreply_gets_none(server: ServerProcess) -> None:
    with Client("127.0.0.1", server.port) as client:
        got = client.pipeline(
            [
                c.Set("p", 0, 0, b"quiet", noreply=True),
                c.Set("p", 0, 0, b"loud"),
                parse_get_key(b"p"),
                parse_get_key(b"p"),
                parse_get_key(b"p"),
            ]
        )
        assert got == [
            Status.STORED,
            Values((Value(b"p", 0, b"quiet"),)),
            Values((Value(b"p", 0, b"loud"),)),
            Values(()),
        ]
        assert client.request(c.Set("p", 0, 0, b"x", noreply=True)) is None
        assert client.get("p") == Value(b"p", 0, b"x")  # still in step


def test_an_error_reply_raises_reply_error(server: ServerProcess) -> None:
    with Wire(server.port) as holder:
        assert holder.call(b"set q 0 0 1\r\nx\r\n") == b"STORED\r\n"
    with Client("127.0.0.1", server.port) as client:
        assert client.get("q/open") is not None
        with pytest.raises(ReplyError) as caught:
            client.get("q")  # a plain get while this connection holds an open read
        assert caught.value.word == "ERROR"


def test_address_from_env() -> None:
    assert address_from_env({}) == ("127.0.0.1", 22133)
    assert address_from_env({"KESTRELQ_HOST": "queue", "KESTRELQ_PORT": "1"}) == ("queue", 1)
    assert address_from_env({"KESTRELQ_HOST": "", "KESTRELQ_PORT": ""}) == ("127.0.0.1", 22133)
    with pytest.raises(ValueError, match="KESTRELQ_PORT must be a number"):
        address_from_env({"KESTRELQ_PORT": "x"})
