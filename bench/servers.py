"""Start and stop the servers under test on 127.0.0.1, each on a free port and in a temp dir.

Every server is a real process from its own package (kestrelq from this checkout, the peers
from Debian's packages, darner from a binary the caller built), started fresh for each run so
that peak RSS and CPU belong to that run alone. Readiness is a real request answered on the
port, never a sleep.

kestrelq runs in one of two builds of the same source: "pure" (this checkout) or "compiled"
(the hot path compiled with mypyc into build/compiled, as the images ship it). A server
started as one build must say so in its start-up log ("hot path: ..."), or its start fails:
a row labelled compiled that ran pure would report the pure numbers as the compiled ones.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KINDS = ("kestrelq", "memcached", "beanstalkd", "redis", "pyfloor", "darner", "darner-sync")
BUILDS = ("pure", "compiled")
# Where `make compile` (scripts/compile_hot_path.py) puts the compiled build: a whole package.
COMPILED_DIR = REPO_ROOT / "build" / "compiled"
COMPILE_SCRIPT = REPO_ROOT / "scripts" / "compile_hot_path.py"
# The start of the line kestrelq logs at start-up for each build (kestrelq/hotpath.py); a
# partly compiled build logs "hot path: partly compiled" and fails the check.
BUILD_LOG_LINES = {"pure": "hot path: pure Python", "compiled": "hot path: compiled (mypyc, "}

# What each protocol answers to a harmless request: the readiness probe.
_PROBES: dict[str, tuple[bytes, bytes]] = {
    "kestrelq": (b"version\r\n", b"VERSION "),
    "memcached": (b"version\r\n", b"VERSION "),
    "beanstalkd": (b"list-tubes\r\n", b"OK "),
    "redis": (b"PING\r\n", b"+PONG"),
    "pyfloor": (b"version\r\n", b"VERSION "),
    "darner": (b"version\r\n", b"VERSION "),
    "darner-sync": (b"version\r\n", b"VERSION "),
}


class ServerStartError(RuntimeError):
    pass


class CompileError(RuntimeError):
    pass


def kestrelq_label(fsync: str, build: str = "pure") -> str:
    """kestrelq's row label. The pure build keeps the plain label, which older results use."""
    return f"kestrelq fsync={fsync}" + (" compiled" if build == "compiled" else "")


def _package_files(root: Path) -> dict[Path, Path]:
    # What compile_hot_path.py copies: the package's files, without caches or built modules.
    return {
        p.relative_to(root): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".so")
    }


def compiled_is_current(compiled_dir: Path = COMPILED_DIR) -> bool:
    """Whether compiled_dir holds a build of this checkout's kestrelq/ as it is now.

    The compile copies the sources beside its extension modules, so a build whose copy differs
    from the checkout was made from other code (an older commit, or before an edit).
    """
    ours = _package_files(REPO_ROOT / "kestrelq")
    theirs = _package_files(compiled_dir / "kestrelq")
    if set(ours) != set(theirs) or not any(compiled_dir.glob("*__mypyc*.so")):
        return False
    return all(filecmp.cmp(ours[rel], theirs[rel], shallow=False) for rel in ours)


