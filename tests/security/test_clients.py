"""Every client of ours logs in and speaks TLS from the same KESTRELQ_* settings, and a refused
login is a clear error with its own exit code (77), never a retry loop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import USERS, Certs, SecureServer, Starter
from helpers import free_port

from kestrelq.client import Client
from kestrelq.credentials import EXIT_CREDENTIALS, Credentials
from kestrelq.errors import CredentialsRefused

ROOT = Path(__file__).resolve().parents[2]
ALICE = ("alice", USERS["alice"])


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KESTRELQ_")}
    return subprocess.run(
        args, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def login_env(srv: SecureServer, password: str = USERS["alice"]) -> dict[str, str]:
    return {"KESTRELQ_PORT": str(srv.port), "KESTRELQ_USER": "alice",
            "KESTRELQ_PASSWORD": password}  # fmt: skip


@pytest.fixture
def srv(start_server: Starter, auth_file: Path) -> SecureServer:
    return start_server("--auth-file", str(auth_file), login=ALICE)


def kestrelq(*args: str) -> list[str]:
    return [sys.executable, "-m", "kestrelq", *args]


def test_stats_logs_in(srv: SecureServer) -> None:
    result = run(kestrelq("stats"), login_env(srv))
    assert result.returncode == 0, result.stderr
    assert "kestrelq" in result.stdout


def test_stats_with_a_wrong_password_exits_77(srv: SecureServer) -> None:
    result = run(kestrelq("stats"), login_env(srv, "wrong"))
    assert result.returncode == EXIT_CREDENTIALS
    assert "refused the password of user 'alice'" in result.stderr
    assert "wrong" not in result.stderr


def test_peek_without_credentials_says_a_login_is_needed(srv: SecureServer) -> None:
    result = run(kestrelq("peek", "q"), {"KESTRELQ_PORT": str(srv.port)})
    assert result.returncode == EXIT_CREDENTIALS
    assert "requires a login: set KESTRELQ_USER" in result.stderr


def test_password_file(srv: SecureServer, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(USERS["alice"] + "\n")
    secret.chmod(0o600)
    env = {"KESTRELQ_PORT": str(srv.port), "KESTRELQ_USER": "alice",
           "KESTRELQ_PASSWORD_FILE": str(secret)}  # fmt: skip
    assert run(kestrelq("stats"), env).returncode == 0
    env["KESTRELQ_PASSWORD_FILE"] = str(tmp_path / "missing")
    result = run(kestrelq("stats"), env)
    assert result.returncode == 2
    assert f"cannot read KESTRELQ_PASSWORD_FILE {tmp_path / 'missing'}" in result.stderr


def _handler_dir(tmp_path: Path) -> Path:
    d = tmp_path / "handlers"
    d.mkdir()
    (d / "record.py").write_text(
        "import os\n\ndef handle(data):\n"
        "    with open(os.environ['OUT'], 'ab') as f:\n        f.write(data + b'\\n')\n"
    )
    return d


def test_work_logs_in_and_handles(srv: SecureServer, tmp_path: Path) -> None:
    with Client("127.0.0.1", srv.port, credentials=Credentials(*ALICE)) as client:
        assert client.set("jobs", b"one")
    out = tmp_path / "out"
    env = {**login_env(srv), "OUT": str(out)}
    cmd = kestrelq("work", "jobs", "--handler", "record:handle", "--burst", "--wait-ms", "100")
    result = run(cmd, env, cwd=_handler_dir(tmp_path))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"one\n"


def test_work_with_a_wrong_password_exits_instead_of_retrying(
    srv: SecureServer, tmp_path: Path
) -> None:
    # Not --burst: a worker that retried would run until the subprocess timeout.
    cmd = kestrelq("work", "jobs", "--handler", "record:handle")
    result = run(cmd, login_env(srv, "wrong"), cwd=_handler_dir(tmp_path))
    assert result.returncode == EXIT_CREDENTIALS
    assert "refused the password of user 'alice'" in result.stderr


def test_send_py_logs_in_and_is_refused_with_77(srv: SecureServer) -> None:
    ok = run([sys.executable, "app/send.py", "--queue", "jobs", "hi"], login_env(srv))
    assert ok.returncode == 0, ok.stderr
    bad = run([sys.executable, "app/send.py", "hi"], login_env(srv, "wrong"))
    assert bad.returncode == EXIT_CREDENTIALS
    assert "refused the password" in bad.stderr
    with Client("127.0.0.1", srv.port, credentials=Credentials(*ALICE)) as client:
        item = client.get("jobs")
    assert item is not None and item.data == b"hi"


def test_the_queue_healthcheck_logs_in(srv: SecureServer) -> None:
    check = [sys.executable, "images/queue/kestrelq-healthcheck"]
    assert run(check, login_env(srv)).returncode == 0
    refused = run(check, {"KESTRELQ_PORT": str(srv.port)})
    assert refused.returncode == 1
    assert "requires a login" in refused.stderr


def test_our_client_refused(srv: SecureServer) -> None:
    with pytest.raises(CredentialsRefused, match="refused the password"):
        Client("127.0.0.1", srv.port, credentials=Credentials("alice", "nope"))


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def mutual(start_server: Starter, certs: Certs, auth_file: Path) -> SecureServer:
    port = free_port()
    return start_server(
        "--tls-port", str(port), "--no-plain", "--auth-file", str(auth_file),
        "--tls-cert", certs.path("server.pem"), "--tls-key", certs.path("server.key"),
        "--tls-ca", certs.path("ca.pem"), "--tls-verify", "required",
        login=ALICE, tls=certs.client_context("client"), tls_port=port,
    )  # fmt: skip


def tls_env(srv: SecureServer, certs: Certs) -> dict[str, str]:
    return {
        "KESTRELQ_PORT": str(srv.tls_port),
        "KESTRELQ_USER": "alice",
        "KESTRELQ_PASSWORD": USERS["alice"],
        "KESTRELQ_TLS_CA": certs.path("ca.pem"),
        "KESTRELQ_TLS_CERT": certs.path("client.pem"),
        "KESTRELQ_TLS_KEY": certs.path("client.key"),
    }


def test_every_client_over_mutual_tls(mutual: SecureServer, certs: Certs, tmp_path: Path) -> None:
    env = tls_env(mutual, certs)
    assert run(kestrelq("stats"), env).returncode == 0
    sent = run([sys.executable, "app/send.py", "--queue", "jobs", "over tls"], env)
    assert sent.returncode == 0, sent.stderr
    out = tmp_path / "out"
    cmd = kestrelq("work", "jobs", "--handler", "record:handle", "--burst", "--wait-ms", "100")
    worked = run(cmd, {**env, "OUT": str(out)}, cwd=_handler_dir(tmp_path))
    assert worked.returncode == 0, worked.stderr
    assert out.read_bytes() == b"over tls\n"


def test_without_a_client_certificate_mutual_tls_refuses_our_client(
    mutual: SecureServer, certs: Certs
) -> None:
    env = tls_env(mutual, certs)
    del env["KESTRELQ_TLS_CERT"], env["KESTRELQ_TLS_KEY"]
    result = run(kestrelq("stats"), env)
    assert result.returncode == 1
    assert "kestrelq:" in result.stderr


def test_a_bad_client_certificate_setting_is_named(mutual: SecureServer, certs: Certs) -> None:
    env = {**tls_env(mutual, certs), "KESTRELQ_TLS_CERT": "/nope/client.pem"}
    result = run(kestrelq("stats"), env)
    assert result.returncode == 2
    assert "KESTRELQ_TLS_CERT /nope/client.pem" in result.stderr


def test_the_security_bench_runs_every_setup() -> None:
    result = run([sys.executable, "-m", "bench.security", "-n", "40", "-r", "1", "-c", "1"], {})
    assert result.returncode == 0, result.stderr
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| ") and "| 1 |" in line
    ]
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels == ["plain", "plain + login", "TLS", "TLS + login", "mutual TLS + login"]


def test_requeue_over_mutual_tls(mutual: SecureServer, certs: Certs) -> None:
    creds = Credentials(*ALICE, certs.client_context("client"))
    with Client("127.0.0.1", mutual.tls_port, credentials=creds) as client:
        for n in range(3):
            client.set("jobs_dead", f"dead {n}".encode())
    result = run(kestrelq("requeue", "jobs_dead", "jobs"), tls_env(mutual, certs))
    assert result.returncode == 0, result.stderr
    assert "moved 3 in all" in result.stdout
    with Client("127.0.0.1", mutual.tls_port, credentials=creds) as client:
        moved = [client.get("jobs") for _ in range(4)]
    assert [v.data if v else None for v in moved] == [b"dead 0", b"dead 1", b"dead 2", None]


def test_requeue_with_a_wrong_password_exits_77(mutual: SecureServer, certs: Certs) -> None:
    env = {**tls_env(mutual, certs), "KESTRELQ_PASSWORD": "wrong"}
    result = run(kestrelq("requeue", "jobs_dead", "jobs"), env)
    assert result.returncode == EXIT_CREDENTIALS, result.stderr
    assert "refused the password" in result.stderr
