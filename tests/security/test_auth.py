"""Authentication and admin commands against a real server process, with raw sockets and with
pymemcache as applications use it (its defaults: noreply sets)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import USERS, SecureServer, Starter, login_bytes, start_failure
from helpers import Wire, child_env, wait_until
from pymemcache.client.base import Client as Memcache
from pymemcache.exceptions import MemcacheClientError, MemcacheUnexpectedCloseError

ALICE = ("alice", USERS["alice"])
ADMIN = ("admin", USERS["admin"])
FAILURE = b"CLIENT_ERROR authentication failure\r\n"
UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
DENIED = b"CLIENT_ERROR permission denied\r\n"


@pytest.fixture
def srv(start_server: Starter, auth_file: Path) -> SecureServer:
    return start_server("--auth-file", str(auth_file), "--admin-users", "admin", login=ADMIN)


def logged_in(srv: SecureServer, who: tuple[str, str]) -> Wire:
    w = Wire(srv.port)
    assert w.call(login_bytes(*who)) == b"STORED\r\n"
    return w


def items(srv: SecureServer, queue: str) -> int:
    with logged_in(srv, ADMIN) as w:
        reply = w.call(b"stats\r\n").decode()
    for line in reply.splitlines():
        if line.startswith(f"STAT queue_{queue}_items "):
            return int(line.split()[2])
    return 0


def test_pymemcache_logs_in_with_a_set_and_then_works(srv: SecureServer) -> None:
    mc = Memcache(("127.0.0.1", srv.port), timeout=10, connect_timeout=5)
    try:
        assert mc.set("auth", "alice wonder land", noreply=False) is True
        mc.set("jobs", b"payload")  # pymemcache's default: noreply
        assert mc.get("jobs") == b"payload"
    finally:
        mc.close()


def test_pymemcache_default_noreply_login_works(srv: SecureServer) -> None:
    mc = Memcache(("127.0.0.1", srv.port), timeout=10, connect_timeout=5)
    try:
        mc.set("auth", "alice wonder land")  # noreply: nothing comes back
        assert mc.version()
        assert mc.get("nothing") is None
    finally:
        mc.close()


def test_the_login_is_not_an_item_and_later_sets_are(srv: SecureServer) -> None:
    with logged_in(srv, ALICE) as w:
        assert items(srv, "auth") == 0
        # After the login, the same bytes are an ordinary item.
        assert w.call(login_bytes(*ALICE)) == b"STORED\r\n"
        assert w.call(b"get auth\r\n") == b"VALUE auth 0 17\r\nalice wonder land\r\nEND\r\n"


@pytest.mark.parametrize(
    "who",
    [
        pytest.param(("alice", "wrong"), id="wrong-password"),
        pytest.param(("mallory", "wonder land"), id="unknown-user"),
        pytest.param(("alice", ""), id="no-password"),
        pytest.param(("alice", "wonder"), id="password-prefix"),
    ],
)
def test_a_bad_login_is_refused_and_closed(srv: SecureServer, who: tuple[str, str]) -> None:
    with Wire(srv.port) as w:
        assert w.call(login_bytes(*who)) == FAILURE
        assert w.at_eof(10)
        assert w.buf == b""
    assert items(srv, "auth") == 0


def test_a_bad_noreply_login_closes_without_a_reply(srv: SecureServer) -> None:
    with Wire(srv.port) as w:
        w.send(login_bytes("alice", "wrong", noreply=True) + b"version\r\n")
        assert w.at_eof(10)
        assert w.buf == b""  # neither an error nor the version


def test_a_good_noreply_login_answers_nothing(srv: SecureServer) -> None:
    with Wire(srv.port) as w:
        w.send(login_bytes(*ALICE, noreply=True))
        assert w.call(b"version\r\n").startswith(b"VERSION ")


@pytest.mark.parametrize(
    "command",
    [
        b"get jobs\r\n",
        b"version\r\n",
        b"stats\r\n",
        b"flush_all\r\n",
        b"delete jobs\r\n",
        b"shutdown\r\n",
        b"get auth/open\r\n",
    ],
)
def test_any_command_before_login_is_refused_and_closed(srv: SecureServer, command: bytes) -> None:
    with logged_in(srv, ALICE) as w:
        assert w.call(b"set jobs 0 0 1\r\nx\r\n") == b"STORED\r\n"
    with Wire(srv.port) as w:
        assert w.call(command + b"version\r\n") == UNAUTHENTICATED
        assert w.at_eof(10)
    assert items(srv, "jobs") == 1  # nothing was read, flushed or deleted
    assert srv.proc is not None and srv.proc.poll() is None


def test_pymemcache_without_login_is_refused(srv: SecureServer) -> None:
    mc = Memcache(("127.0.0.1", srv.port), timeout=10, connect_timeout=5)
    try:
        with pytest.raises((MemcacheClientError, MemcacheUnexpectedCloseError)):
            mc.get("jobs")
    finally:
        mc.close()


@pytest.mark.parametrize(
    ("command", "admin_reply"),
    [
        (b"flush_all\r\n", b"Flushed all queues.\r\n"),
        (b"flush jobs\r\n", b"END\r\n"),
        (b"delete jobs\r\n", b"DELETED\r\n"),
        (b"reload\r\n", b"Reloaded config.\r\n"),
        (b"flush_all_expired\r\n", b"0\r\n"),
        (b"status\r\n", b"UP\r\n"),
        (b"status up\r\n", b"END\r\n"),
    ],
)
def test_admin_commands_need_the_admin_role(
    srv: SecureServer, command: bytes, admin_reply: bytes
) -> None:
    with logged_in(srv, ALICE) as w:
        assert w.call(b"set jobs 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert w.call(command) == DENIED
        # The connection is kept and the queue untouched.
        assert w.call(b"version\r\n").startswith(b"VERSION ")
        assert items(srv, "jobs") == 1
    with logged_in(srv, ADMIN) as w:
        assert w.call(command) == admin_reply


def test_everyday_commands_need_no_admin_role(srv: SecureServer) -> None:
    with logged_in(srv, ALICE) as w:
        assert w.call(b"set jobs 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert w.call(b"get jobs/open\r\n") == b"VALUE jobs/open 0 1\r\nx\r\nEND\r\n"
        assert w.call(b"get jobs/close\r\n") == b"END\r\n"
        assert w.call(b"flush_expired jobs\r\n") == b"0\r\n"
        assert w.call(b"stats\r\n").endswith(b"END\r\n")


def test_shutdown_is_refused_without_enable_shutdown_even_for_admins(
    srv: SecureServer,
) -> None:
    with logged_in(srv, ADMIN) as w:
        assert w.call(b"shutdown\r\n") == b"CLIENT_ERROR shutdown not enabled\r\n"
        assert w.call(b"version\r\n").startswith(b"VERSION ")
    assert srv.proc is not None and srv.proc.poll() is None


def test_shutdown_is_refused_without_enable_shutdown_with_auth_off(
    start_server: Starter,
) -> None:
    srv = start_server()
    with Wire(srv.port) as w:
        assert w.call(b"shutdown\r\n") == b"CLIENT_ERROR shutdown not enabled\r\n"
        assert w.call(b"version\r\n").startswith(b"VERSION ")


def test_enabled_shutdown_is_for_admins(start_server: Starter, auth_file: Path) -> None:
    srv = start_server("--auth-file", str(auth_file), "--admin-users", "admin",
                       "--enable-shutdown", login=ADMIN)  # fmt: skip
    with logged_in(srv, ALICE) as w:
        assert w.call(b"shutdown\r\n") == DENIED
    with logged_in(srv, ADMIN) as w:
        w.send(b"shutdown\r\n")
        assert w.at_eof(10)
    assert srv.proc is not None and srv.proc.wait(15) == 0


@pytest.mark.parametrize("how", ["reload-command", "sighup"])
def test_the_auth_file_is_reloaded_without_dropping_connections(
    srv: SecureServer, auth_file: Path, how: str
) -> None:
    before = logged_in(srv, ALICE)
    try:
        auth_file.write_text(f"admin:{USERS['admin']}\nalice:rotated\nbob:builder\n")
        if how == "sighup":
            assert srv.proc is not None
            srv.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reloaded 3 users" in srv.log(), 30, what="the reload")
        else:
            with logged_in(srv, ADMIN) as w:
                assert w.call(b"reload\r\n") == b"Reloaded config.\r\n"
        # The connection that logged in before the change keeps going.
        assert before.call(b"set jobs 0 0 1\r\nx\r\n") == b"STORED\r\n"
        with Wire(srv.port) as w:
            assert w.call(login_bytes(*ALICE)) == FAILURE  # the old password
        logged_in(srv, ("alice", "rotated")).close()
        logged_in(srv, ("bob", "builder")).close()
    finally:
        before.close()


def test_a_bad_auth_file_on_reload_keeps_the_old_users(srv: SecureServer, auth_file: Path) -> None:
    auth_file.write_text("no colon here\n")
    with logged_in(srv, ADMIN) as w:
        reply = w.call(b"reload\r\n")
    assert reply.startswith(b"SERVER_ERROR ") and str(auth_file).encode() in reply
    assert b"line 1" in reply
    logged_in(srv, ALICE).close()


def test_passwords_never_reach_the_log(srv: SecureServer) -> None:
    with Wire(srv.port) as w:
        assert w.call(login_bytes("alice", "guessed-Password-42")) == FAILURE
    logged_in(srv, ALICE).close()
    wait_until(lambda: "authentication failure" in srv.log(), 30, what="the failure logged")
    log = srv.log()
    assert "guessed-Password-42" not in log
    for password in USERS.values():
        assert password not in log


def test_raw_socket_close_after_login_costs_nothing(srv: SecureServer) -> None:
    # A client that logs in and vanishes: the next one is served as usual.
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.sendall(login_bytes(*ALICE))
    sock.close()
    logged_in(srv, ALICE).close()


# -- the auth file at start ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("", "holds no user:password line", id="empty"),
        pytest.param("\n\n", "holds no user:password line", id="blank-lines"),
        pytest.param("alice:pw\nbobpw-secret\n", "line 2: expected user:password", id="no-colon"),
        pytest.param("alice:\n", "line 1: the password is empty", id="empty-password"),
        pytest.param("a b:pw\n", "line 1: the user name is empty or holds a space", id="space"),
        pytest.param("a:x\na:y-secret\n", "line 2: user 'a' already defined on line 1", id="dup"),
    ],
)
def test_a_bad_auth_file_stops_the_start(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    path.chmod(0o600)
    code, out = start_failure(tmp_path, "--auth-file", str(path))
    assert code == 2
    assert f"auth file {path}" in out and expected in out
    assert "secret" not in out


def test_a_missing_auth_file_stops_the_start(tmp_path: Path) -> None:
    code, out = start_failure(tmp_path, "--auth-file", str(tmp_path / "nope"))
    assert code == 2
    assert f"cannot read auth file {tmp_path / 'nope'}" in out


def test_admin_users_without_an_auth_file_stops_the_start(tmp_path: Path) -> None:
    code, out = start_failure(tmp_path, "--admin-users", "admin")
    assert code == 2
    assert "admin_users is set but auth_file is not" in out


def test_a_world_readable_auth_file_is_warned_about(start_server: Starter, auth_file: Path) -> None:
    auth_file.chmod(0o644)
    srv = start_server("--auth-file", str(auth_file), login=ALICE)
    assert f"auth file {auth_file} is readable by every user" in srv.log()


def test_settings_come_from_the_environment_too(tmp_path: Path, auth_file: Path) -> None:
    srv = SecureServer(tmp_path / "data", login=ALICE)
    srv.env = {"KESTRELQ_AUTH_FILE": str(auth_file), "KESTRELQ_ADMIN_USERS": "admin"}
    srv.start()
    try:
        with Wire(srv.port) as w:
            assert w.call(b"version\r\n") == UNAUTHENTICATED
        with logged_in(srv, ALICE) as w:
            assert w.call(b"flush_all\r\n") == DENIED
        with logged_in(srv, ADMIN) as w:
            assert w.call(b"flush_all\r\n") == b"Flushed all queues.\r\n"
    finally:
        assert srv.stop() == 0


def test_a_connection_that_never_logs_in_is_closed_after_the_read_timeout(
    start_server: Starter, auth_file: Path
) -> None:
    srv = start_server("--auth-file", str(auth_file), "--read-timeout-s", "0.5", login=ALICE)
    with logged_in(srv, ALICE) as member, Wire(srv.port) as stranger:
        assert stranger.at_eof(30)  # closed by the server; no assertion on how soon
        assert stranger.buf == b""
        # The same age did not close the connection that logged in (idle timeout is off).
        assert member.call(b"version\r\n").startswith(b"VERSION ")
    wait_until(lambda: "no login in 0.5 s" in srv.log(), 30, what="the reason logged")


def test_a_big_block_before_login_is_refused_without_taking_the_budget(
    start_server: Starter, auth_file: Path
) -> None:
    # A login is a few bytes. A stranger announcing a big block must not take (or wait for)
    # the server's pending-bytes budget, which logged-in clients' big sets need.
    srv = start_server("--auth-file", str(auth_file), "--max-pending-bytes", "1000000",
                       login=ADMIN)  # fmt: skip
    strangers = [Wire(srv.port) for _ in range(3)]
    try:
        for w in strangers:
            w.send(b"set x 0 0 900000\r\n" + b"z" * 1000)
        for w in strangers:
            assert w.reply() == FAILURE
            assert w.at_eof(30)
        with logged_in(srv, ADMIN) as w:
            lines = w.call(b"stats\r\n").decode().splitlines()
        stats = dict(line.split()[1:3] for line in lines if line.startswith("STAT "))
        assert stats["pending_bytes"] == "0"
        assert stats["pending_waiters"] == "0"
    finally:
        for w in strangers:
            w.close()


def test_drain_and_undrain_log_in_as_the_environment_says(srv: SecureServer) -> None:
    def kestrelq(command: str, who: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        poll = ["--poll-s", "0.1"] if command == "drain" else []
        return subprocess.run(
            [sys.executable, "-m", "kestrelq", command, f"127.0.0.1:{srv.port}", *poll],
            capture_output=True, text=True, timeout=120, check=False,
            env=child_env(KESTRELQ_USER=who[0], KESTRELQ_PASSWORD=who[1]),
        )  # fmt: skip

    # Not an admin: refused, and the server stays UP.
    refused = kestrelq("drain", ALICE)
    assert refused.returncode == 1 and "permission denied" in refused.stderr
    with logged_in(srv, ALICE) as w:
        assert w.call(b"set jobs 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert w.call(b"get jobs\r\n") == b"VALUE jobs 0 1\r\nx\r\nEND\r\n"
    drained = kestrelq("drain", ADMIN)
    assert drained.returncode == 0, drained.stderr
    assert "drained in" in drained.stdout
    with logged_in(srv, ALICE) as w:
        assert w.call(b"set jobs 0 0 1\r\ny\r\n") == b"SERVER_ERROR server is read-only\r\n"
    assert kestrelq("undrain", ADMIN).returncode == 0
    with logged_in(srv, ALICE) as w:
        assert w.call(b"set jobs 0 0 1\r\nz\r\n") == b"STORED\r\n"
