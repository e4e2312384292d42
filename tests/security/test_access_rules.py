"""The access rules without a server: Access.check is the whole decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrelq.errors import (
    AccessDenied,
    AuthenticationFailed,
    ConfigError,
    ShutdownDisabled,
    Unauthenticated,
)
from kestrelq.protocol import commands as c
from kestrelq.server.auth import ADMIN_COMMANDS, Access, parse_admin_users, parse_users
from kestrelq.server.connection import error_reply
from kestrelq.server.tls import TlsFiles, build_context

ON = Access({"alice": b"pw one", "root": b"r"}, frozenset({"root"}))
ADMIN = [
    c.FlushAll(),
    c.Flush("q"),
    c.Delete("q"),
    c.Reload(),
    c.FlushAllExpired(),
    c.Shutdown(),
    c.GetStatus(),
    c.SetStatus(c.ServerStatus.READONLY),
]


def test_the_login_set_names_the_user() -> None:
    assert ON.check(None, c.Set("any", 0, 0, b"alice pw one")) == "alice"


@pytest.mark.parametrize(
    "data", [b"alice pw", b"alice pw one ", b"alice", b"", b"bob pw one", b"alice  pw one"]
)
def test_a_wrong_login_fails(data: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        ON.check(None, c.Set("auth", 0, 0, data))


@pytest.mark.parametrize("cmd", [c.Version(), c.Stats(), c.Quit(), *ADMIN])
def test_nothing_but_a_set_before_login(cmd: c.Command) -> None:
    with pytest.raises(Unauthenticated):
        ON.check(None, cmd)


@pytest.mark.parametrize("cmd", ADMIN)
def test_admin_commands_need_an_admin(cmd: c.Command) -> None:
    assert isinstance(cmd, ADMIN_COMMANDS)
    with pytest.raises(AccessDenied) as info:
        ON.check("alice", cmd)
    assert error_reply(info.value) == (b"CLIENT_ERROR permission denied\r\n", False)


def test_shutdown_needs_enable_shutdown_even_for_admins_and_without_auth() -> None:
    for access, user in ((ON, "root"), (Access(), None)):
        with pytest.raises(ShutdownDisabled):
            access.check(user, c.Shutdown())
    assert Access(enable_shutdown=True).check(None, c.Shutdown()) is None


def test_the_wire_words_and_closes() -> None:
    assert error_reply(Unauthenticated()) == (b"CLIENT_ERROR unauthenticated\r\n", True)
    assert error_reply(AuthenticationFailed()) == (
        b"CLIENT_ERROR authentication failure\r\n",
        True,
    )
    assert error_reply(ShutdownDisabled()) == (b"CLIENT_ERROR shutdown not enabled\r\n", False)


def test_auth_off_lets_everything_but_shutdown_through() -> None:
    off = Access()
    for cmd in (c.Version(), c.FlushAll(), c.Set("q", 0, 0, b"x")):
        assert off.check(None, cmd) is None


def test_parse_users_keeps_colons_and_spaces_in_passwords() -> None:
    users = parse_users("a:b:c d\r\n\nroot:x\n", "f")
    assert users == {"a": b"b:c d", "root": b"x"}
    assert parse_admin_users(" a, ,b ") == {"a", "b"}


def test_parse_errors_never_quote_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_users("alice:ok\nsecretsecret\n", "/etc/users")
    assert "secretsecret" not in str(info.value)
    assert str(info.value) == "auth file /etc/users, line 2: expected user:password"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (TlsFiles("/nope/cert.pem"), "cannot read TLS certificate /nope/cert.pem"),
        (TlsFiles(""), "a TLS listener needs tls_cert"),
        (TlsFiles("c", verify="required"), "tls_verify required needs tls_ca"),
        (TlsFiles("c", verify="maybe"), "tls_verify must be none, optional or required"),
    ],
)
def test_tls_settings_errors_name_the_problem(files: TlsFiles, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build_context(files)


def test_the_server_leaves_the_clients_tls_variables_alone() -> None:
    from kestrelq.server import config

    env = {
        "KESTRELQ_TLS_CERT": "client.pem",
        "KESTRELQ_TLS_CA": "ca.pem",
        "KESTRELQ_SERVER_TLS_CERT": "server.pem",
        "KESTRELQ_SERVER_TLS_KEY": "server.key",
        "KESTRELQ_TLS_PORT": "22134",
        "KESTRELQ_AUTH_FILE": "users",
        "KESTRELQ_ADMIN_USERS": "a,b",
        "KESTRELQ_ENABLE_SHUTDOWN": "1",
        "KESTRELQ_PLAIN": "0",
    }
    cfg = config.load({}, env)
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_ca) == ("server.pem", "server.key", "")
    assert (cfg.tls_port, cfg.auth_file, cfg.admin_users) == (22134, "users", "a,b")
    assert cfg.enable_shutdown and not cfg.plain


def test_admin_users_as_a_toml_list(tmp_path: Path) -> None:
    from kestrelq.server import config

    path = tmp_path / "k.toml"
    path.write_text('[server]\nadmin_users = ["ops", "deploy"]\nauth_file = "u"\n')
    cfg = config.load({"config_file": str(path)}, {})
    assert parse_admin_users(cfg.admin_users) == {"ops", "deploy"}
