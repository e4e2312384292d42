"""`kestrelq secrets`: what `make up` makes for the compose stack, once, with safe modes.

Real openssl, real files: the certificates must verify against the CA for the names the
containers use, the auth file must be one the server accepts, and nothing secret may be
readable by anyone but its owner.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from kestrelq.certs import STACK_USERS, openssl_cert, stack_secrets
from kestrelq.cli import main
from kestrelq.server.auth import load_users

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

SECRET = ("ca.key", "queue.key", "client.key", "users", *(f"{u}.password" for u in STACK_USERS))
PUBLIC = ("ca.pem", "queue.pem", "client.pem")


def modes(d: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}


def contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_made_once_with_owner_only_modes(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    assert main(["secrets", str(d)]) == 0
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert modes(d) == dict.fromkeys(SECRET, 0o600) | dict.fromkeys(PUBLIC, 0o644)
    first = contents(d)
    # A second `make up` keeps every file as it was.
    assert main(["secrets", str(d)]) == 0
    assert contents(d) == first


def test_certificates_verify_for_the_names_the_stack_uses(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    stack_secrets(d, days=2)
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))
    info = ssl._ssl._test_decode_cert(str(d / "queue.pem"))  # type: ignore[attr-defined]
    assert set(info["subjectAltName"]) == {
        ("DNS", "queue"),  # compose.yaml's service
        ("DNS", "queue1"),  # swarm.yaml's three servers
        ("DNS", "queue2"),
        ("DNS", "queue3"),
        ("DNS", "localhost"),
        ("IP Address", "127.0.0.1"),
    }


def test_a_queue_certificate_missing_a_name_is_made_again(tmp_path: Path) -> None:
    """One made before the swarm's names existed would fail TLS for queue1..3: replaced."""
    d = tmp_path / "secrets"
    stack_secrets(d, days=2)
    (d / "queue.pem").unlink()
    openssl_cert(d, "queue", "queue", "ca", "serverAuth", names=("DNS:queue", "DNS:localhost"))
    (d / "ca.srl").unlink()  # the serial file openssl leaves; stack_secrets removes its own
    before = contents(d)
    assert stack_secrets(d, days=2) == ["queue.pem"]
    after = contents(d)
    assert after["queue.pem"] != before["queue.pem"]
    assert {k: v for k, v in after.items() if k not in ("queue.pem", "queue.key")} == {
        k: v for k, v in before.items() if k not in ("queue.pem", "queue.key")
    }
    info = ssl._ssl._test_decode_cert(str(d / "queue.pem"))  # type: ignore[attr-defined]
    assert ("DNS", "queue3") in info["subjectAltName"]
    assert stack_secrets(d, days=2) == []


def test_auth_file_holds_each_user_with_its_password_file(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    stack_secrets(d, days=2)
    users = load_users(str(d / "users"))
    assert set(users) == set(STACK_USERS)
    for user in STACK_USERS:
        password = (d / f"{user}.password").read_text().strip()
        assert len(password) >= 24
        assert users[user] == password.encode()
    assert len({(d / f"{u}.password").read_text() for u in STACK_USERS}) == len(STACK_USERS)


def test_a_deleted_certificate_is_made_again_and_the_rest_kept(tmp_path: Path) -> None:
    """Rotating the queue's certificate: delete it, run again; the CA and passwords stay."""
    d = tmp_path / "secrets"
    stack_secrets(d, days=2)
    before = contents(d)
    (d / "queue.pem").unlink()
    (d / "queue.key").unlink()
    assert stack_secrets(d, days=2) == ["queue.pem"]
    after = contents(d)
    assert after["queue.pem"] != before["queue.pem"]
    assert after["queue.key"] != before["queue.key"]
    unchanged = set(before) - {"queue.pem", "queue.key"}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert modes(d)["queue.key"] == 0o600


def test_a_new_password_file_reaches_the_auth_file(tmp_path: Path) -> None:
    """Rotating a password: delete its file, run again; the auth file has the new one."""
    d = tmp_path / "secrets"
    stack_secrets(d, days=2)
    old = (d / "app.password").read_text().strip()
    (d / "app.password").unlink()
    stack_secrets(d, days=2)
    new = (d / "app.password").read_text().strip()
    assert new != old and load_users(str(d / "users"))["app"] == new.encode()
    assert modes(d)["users"] == 0o600


def test_make_secrets_runs_from_the_checkout_without_the_venv(tmp_path: Path) -> None:
    """`make up` runs `python3 -m kestrelq.certs` with the checkout on PYTHONPATH: a host
    with python3 and openssl, and no development environment, can start the stack."""
    d = tmp_path / "secrets"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    python3 = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
    first = subprocess.run([python3, "-m", "kestrelq.certs", str(d)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "made ca.pem" in first.stdout and (d / "users").exists()
    again = subprocess.run([python3, "-m", "kestrelq.certs", str(d)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and "kept as it was" in again.stdout, again
