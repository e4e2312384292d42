"""`kestrelq install` without systemd: the installed description, the unit, a plain re-render.

The real host (systemd as init, `systemctl start` and `stop`) is tests/hosts/test_systemd_host.py.
"""

from __future__ import annotations

import argparse
import configparser
import tomllib
from pathlib import Path

import pytest
from helpers import REPO

from kestrelq.supervisord import cli as conf_cli
from kestrelq.supervisord import install
from kestrelq.supervisord.stack import StackError, load_stack


def test_rewrite_keeps_comments_and_sets_each_value() -> None:
    text = (
        "[paths]\n"
        'app_dir = "../app"   # the handlers\n'
        "[supervisord]\n"
        "user = ''   # who\n"
        "[server]\n"
        "port = 22133\n"
    )
    values = {
        "paths": {"app_dir": "/opt/app", "data_dir": "/var/lib/q"},
        "supervisord": {"user": "kestrelq", "python": '/opt/x "y"/python3'},
        "security": {"auth_file": "/etc/kestrelq/users"},
    }
    out = install.rewrite_description(text, values)
    assert 'app_dir = "/opt/app"   # the handlers' in out
    assert 'user = "kestrelq"   # who' in out
    parsed = tomllib.loads(out)
    assert parsed["paths"] == {"app_dir": "/opt/app", "data_dir": "/var/lib/q"}
    assert parsed["supervisord"]["python"] == '/opt/x "y"/python3'
    assert parsed["security"] == {"auth_file": "/etc/kestrelq/users"}
    assert parsed["server"] == {"port": 22133}


def args_for(tmp_path: Path, **extra: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "etc": tmp_path / "etc",
        "description": REPO / "conf" / "stack.toml",
        "python": "/opt/kestrelq/bin/python3",
        "user": "",  # no user: the test is not root
        "app_dir": None,
        "data_dir": str(tmp_path / "data"),
        "log_dir": str(tmp_path / "log"),
        "run_dir": str(tmp_path / "run"),
        "unit_dir": tmp_path / "systemd",
        "no_unit": False,
        # Not a real interpreter, and the test is not root: the check of who can write the
        # interpreter and the application has its own tests (test_install_owners.py).
        "force": True,
    }
    values.update(extra)
    return argparse.Namespace(**values)


def test_the_installed_description_holds_what_it_was_rendered_with(tmp_path: Path) -> None:
    assert install.run(args_for(tmp_path)) == 0
    etc = tmp_path / "etc"
    stack = load_stack(etc / "stack.toml")
    assert stack.python == "/opt/kestrelq/bin/python3"
    assert stack.app_dir == str(REPO / "app")
    assert (stack.data_dir, stack.log_dir) == (str(tmp_path / "data"), str(tmp_path / "log"))
    queue_ini = (etc / "supervisord.d/queue.ini").read_text()
    assert f"--data-dir {tmp_path / 'data'}" in queue_ini and "%(here)s/../.." not in queue_ini
    assert (etc / "secret.env").stat().st_mode & 0o777 == 0o600
    # A plain re-render, with no flag at all, gives the same files; and the headers and the
    # drift message say the command that works here (no Makefile under /etc).
    rerender = f"/opt/kestrelq/bin/python3 -m kestrelq conf --out {etc}"
    assert f"run `{rerender}`" in queue_ini and "make conf" not in queue_ini
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    conf_cli.register(sub)
    assert conf_cli.run(parser.parse_args(["conf", "--out", str(etc), "--check"])) == 0


def test_drift_under_etc_names_the_command_that_works_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install.run(args_for(tmp_path)) == 0
    etc = tmp_path / "etc"
    text = (etc / "stack.toml").read_text().replace("workers = 4", "workers = 6", 1)
    (etc / "stack.toml").write_text(text)
    parser = argparse.ArgumentParser()
    conf_cli.register(parser.add_subparsers())
    capsys.readouterr()
    assert conf_cli.run(parser.parse_args(["conf", "--out", str(etc), "--check"])) == 1
    err = capsys.readouterr().err
    assert f"run `/opt/kestrelq/bin/python3 -m kestrelq conf --out {etc}`" in err
    assert "make conf" not in err
    assert conf_cli.run(parser.parse_args(["conf", "--out", str(etc)])) == 0
    worker = configparser.RawConfigParser()
    worker.read(etc / "supervisord.d/work_worker.ini")
    assert worker.get("program:work_worker", "numprocs") == "6"


def test_the_unit_stops_supervisord_alone_and_waits_for_every_program(tmp_path: Path) -> None:
    assert install.run(args_for(tmp_path)) == 0
    unit = (tmp_path / "systemd" / install.UNIT_NAME).read_text()
    stack = load_stack(tmp_path / "etc" / "stack.toml")
    assert "KillMode=mixed" in unit
    total = sum(p.stopwaitsecs for p in install.programs(stack))
    assert f"TimeoutStopSec={total + install.STOP_MARGIN_S}" in unit
    assert total >= 60  # the queue's 30 s and the workers' 30 s at least
    assert "ExecStart=/opt/kestrelq/bin/python3 -m supervisor.supervisord --nodaemon" in unit
    assert f"-c {tmp_path / 'etc' / 'supervisord.conf'} update" in unit


def test_a_second_install_reuses_the_installed_description(tmp_path: Path) -> None:
    assert install.run(args_for(tmp_path)) == 0
    etc = tmp_path / "etc"
    first = (etc / "stack.toml").read_text()
    assert first.startswith(install.INSTALLED_MARK)
    # No --description: the one under etc, which already holds everything.
    assert install.run(args_for(tmp_path, description=None, data_dir=None, log_dir=None,
                                run_dir=None, python=None)) == 0  # fmt: skip
    assert (etc / "stack.toml").read_text() == first


def test_a_missing_description_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install.run(args_for(tmp_path, description=tmp_path / "nope.toml")) == 2
    assert "cannot read the stack description" in capsys.readouterr().err
    with pytest.raises(StackError):
        install.rewrite_description("[paths\n", {"paths": {"app_dir": "/x"}})
