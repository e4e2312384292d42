"""`kestrelq install`: the stack on a real host, under /etc, run by systemd.

What it does, as root, in this order (each step is skipped when already done, so running it
again is how the installation is updated):

1. The description: the source (`--description`, else the one already installed, else the
   checkout's `conf/stack.toml`) is copied to `<etc>/stack.toml` with every path made absolute
   and the interpreter and the user written in. So a plain `kestrelq conf --out <etc>` later
   renders the same files: nothing is held only in the flags of the first install.
2. The user (`--user`, default kestrelq) is created if missing (a system user, no shell), and
   owns the data and run directories. supervisord runs as root; every program as that user.
3. The files are rendered into `<etc>`, as `kestrelq conf` would, with the command to render
   them again in their headers.
4. `<etc>/secret.env` (0600) holds the status page's password, made once.
5. The systemd unit, `kestrelq.service`. `KillMode=mixed`: on `systemctl stop` the SIGTERM
   goes to supervisord alone, which stops the workers (each finishes its message) and then the
   queue; only what is left after `TimeoutStopSec` is killed, and that timeout is the programs'
   stop times added up. (The default, control-group, sends SIGTERM to every process at once,
   and a worker's second SIGTERM is a cold stop: its message is interrupted.)

Before any of it, the places root runs code from are checked: supervisord runs as root with
the interpreter written in, so the interpreter, its prefix, every directory it imports from
(site-packages, what a .pth file adds) and the application must be writable by root alone:
owned by root, not group- (unless the group is root) or world-writable, and so every directory
above them (a world-writable one only with the sticky bit, as /tmp). Otherwise a normal user who
can write a checkout's .venv or app/ would run code as root. `--force` installs anyway.

Every command it prints works when pasted: supervisorctl by the interpreter's full path, with
`-c`.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from kestrelq.supervisord.files import write_files
from kestrelq.supervisord.programs import programs
from kestrelq.supervisord.render import render_stack
from kestrelq.supervisord.stack import (
    PATH_KEYS,
    SECURITY_PATHS,
    Stack,
    StackError,
    load_stack,
    parse_stack,
)

UNIT_NAME = "kestrelq.service"
INSTALLED_MARK = "# Installed by `kestrelq install`"
SECRET_ENV = "secret.env"
# What systemd waits beyond the programs' stop times before it kills what is left.
STOP_MARGIN_S = 15


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "install",
        help="install the stack on this host: /etc/kestrelq, a system user, a systemd unit",
        description=(
            "Install (or update) the stack on this host, as root: the description in ETC with "
            "absolute paths, the interpreter and the user written in; the rendered supervisord "
            "files; a system user; the status page's password; a systemd unit. Run it again to "
            "apply changed options; after editing ETC/stack.toml, `kestrelq conf --out ETC` "
            "renders it again."
        ),
    )
    p.add_argument("--etc", type=Path, default=Path("/etc/kestrelq"), help="(/etc/kestrelq)")
    p.add_argument(
        "--description",
        type=Path,
        help="the stack description to install (default: ETC/stack.toml if it exists, else "
        "conf/stack.toml of the checkout this kestrelq runs from)",
    )
    p.add_argument(
        "--python",
        help=f"the interpreter the programs run with (default: this one, {sys.executable})",
    )
    p.add_argument("--user", default=None, help="run the programs as this user (kestrelq)")
    p.add_argument("--app-dir", help="the application: tasks.py (default: the checkout's app/)")
    p.add_argument("--data-dir", help="the journals (/var/lib/kestrelq/queue)")
    p.add_argument("--log-dir", help="the logs (/var/log/kestrelq)")
    p.add_argument("--run-dir", help="the socket, pid file, FATAL marker (/run/kestrelq)")
    p.add_argument(
        "--unit-dir", type=Path, default=Path("/etc/systemd/system"), help="(/etc/systemd/system)"
    )
    p.add_argument("--no-unit", action="store_true", help="write no systemd unit")
    p.add_argument(
        "--force",
        action="store_true",
        help="install even if the interpreter or the application can be written by a user "
        "other than root (supervisord runs them as root)",
    )
    p.set_defaults(func=run)


# -- the installed description -------------------------------------------------------------------

_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*(#.*)?$")
# `key = value  # comment`: the value a string (either quote) or a bare word.
_KEY_RE = re.compile(r"""^(\s*)([A-Za-z0-9_]+)(\s*=\s*)("[^"]*"|'[^']*'|[^#\s]+)(.*)$""")