def build_compiled(compiled_dir: Path = COMPILED_DIR) -> None:
    """Compile kestrelq's hot path into compiled_dir, as `make compile` does."""
    proc = subprocess.run(
        [sys.executable, str(COMPILE_SCRIPT), str(compiled_dir)],
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise CompileError(f"{COMPILE_SCRIPT.name} failed: " + " / ".join(tail))


def free_port() -> int:
    """A port the kernel just gave out, so tests and benches never collide with a live stack."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def probe(kind: str, port: int, timeout_s: float = 1.0) -> bool:
    request, expected = _PROBES[kind]
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as s:
            s.sendall(request)
            reply = b""
            while len(reply) < len(expected):
                chunk = s.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            # A kestrelq that wants a login first answers, and that is all a probe asks.
            return reply.startswith(expected) or (
                kind == "kestrelq" and reply.startswith(b"CLIENT_")
            )
    except OSError:
        return False


def missing_binaries() -> list[str]:
    return [b for b in ("memcached", "beanstalkd", "redis-server") if shutil.which(b) is None]


@dataclass
class ServerSpec:
    """One server configuration: which program, and for kestrelq which fsync policy and build."""

    kind: str
    fsync: str = ""
    # kestrelq only: "pure" runs this checkout, "compiled" the package in compiled_dir.
    build: str = "pure"
    compiled_dir: Path = COMPILED_DIR
    extra_args: tuple[str, ...] = ()
    # Enough memory for the run's data: memcached evicts silently once its cache is full.
    memory_mb: int = 64
    max_item_bytes: int = 65535
    # kestrelq only: run the server under cProfile, one .prof file per server process.
    profile_dir: Path | None = None
    # darner only: its binary (--darner BIN). darner-sync is the same server; its clients
    # set `q/sync`, which darner fsyncs before STORED.
    binary: str = ""

    @property
    def stop_signal(self) -> int:
        # memcached keeps nothing on disk, and on SIGTERM waits a second for its timer threads.
        return signal.SIGKILL if self.kind == "memcached" else signal.SIGTERM

    @property
    def label(self) -> str:
        if self.kind == "kestrelq":
            return kestrelq_label(self.fsync, self.build)
        return "python floor" if self.kind == "pyfloor" else self.kind


@dataclass
class ServerProc:
    spec: ServerSpec
    port: int
    data_dir: Path
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int | None = None, timeout_s: float = 20.0) -> int:
        """Stop the process with sig (the spec's), SIGKILL after timeout_s; return its exit code."""
        if sig is None:
            sig = self.spec.stop_signal
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on signal %d; killing it", self.spec.label, sig)
                self.popen.kill()
                self.popen.wait(timeout=timeout_s)
        return self.popen.returncode

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""


def command(spec: ServerSpec, port: int, data_dir: Path) -> list[str]:
    if spec.kind == "kestrelq":
        cmd = [sys.executable]
        if spec.profile_dir is not None:
            # cProfile writes its file when the server returns from main after SIGTERM.
            name = f"kestrelq-fsync{spec.fsync or 'default'}-{spec.build}-{port}.prof"
            cmd += ["-m", "cProfile", "-o", str(spec.profile_dir / name)]
        cmd += ["-m", "kestrelq", "serve", "--host", HOST, "--port", str(port)]
        cmd += ["--data-dir", str(data_dir)]
        if spec.fsync:
            cmd += ["--fsync", spec.fsync]
        return cmd + list(spec.extra_args)
    if spec.kind == "memcached":
        cmd = ["memcached", "-l", HOST, "-p", str(port), "-U", "0", "-m", str(spec.memory_mb)]
        cmd += ["-I", f"{max(spec.max_item_bytes + 1024, 1024 * 1024)}"]
        if os.geteuid() == 0:
            # memcached refuses to run as root unless told which user to stay.
            cmd += ["-u", "root"]
        return cmd + list(spec.extra_args)
    if spec.kind == "beanstalkd":
        # The binlog on, with beanstalkd's default fsync policy (no -f/-F flag).
        cmd = ["beanstalkd", "-l", HOST, "-p", str(port), "-b", str(data_dir)]
        cmd += ["-z", str(max(spec.max_item_bytes, 65535))]
        return cmd + list(spec.extra_args)
    if spec.kind == "redis":
        # appendonly with redis' default appendfsync everysec; no RDB snapshots.
        cmd = ["redis-server", "--port", str(port), "--bind", HOST, "--save", ""]
        cmd += ["--appendonly", "yes", "--dir", str(data_dir), "--daemonize", "no"]
        return cmd + list(spec.extra_args)
    if spec.kind == "pyfloor":
        # bench/pyfloor.py: the least a Python server can do per message (see its docstring).
        cmd = [sys.executable, "-m", "bench.pyfloor", "--host", HOST, "--port", str(port)]
        return [*cmd, "--data-dir", str(data_dir), *spec.extra_args]
    if spec.kind in ("darner", "darner-sync"):
        # darner listens on every interface (it has no flag for one); the bench sends to
        # 127.0.0.1 only.
        if not spec.binary:
            raise ValueError("darner needs its binary (--darner BIN)")
        return [spec.binary, "-p", str(port), "-d", str(data_dir), *spec.extra_args]
    raise ValueError(f"unknown server kind {spec.kind!r}")


def server_home(spec: ServerSpec) -> Path:
    """The directory a server runs from and imports kestrelq from first."""
    return spec.compiled_dir if spec.kind == "kestrelq" and spec.build == "compiled" else REPO_ROOT


def server_env(spec: ServerSpec) -> dict[str, str]:
    env = dict(os.environ)
    # kestrelq runs from this checkout (or its compiled build) whether or not it is installed
    # in the interpreter, and ahead of any kestrelq that is.
    home = str(server_home(spec))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH", "")) if p)
    for key in ("KESTRELQ_HOST", "KESTRELQ_PORT", "KESTRELQ_DATA_DIR", "KESTRELQ_FSYNC"):
        # The command line decides; an exported variable from a dev shell must not.
        env.pop(key, None)
    return env


def start(
    spec: ServerSpec,
    work_dir: Path,
    *,
    port: int | None = None,
    data_dir: Path | None = None,
    ready_timeout_s: float = 30.0,
    attempts: int = 3,
) -> ServerProc:
    """Start spec's server and return once it answers on its port.

    Another process may grab the free port between our probe and the server's bind; that
    shows as an early exit, and we try again on a new port.
    """
    last_error = ""
    for attempt in range(attempts):
        p = port if port is not None else free_port()
        ddir = data_dir if data_dir is not None else work_dir / f"{spec.kind}-data-{p}"
        ddir.mkdir(parents=True, exist_ok=True)
        log_path = work_dir / f"{spec.kind}-{p}-{attempt}.log"
        with open(log_path, "wb") as logf:
            popen = subprocess.Popen(
                command(spec, p, ddir),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(server_home(spec)),
                env=server_env(spec),
            )
        proc = ServerProc(spec, p, ddir, log_path, popen)
        if wait_ready(proc, ready_timeout_s):
            check_build(proc)
            return proc
        last_error = proc.log_tail()
        proc.stop(signal.SIGKILL)
        if port is not None:
            break
    raise ServerStartError(f"{spec.label} did not become ready; log tail:\n{last_error}")


def check_build(proc: ServerProc) -> None:
    """Stop proc and raise unless a kestrelq logged that it runs the build its spec names.

    The line is logged before the server binds its port, so a ready server has written it.
    """
    spec = proc.spec
    if spec.kind != "kestrelq":
        return
    lines = proc.log_path.read_text(errors="replace").splitlines()
    said = next((line for line in lines if "hot path: " in line), "")
    if BUILD_LOG_LINES[spec.build] not in said:
        proc.stop(signal.SIGKILL)
        home = server_home(spec)
        found = "hot path: " + said.partition("hot path: ")[2] if said else "no hot path line"
        raise ServerStartError(
            f"{spec.label} started from {home} did not run the {spec.build} build: its log has "
            f"{found!r} where {BUILD_LOG_LINES[spec.build] + '...'!r} was expected"
        )


def wait_ready(proc: ServerProc, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            return False
        if probe(proc.spec.kind, proc.port):
            return True
        time.sleep(delay)  # poll interval between readiness probes, not a stand-in for them
        delay = min(delay * 2, 0.1)
    return False
