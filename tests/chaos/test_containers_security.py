"""The compose stack is secure by default: TLS, mutual TLS and logins inside its network.

A container started on the stack's network with nothing of the stack's (no CA, no client
certificate, no password) is refused, however it asks; the app container, with the settings
compose gives it, works with no extra argument. Every service runs as the images' user with no
capabilities, no privilege gain and a read-only root file system, and the files `make up`
made are readable by their owner only.
"""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
from compose_stack import IMAGE_UID, Stack

from kestrelq.certs import STACK_USERS
from kestrelq.credentials import EXIT_CREDENTIALS

pytestmark = [pytest.mark.chaos, pytest.mark.docker, pytest.mark.timeout(900)]

SERVICES = ("queue", "worker", "app", "dashboard")

# Run in a stranger's container on the stack's network: each way of asking, what came back.
STRANGER = r"""
import json, socket, ssl, sys

def ask(wrap=None, login=None):
    try:
        sock = socket.create_connection(("queue", 22133), timeout=10)
        if wrap is not None:
            sock = wrap.wrap_socket(sock, server_hostname="queue")
        if login is not None:
            sock.sendall(b"set auth 0 0 %d\r\n%s\r\n" % (len(login), login))
        sock.sendall(b"version\r\n")
        data = b""
        # The login's reply, then version's; a refusal closes after its one line.
        while data.count(b"\r\n") < (1 if login is None else 2):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return " | ".join(data.decode(errors="replace").split("\r\n")).strip(" |") or "closed"
    except (OSError, ssl.SSLError) as exc:
        return "error " + type(exc).__name__

trust_any = ssl.create_default_context()
trust_any.check_hostname = False
trust_any.verify_mode = ssl.CERT_NONE
with_cert = ssl.create_default_context(cafile="/s/ca.pem")
with_cert.load_cert_chain("/s/client.pem", "/s/client.key")
print(json.dumps({
    "plain": ask(),
    "tls without a client certificate": ask(trust_any),
    "client certificate, no login": ask(with_cert),
    "client certificate, wrong password": ask(with_cert, b"app not-the-password"),
    "client certificate and login": ask(with_cert, sys.argv[1].encode()),
}))
"""


def stranger(stack: Stack, login: str) -> dict[str, str]:
    """Run STRANGER in a fresh container of the app image on the stack's network.

    It gets the CA and the client certificate by a bind mount, to show that even with them a
    login is still wanted; without the mount it could not even try the TLS ones.
    """
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", f"{stack.project}_default",
         "--user", str(IMAGE_UID), "--cap-drop", "ALL",
         "-v", f"{stack.secrets_dir / 'ca.pem'}:/s/ca.pem:ro",
         "-v", f"{stack.secrets_dir / 'client.pem'}:/s/client.pem:ro",
         "-v", f"{stack.secrets_dir / 'client.key'}:/s/client.key:ro",
         f"kestrelq-app:{stack.image_tag}", "python3", "-c", STRANGER, login],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answers: dict[str, str] = json.loads(out.stdout)
    return answers


def test_a_container_without_credentials_is_refused(stack: Stack) -> None:
    password = (stack.secrets_dir / "app.password").read_text().strip()
    answers = stranger(stack, f"app {password}")
    # The plain text protocol reaches no listener that speaks it: the TLS one closes.
    assert not answers["plain"].startswith("VERSION"), answers
    # Mutual TLS: no client certificate, no handshake.
    assert answers["tls without a client certificate"].startswith(("error", "closed")), answers
    assert answers["client certificate, no login"] == "CLIENT_ERROR unauthenticated", answers
    wrong = answers["client certificate, wrong password"]
    assert wrong == "CLIENT_ERROR authentication failure", answers
    # The same container with the app's password gets in: the refusals above were the
    # credentials, not the network.
    stored, version = answers["client certificate and login"].split(" | ")
    assert stored == "STORED" and version.startswith("VERSION "), answers


def test_the_app_sends_with_no_argument_and_a_wrong_password_exits(stack: Stack) -> None:
    sent = stack.exec("app", "python", "send.py", "hello from the secured stack")
    assert "STORED" in sent, sent
    wrong = stack.run(
        "exec", "-T", "-e", "KESTRELQ_PASSWORD_FILE=", "-e", "KESTRELQ_PASSWORD=wrong",
        "app", "python", "send.py", "never stored", check=False,
    )  # fmt: skip
    assert wrong.returncode == EXIT_CREDENTIALS, (wrong.stdout, wrong.stderr)
    assert "STORED" not in wrong.stdout


def test_the_queue_healthcheck_logs_in_over_tls(stack: Stack) -> None:
    ok = stack.run("exec", "-T", "queue", "kestrelq-healthcheck", check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("VERSION "), ok
    # Without the login the same check is refused: the health it reports includes the login.
    refused = stack.run(
        "exec", "-T", "-e", "KESTRELQ_USER=", "-e", "KESTRELQ_PASSWORD_FILE=",
        "queue", "kestrelq-healthcheck", check=False,
    )  # fmt: skip
    assert refused.returncode != 0, refused


@pytest.mark.parametrize("service", SERVICES)
def test_containers_run_unprivileged_on_a_read_only_root(stack: Stack, service: str) -> None:
    config = json.loads(stack.inspect(service, "{{json .HostConfig}}"))
    assert config["CapDrop"] in (["ALL"], ["all"]), config["CapDrop"]
    assert not config["CapAdd"], config["CapAdd"]
    assert "no-new-privileges:true" in config["SecurityOpt"], config["SecurityOpt"]
    assert config["ReadonlyRootfs"] is True
    assert config["Privileged"] is False
    assert stack.exec(service, "id", "-u").strip() == str(IMAGE_UID)
    # The status line of the process itself: no capability in any set, no privilege gain.
    status = stack.exec(service, "cat", "/proc/1/status")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap].strip(), 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"].strip() == "1"
    written = stack.run("exec", "-T", service, "touch", "/var/lib/kestrelq/x", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr, written


def test_secrets_are_mounted_not_baked_and_keys_are_owner_only(stack: Stack) -> None:
    d = stack.secrets_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for path in d.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        secret = path.suffix in (".key", ".password") or path.name == "users"
        assert mode == (0o600 if secret else 0o644), (path.name, oct(mode))
    assert {f"{u}.password" for u in STACK_USERS} <= {p.name for p in d.iterdir()}
    # In the container: a read-only mount from the host, not a file of the image.
    mounts = stack.exec("queue", "cat", "/proc/self/mounts")
    assert " /run/secrets/queue.key " in mounts and " /run/secrets/users " in mounts
    listing = stack.exec("queue", "ls", "-ln", "/run/secrets/queue.key")
    assert listing.startswith("-rw-------") and f" {IMAGE_UID} " in listing, listing
    # The CA's key never leaves the host.
    assert "ca.key" not in stack.exec("queue", "ls", "/run/secrets")
    # The images themselves hold no key: a container from the image alone has none.
    image = f"kestrelq-queue:{stack.image_tag}"
    found = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
         "ls /run/secrets 2>/dev/null; "
         "find /opt /etc /var/lib/kestrelq /run \\( -name '*.key' -o -name '*.password' \\) "
         "-print 2>/dev/null"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert found.stdout.strip() == "", found.stdout