def _toml_string(value: str) -> str:
    # A TOML basic string: backslash and quote escaped; the values are paths and names.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rewrite_description(text: str, values: dict[str, dict[str, str]]) -> str:
    """`text` (a stack description) with `values[section][key]` set, comments kept.

    A key already in its section has its value replaced (its comment stays); a missing one is
    added at the top of the section; a missing section is added at the end. The result is
    checked by parsing it back.
    """
    lines = text.splitlines()
    out: list[str] = []
    todo = {section: dict(keys) for section, keys in values.items()}
    current = ""
    for line in lines:
        match = _SECTION_RE.match(line)
        if match:
            current = match.group(1).strip()
            out.append(line)
            for key, value in list(todo.get(current, {}).items()):
                if not _has_key(lines, current, key):
                    out.append(f"{key} = {_toml_string(value)}")
                    del todo[current][key]
            continue
        key_match = re.match(
            r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(\"[^\"]*\"|'[^']*'|[^#\s]+)(.*)$", line
        )
        if key_match and key_match.group(2) in todo.get(current, {}):
            indent, key, eq, _old, rest = key_match.groups()
            out.append(f"{indent}{key}{eq}{_toml_string(todo[current].pop(key))}{rest}")
            continue
        out.append(line)
    for section, keys in todo.items():
        if keys:
            out += ["", f"[{section}]", *(f"{k} = {_toml_string(v)}" for k, v in keys.items())]
    result = "\n".join(out) + "\n"
    try:
        parsed = tomllib.loads(result)
    except tomllib.TOMLDecodeError as exc:
        raise StackError(f"the description is not valid TOML: {exc}") from None
    for section, keys in values.items():
        for key, value in keys.items():
            if parsed.get(section, {}).get(key) != value:
                raise StackError(f"could not write {section}.{key} into the description")
    return result


def _has_key(lines: list[str], section: str, key: str) -> bool:
    current = ""
    for line in lines:
        match = _SECTION_RE.match(line)
        if match:
            current = match.group(1).strip()
        elif current == section and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return True
    return False


def installed_values(
    stack: Stack, base: Path, args: argparse.Namespace
) -> dict[str, dict[str, str]]:
    """What the installed description must hold: absolute paths, the interpreter, the user."""

    def absolute(path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(base / path)

    defaults = {"data_dir": "/var/lib/kestrelq/queue", "log_dir": "/var/log/kestrelq",
                "run_dir": "/run/kestrelq"}  # fmt: skip
    paths: dict[str, str] = {}
    for key in PATH_KEYS:
        given = getattr(args, key)
        if given:
            paths[key] = os.path.abspath(given)
        elif os.path.isabs(getattr(stack, key)) or key == "app_dir":
            paths[key] = absolute(getattr(stack, key))
        else:
            paths[key] = defaults[key]  # checkout-relative (var/host/...): the host's places
    security = {key: absolute(getattr(stack, key)) for key in SECURITY_PATHS if getattr(stack, key)}
    user = args.user if args.user is not None else (stack.user or "kestrelq")
    python = args.python or (stack.python if os.path.isabs(stack.python) else sys.executable)
    values = {"paths": paths, "supervisord": {"python": python, "user": user}}
    if security:
        values["security"] = security
    return values


# -- the systemd unit ---------------------------------------------------------------------------


def stop_timeout_s(stack: Stack) -> int:
    """The programs' stop times added up, and a margin: supervisord stops them one priority
    group after another, each within its stopwaitsecs."""
    return sum(program.stopwaitsecs for program in programs(stack)) + STOP_MARGIN_S


def unit_text(stack: Stack, etc: Path, install_bin: str) -> str:
    conf = etc / "supervisord.conf"
    run_dir = stack.run_dir
    owner = f" -o {stack.user}" if stack.user else ""
    return f"""\
# Written by `kestrelq install`; run it again rather than edit this file.
[Unit]
Description=kestrelq queue server and workers (supervisord, {conf})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile={etc / SECRET_ENV}
# The run directory holds supervisord's socket and the FATAL marker; /run is emptied at boot.
ExecStartPre={install_bin} -d{owner} -m 0755 {run_dir}
ExecStart={stack.python} -m supervisor.supervisord --nodaemon --configuration {conf}
# `systemctl reload kestrelq` applies a re-rendered configuration (what changed restarts).
ExecReload={stack.python} -m supervisor.supervisorctl -c {conf} update
# SIGTERM to supervisord alone: it stops the workers (each finishes its message, within its
# stopwaitsecs), then the queue. Only what is left after TimeoutStopSec is killed.
KillMode=mixed
TimeoutStopSec={stop_timeout_s(stack)}
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


# -- the places root runs code from -------------------------------------------------------------

# Run by the interpreter to be installed, as systemd starts it (-I: no PYTHONPATH, no user
# site, no current directory): where it is and every directory it imports from.
_PROBE = """\
import json, os, sys
import kestrelq, supervisor
print(json.dumps([sys.executable, sys.prefix, *sys.path,
                  *(os.path.dirname(m.__file__) for m in (kestrelq, supervisor))]))
"""


def interpreter_paths(python: str) -> list[str]:
    """The interpreter, its prefix, its import path, and where kestrelq and supervisor are.

    StackError if it cannot be run or cannot import them: the unit would not start either.
    """
    try:
        probe = subprocess.run(
            [python, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60, env={}
        )
    except OSError as exc:
        raise StackError(f"cannot run the interpreter {python}: {exc.strerror}") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackError(f"the interpreter {python} cannot import kestrelq and supervisor "
                         f"without PYTHONPATH, as systemd would start it: {last}")  # fmt: skip
    found: list[str] = json.loads(probe.stdout)
    return [python, *found]


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _why_unsafe(path: str, st: os.stat_result, *, above: bool) -> str | None:
    """Why a user other than root could change `path` (None: only root can)."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != 0:
        return f"owned by {_name(st.st_uid)}"
    if mode & stat.S_IWGRP and st.st_gid != 0:
        return f"writable by the group {_group(st.st_gid)} (mode {mode:04o})"
    # A sticky world-writable directory above (as /tmp): others cannot rename what is in it.
    if mode & stat.S_IWOTH and not (above and mode & stat.S_ISVTX):
        return f"writable by everyone (mode {mode:04o})"
    return None


def unsafe_paths(paths: list[str]) -> list[str]:
    """`path: why` for each of `paths`, or a directory above one, that a user other than root
    could write: both as given and with its links resolved. A missing path is judged by the
    directories above it (whoever can write those can create it)."""
    found: dict[str, str] = {}
    for given in paths:
        for path in dict.fromkeys([os.path.abspath(given), os.path.realpath(given)]):
            chain = [Path(path), *Path(path).parents]
            for n, place in enumerate(chain):
                try:
                    st = os.stat(place)
                except FileNotFoundError:
                    continue
                why = _why_unsafe(str(place), st, above=n > 0)
                if why and str(place) not in found:
                    found[str(place)] = why
    return [f"{place}: {why}" for place, why in found.items()]


def check_root_owned(stack: Stack) -> None:
    """StackError naming each place a user other than root could change code run as root.

    The interpreter and the application are judged by where they are before the interpreter
    is run to ask for its import path: running it first would run, as root, the very code
    this check is there to refuse."""
    problems = unsafe_paths([stack.python, stack.app_dir])
    if not problems:
        problems = unsafe_paths([*interpreter_paths(stack.python), stack.app_dir])
    if problems:
        raise StackError(
            "supervisord runs as root with the interpreter and the application, and a user "
            "other than root can write:\n  " + "\n  ".join(problems) + "\n"
            "Install into root-owned places (docs/operations.md: a venv in /opt/kestrelq, "
            "`chown -R root:root` and `chmod -R go-w` what it names), or give --force."
        )


# -- running it ---------------------------------------------------------------------------------


def _default_description(etc: Path) -> Path:
    installed = etc / "stack.toml"
    if installed.is_file():
        return installed
    checkout = Path(__file__).resolve().parents[2] / "conf" / "stack.toml"
    if checkout.is_file():
        return checkout
    raise StackError(f"no {installed} and no checkout beside this kestrelq: give --description")


def _ensure_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--user-group", "--home-dir", "/var/lib/kestrelq", "--no-create-home",
         "--shell", "/usr/sbin/nologin", user],
        check=True,
    )  # fmt: skip
    print(f"created the system user {user}")


