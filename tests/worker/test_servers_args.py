"""Which servers `kestrelq work` reads: the command line, else the environment."""

from __future__ import annotations

import argparse

import pytest

from kestrelq.errors import ConfigError
from kestrelq.servers import Entry
from kestrelq.worker.cli import add_connection_args, servers_from_args


def parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_args(parser)
    return parser.parse_args(args)


def test_a_rendered_server_list_wins_over_the_images_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker image sets KESTRELQ_HOST=queue; supervisord's program line says --servers.
    monkeypatch.setenv("KESTRELQ_HOST", "queue")
    monkeypatch.setenv("KESTRELQ_PORT", "22133")
    assert servers_from_args(parse(["--servers", "q1:1,q2:2"])) == [Entry("q1", 1), Entry("q2", 2)]


def test_a_host_option_takes_the_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESTRELQ_SERVERS", "a:1,b:2")
    monkeypatch.setenv("KESTRELQ_PORT", "7")
    monkeypatch.delenv("KESTRELQ_HOST", raising=False)
    # The option wins over the list in the environment; the port comes from the environment.
    assert servers_from_args(parse(["--host", "h"])) == [Entry("h", 7)]


def test_without_options_the_environment_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KESTRELQ_HOST", "KESTRELQ_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KESTRELQ_SERVERS", "a:1,b:2")
    assert servers_from_args(parse([])) == [Entry("a", 1), Entry("b", 2)]
    monkeypatch.setenv("KESTRELQ_HOST", "c")
    with pytest.raises(ConfigError, match="not both"):
        servers_from_args(parse([]))


def test_a_list_and_a_host_on_the_command_line_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both"):
        servers_from_args(parse(["--servers", "a:1", "--port", "3"]))
