"""Certificates and passwords made with the `openssl` command (the package has no crypto library).

`make up` runs `kestrelq secrets var/secrets` before the stack starts: a small CA, the queue
server's certificate for the name the workers use (`queue`, plus localhost and 127.0.0.1 for
its own healthcheck and the port published on the host), one client certificate, passwords for
a worker, an app and an admin user, and the server's auth file. Only what is missing is made,
so a second run keeps every file, and deleting one file (a certificate to rotate) makes just
that one again, signed by the same CA. The tests and the bench make their throwaway
certificates with the same two functions.

Keys, passwords and the auth file are written 0600 (umask 077 while they are made): the
server warns about a world-readable auth file, and a key readable by others is a key shared.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from kestrelq.errors import ConfigError

# The users the compose stack logs in as; `admin` alone may flush, delete and reload.
STACK_USERS = ("worker", "app", "admin")
STACK_ADMINS = ("admin",)
# The names the queue server's certificate is good for: the compose service name the workers
# and the app connect to, the swarm stack's three servers (swarm.yaml), and the container's
# own loopback (its healthcheck, the host port).
QUEUE_NAMES = (
    "DNS:queue",
    "DNS:queue1",
    "DNS:queue2",
    "DNS:queue3",
    "DNS:localhost",
    "IP:127.0.0.1",
)
# Keys and secrets: owner only. Certificates and the CA certificate are public.
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def openssl_ca(d: Path, name: str, days: int = 2, cn: str = "") -> None:
    """A self-signed CA: d/name.pem and d/name.key."""
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", str(days),
             "-subj", f"/CN={cn or 'kestrelq test ' + name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip


def openssl_cert(
    d: Path,
    name: str,
    cn: str,
    ca: str,
    usage: str,
    days: int = 2,
    names: tuple[str, ...] = ("DNS:localhost", "IP:127.0.0.1"),
) -> None:
    """d/name.pem and d/name.key signed by d/ca; usage serverAuth|clientAuth; SANs `names`."""
    _openssl(d, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}")  # fmt: skip
    (d / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        f"subjectAltName={','.join(names)}\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days),
             "-extfile", f"{name}.ext")  # fmt: skip
    (d / f"{name}.csr").unlink()
    (d / f"{name}.ext").unlink()


def _openssl(d: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        raise ConfigError("the openssl command is needed to make certificates")
    old = os.umask(0o077)
    try:
        result = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
    finally:
        os.umask(old)
    if result.returncode != 0:
        raise ConfigError(f"openssl {args[0]} in {d} failed: {result.stderr.strip()[-500:]}")


def _cert_names(cert: Path) -> set[str]:
    """The subject alternative names of a certificate, written as in QUEUE_NAMES."""
    if shutil.which("openssl") is None:
        raise ConfigError("the openssl command is needed to read certificates")
    result = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
    )
    # "X509v3 Subject Alternative Name: \n    DNS:queue, IP Address:127.0.0.1"
    lines = result.stdout.splitlines()[1:] if result.returncode == 0 else []
    names = ",".join(lines).replace("IP Address:", "IP:")
    return {name.strip() for name in names.split(",") if name.strip()}


def _write_secret(path: Path, text: str) -> None:
    """Created 0600 from the start (O_EXCL: an existing file is never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def stack_secrets(d: Path, days: int = 825) -> list[str]:
    """Make what the compose stack needs in `d`, keeping what is there; the names made."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    made: list[str] = []
    if not (d / "ca.pem").exists() or not (d / "ca.key").exists():
        openssl_ca(d, "ca", days=days, cn="kestrelq stack CA")
        made.append("ca.pem")
        # A new CA invalidates every certificate it did not sign.
        for stale in ("queue", "client"):
            for suffix in (".pem", ".key"):
                (d / f"{stale}{suffix}").unlink(missing_ok=True)
    # A queue certificate made before a name was added to QUEUE_NAMES (the swarm's servers)
    # would fail TLS for that name: it is made again, signed by the same CA.
    if (d / "queue.pem").exists() and not set(QUEUE_NAMES) <= _cert_names(d / "queue.pem"):
        (d / "queue.pem").unlink()
    for name, cn, usage, names in (
        ("queue", "queue", "serverAuth", QUEUE_NAMES),
        ("client", "kestrelq-client", "clientAuth", ()),
    ):
        if not (d / f"{name}.pem").exists() or not (d / f"{name}.key").exists():
            openssl_cert(d, name, cn, "ca", usage, days=days, names=names or (f"DNS:{cn}",))
            made.append(f"{name}.pem")
    (d / "ca.srl").unlink(missing_ok=True)
    new_password = False
    for user in STACK_USERS:
        path = d / f"{user}.password"
        if not path.exists():
            _write_secret(path, secrets.token_urlsafe(24) + "\n")
            made.append(path.name)
            new_password = True
    users = d / "users"
    if new_password or not users.exists():
        # Rewritten from the password files, so a password changed there reaches the server.
        lines = [f"{u}:{(d / f'{u}.password').read_text().strip()}\n" for u in STACK_USERS]
        tmp = d / "users.new"
        tmp.unlink(missing_ok=True)
        _write_secret(tmp, "".join(lines))
        tmp.replace(users)
        made.append("users")
    for path in d.iterdir():
        secret = path.suffix in (".key", ".password") or path.name == "users"
        mode = SECRET_MODE if secret else PUBLIC_MODE
        # Only when wrong: files already given to the containers' user are not ours to chmod.
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    return made


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _arguments(
        subparsers.add_parser(
            "secrets",
            help="make the compose stack's CA, certificates, passwords and auth file (once)",
            description=stack_secrets.__doc__,
        )
    )


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="where to keep them (var/secrets for `make up`)")
    p.add_argument("--days", type=int, default=825, help="certificate lifetime (825)")
    p.add_argument(
        "--owner",
        default="",
        metavar="UID:GID",
        help="chown what the containers read to this user (the images' kestrelq is 10001:10001)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        made = stack_secrets(args.dir, args.days)
        if args.owner:
            uid, _, gid = args.owner.partition(":")
            for path in args.dir.iterdir():
                if path.name not in ("ca.key",):
                    os.chown(path, int(uid), int(gid or uid))
    except (ConfigError, OSError, ValueError) as exc:
        print(f"kestrelq secrets: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dir}: made {', '.join(made)}" if made else f"{args.dir}: kept as it was")
    return 0


if __name__ == "__main__":
    # `python3 -m kestrelq.certs DIR` from a checkout: what `make up` runs, so that starting
    # the containers needs only python3 and openssl on the host, not the development venv.
    parser = argparse.ArgumentParser(prog="python3 -m kestrelq.certs")
    _arguments(parser)
    sys.exit(_run(parser.parse_args()))