def _own(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    group = grp.getgrgid(entry.pw_gid).gr_gid
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, entry.pw_uid, group)


def run(args: argparse.Namespace) -> int:
    etc: Path = args.etc.resolve() if args.etc.exists() else Path(os.path.abspath(args.etc))
    try:
        source = (args.description or _default_description(etc)).resolve()
        stack = load_stack(source)
        values = installed_values(stack, source.parent, args)
        text = rewrite_description(source.read_text(), values)
        if not text.startswith(INSTALLED_MARK):
            text = (
                f"{INSTALLED_MARK} from {source}: paths, interpreter and user written in.\n" + text
            )
        stack = parse_stack(tomllib.loads(text), "stack.toml")
        rerender = f"{stack.python} -m kestrelq conf --out {etc}"
        stack = replace(stack, rerender=rerender)
        files = render_stack(stack)
        if not args.force:
            check_root_owned(stack)
    except (StackError, OSError) as exc:
        print(f"kestrelq install: {exc}", file=sys.stderr)
        return 2
    etc.mkdir(parents=True, exist_ok=True)
    if stack.user:
        _ensure_user(stack.user)
    installed = etc / "stack.toml"
    if not installed.exists() or installed.read_text() != text:
        tmp = installed.with_name("stack.toml.new")
        tmp.write_text(text)
        os.replace(tmp, installed)
        print(f"wrote {installed}")
    for rel in write_files(etc, files):
        print(f"wrote {etc / rel}")
    for key in ("data_dir", "run_dir", "log_dir"):
        path = Path(getattr(stack, key))
        path.mkdir(parents=True, exist_ok=True)
        if stack.user and key != "log_dir":  # supervisord (root) opens the logs
            _own(path, stack.user)
    secret = etc / SECRET_ENV
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{stack.http_password_env}={secrets.token_urlsafe(18)}\n")
        print(f"wrote {secret} (the status page's password, user {stack.http_username})")
    ctl = f"{stack.python} -m supervisor.supervisorctl -c {etc / 'supervisord.conf'}"
    if not args.no_unit:
        install_bin = shutil.which("install") or "/usr/bin/install"
        unit = args.unit_dir / UNIT_NAME
        unit_body = unit_text(stack, etc, install_bin)
        if not unit.exists() or unit.read_text() != unit_body:
            args.unit_dir.mkdir(parents=True, exist_ok=True)
            unit.write_text(unit_body)
            print(f"wrote {unit}")
        print("next:\n"
              "  systemctl daemon-reload && systemctl enable --now kestrelq\n"
              f"  {ctl} status")  # fmt: skip
    print(f"after editing {installed}:\n"
          f"  {rerender} && {ctl} update")  # fmt: skip
    return 0
