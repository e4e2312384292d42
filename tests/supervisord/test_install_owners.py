"""`kestrelq install` refuses places a user other than root could write: supervisord runs as
root with the interpreter written in, and the workers import the application.

Directories are made in the test's temporary directory with the owners and modes a careless
install has (a checkout's .venv owned by its user, a group-writable app/), so these tests chown
and run as root (CI does); elsewhere they are skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import REPO

from kestrelq.supervisord import install
from kestrelq.supervisord.stack import StackError, load_stack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")

NOBODY = 65534  # Debian's nobody/nogroup ids: a user and a group other than root


def tree(tmp_path: Path) -> Path:
    """A root-owned, 0755 place to build in (the temporary directory's own mode may vary)."""
    base = tmp_path / "opt"
    base.mkdir()
    os.chown(tmp_path, 0, 0)
    os.chmod(tmp_path, 0o755)
    os.chmod(base, 0o755)
    return base


def test_root_owned_places_pass(tmp_path: Path) -> None:
    base = tree(tmp_path)
    (base / "venv" / "lib").mkdir(parents=True, mode=0o755)
    (base / "app").mkdir(mode=0o755)
    python = base / "venv" / "python3"
    python.symlink_to(sys.executable)
    assert install.unsafe_paths([str(base / "venv" / "lib"), str(base / "app")]) == []


def test_a_place_owned_by_a_user_is_named_with_its_owner(tmp_path: Path) -> None:
    base = tree(tmp_path)
    venv = base / "venv"
    (venv / "lib").mkdir(parents=True, mode=0o755)
    os.chown(venv, NOBODY, NOBODY)
    # The directory below is root's, but nobody can rename it away and put another in its place.
    assert install.unsafe_paths([str(venv / "lib")]) == [f"{venv}: owned by nobody"]


def test_group_and_world_writable_places_are_refused(tmp_path: Path) -> None:
    base = tree(tmp_path)
    shared, open_, roots = base / "shared", base / "open", base / "roots"
    for path in (shared, open_, roots):
        path.mkdir()
    os.chown(shared, 0, NOBODY)
    os.chmod(shared, 0o775)
    os.chmod(open_, 0o1777)  # sticky: fine above a place, not for the place itself
    os.chmod(roots, 0o775)  # group root: only root
    problems = install.unsafe_paths([str(shared), str(open_), str(roots)])
    assert problems == [
        f"{shared}: writable by the group nogroup (mode 0775)",
        f"{open_}: writable by everyone (mode 1777)",
    ]
    below = open_ / "app"
    below.mkdir(mode=0o755)
    assert install.unsafe_paths([str(below)]) == []


def test_a_missing_place_is_judged_by_the_directory_above(tmp_path: Path) -> None:
    base = tree(tmp_path)
    os.chown(base, NOBODY, NOBODY)
    assert install.unsafe_paths([str(base / "app")]) == [f"{base}: owned by nobody"]


def test_the_real_interpreter_s_import_path_is_probed() -> None:
    paths = install.interpreter_paths(sys.executable)
    assert paths[0] == sys.executable
    assert sys.prefix in paths
    assert str(Path(install.__file__).parents[1]) in paths  # where kestrelq is imported from


def test_install_refuses_a_user_writable_app_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tree(tmp_path)
    app = base / "app"
    app.mkdir()
    os.chown(app, NOBODY, NOBODY)
    args = argparse.Namespace(
        etc=base / "etc", description=REPO / "conf" / "stack.toml", python=sys.executable,
        user="", app_dir=str(app), data_dir=str(base / "data"), log_dir=str(base / "log"),
        run_dir=str(base / "run"), unit_dir=base / "systemd", no_unit=False, force=False,
    )  # fmt: skip
    if install.unsafe_paths(install.interpreter_paths(sys.executable)):
        pytest.skip("this interpreter is itself in a place a user can write")
    assert install.run(args) == 2
    err = capsys.readouterr().err
    assert f"{app}: owned by nobody" in err and "--force" in err
    assert not (base / "etc").exists() and not (base / "systemd").exists()
    args.force = True
    assert install.run(args) == 0
    assert (base / "etc" / "stack.toml").is_file()


def test_an_interpreter_a_user_owns_is_refused_without_being_run(tmp_path: Path) -> None:
    base = tree(tmp_path)
    home = base / "home"
    home.mkdir()
    ran = base / "ran"
    python = home / "python"
    python.write_text(f'#!/bin/sh\ntouch {ran}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    os.chown(home, NOBODY, NOBODY)
    stack = replace(load_stack(REPO / "conf" / "stack.toml"), python=str(python), app_dir=str(base))
    with pytest.raises(StackError, match=re.escape(f"{home}: owned by nobody")):
        install.check_root_owned(stack)
    assert not ran.exists(), "the interpreter was run as root before it was judged"
