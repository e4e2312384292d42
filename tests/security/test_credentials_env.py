"""The clients' KESTRELQ_* login and TLS settings, read without a server."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from kestrelq.credentials import Credentials, refused
from kestrelq.errors import ConfigError


def test_nothing_set_is_plain_and_anonymous() -> None:
    assert Credentials.from_env({}) == Credentials()


def test_user_and_password() -> None:
    creds = Credentials.from_env({"KESTRELQ_USER": "bob", "KESTRELQ_PASSWORD": "a b:c"})
    assert creds.login == b"bob a b:c"
    assert "a b:c" not in repr(creds)
    assert creds.tls is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KESTRELQ_USER": "bob"}, "go together"),
        ({"KESTRELQ_PASSWORD": "pw"}, "go together"),
        ({"KESTRELQ_USER": "b o", "KESTRELQ_PASSWORD": "pw"}, "must not hold a space"),
        ({"KESTRELQ_PASSWORD": "x", "KESTRELQ_PASSWORD_FILE": "f"}, "not both"),
        ({"KESTRELQ_TLS_KEY": "k.pem"}, "KESTRELQ_TLS_KEY needs KESTRELQ_TLS_CERT"),
        ({"KESTRELQ_TLS_CA": "/nope/ca.pem"}, "KESTRELQ_TLS_CA /nope/ca.pem"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        Credentials.from_env(env)


def test_password_file_one_trailing_newline_dropped(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("  spaced pw \n")
    path.chmod(0o600)
    creds = Credentials.from_env({"KESTRELQ_USER": "u", "KESTRELQ_PASSWORD_FILE": str(path)})
    assert creds.password == "  spaced pw "


def test_password_file_empty_or_world_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pw"
    path.write_text("\n")
    path.chmod(0o600)
    env = {"KESTRELQ_USER": "u", "KESTRELQ_PASSWORD_FILE": str(path)}
    with pytest.raises(ConfigError, match="is empty"):
        Credentials.from_env(env)
    path.write_text("pw")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        Credentials.from_env(env)
    assert "readable by every user" in caplog.text


def test_tls_on_with_system_cas() -> None:
    creds = Credentials.from_env({"KESTRELQ_TLS": "1"})
    assert creds.tls is not None
    assert creds.tls.verify_mode == ssl.CERT_REQUIRED and creds.tls.check_hostname
    assert creds.tls.minimum_version == ssl.TLSVersion.TLSv1_2


def test_refusals_are_told_apart() -> None:
    assert refused("bad queue name", "u") is None
    assert "requires a login" in str(refused("unauthenticated", "u"))
    assert "requires a login" in str(refused("authentication failure", ""))
    assert "user 'u'" in str(refused("authentication failure", "u"))
