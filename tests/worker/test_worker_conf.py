"""The worker programs `kestrelq conf` renders: their command is one `kestrelq work` accepts,
and the worker's stop timeout ends its warm stop before supervisord's SIGKILL."""

from __future__ import annotations

import argparse
import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, child_env

from kestrelq.cli import build_parser


def worker_section(ini: Path) -> configparser.SectionProxy:
    parser = configparser.RawConfigParser()
    parser.read(ini)
    return parser["program:work_worker"]


def worker_args(command: str) -> argparse.Namespace:
    argv = shlex.split(command)
    assert argv[1:3] == ["-m", "kestrelq"], command
    return build_parser().parse_args(argv[3:])


def test_the_committed_worker_program_stops_before_supervisord_kills_it() -> None:
    section = worker_section(REPO / "conf/supervisord.d/work_worker.ini")
    args = worker_args(section["command"])
    assert args.handler == "tasks:handle"
    assert 0 < args.stop_timeout_s < int(section["stopwaitsecs"])
    # conf/stack.toml gives queue work max_deliveries = 5: the worker is told, for its
    # "gave up" line.
    assert (args.max_deliveries, args.dead_letter) == (5, "work_dead")


@pytest.mark.parametrize("stopwaitsecs", [1, 4, 30, 600])
def test_any_stopwaitsecs_gives_a_stop_timeout_below_it(tmp_path: Path, stopwaitsecs: int) -> None:
    description = tmp_path / "stack.toml"
    description.write_text(
        (REPO / "conf/stack.toml")
        .read_text()
        .replace(
            "stopwaitsecs = 30                # longest task", f"stopwaitsecs = {stopwaitsecs} #"
        )
    )
    out = tmp_path / "conf"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kestrelq",
            "conf",
            "--description",
            str(description),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    section = worker_section(out / "supervisord.d/work_worker.ini")
    assert int(section["stopwaitsecs"]) == stopwaitsecs
    stop_timeout_s = worker_args(section["command"]).stop_timeout_s
    assert 0 < stop_timeout_s < stopwaitsecs
