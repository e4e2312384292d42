"""`kestrelq install` on a Debian host whose init is systemd, in a container.

As an operator would: `kestrelq install`, `systemctl enable --now kestrelq`; a task that is
running during `systemctl stop` finishes and is not run again; a re-render with a new pool
size is applied by `systemctl reload` (supervisorctl update). The image starts from the project
images' shared stage, so only systemd is added on top of layers CI builds anyway.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"kestrelq-test-hosts-{uuid.uuid4().hex[:8]}"
# What works here for systemd as a container's init (no --privileged).
RUN_FLAGS = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "apparmor=unconfined", "--security-opt", "seccomp=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns", "host",
]  # fmt: skip
CTL = "python3 -m supervisor.supervisorctl -c /etc/kestrelq/supervisord.conf"
HANDLED = "/var/lib/kestrelq/handled.log"


def docker(*args: str, timeout: float = 600, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done.stdout


class Host:
    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        return docker("exec", self.name, "sh", "-c", script, check=check, timeout=timeout)

    def py(self, code: str) -> str:
        return docker("exec", self.name, "python3", "-c", code, timeout=120)

    def answers(self) -> bool:
        done = subprocess.run(
            ["docker", "exec", self.name, "python3", "-c",
             "from kestrelq.client import Client; Client('127.0.0.1', 22133).version()"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return done.returncode == 0

    def handled(self, event: str, msg_id: str) -> int:
        lines = self.sh(f"cat {HANDLED} 2>/dev/null || true").splitlines()
        return sum(1 for line in lines if line.split()[:2] == [event, msg_id])

    def queue(self, name: str) -> tuple[int, int]:
        out = self.py(
            "from kestrelq.client import Client\n"
            f"s = Client('127.0.0.1', 22133).dump_stats({name!r}).get({name!r}, {{}})\n"
            "print(s.get('items', 0), s.get('open_transactions', 0))"
        )
        items, reads = out.split()
        return int(items), int(reads)

    def running_workers(self) -> int:
        out = self.sh(f"{CTL} status || true")
        return sum(
            1 for line in out.splitlines() if line.startswith("work_worker") and "RUNNING" in line
        )


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    base, image = f"{PREFIX}-base", f"{PREFIX}-systemd"
    try:
        docker("build", "-q", "-f", str(REPO / "images/Dockerfile"), "--target", "base",
               "-t", base, str(REPO), timeout=900)  # fmt: skip
        docker("build", "-q", "-f", str(REPO / "tests/hosts/Dockerfile"), "--build-arg",
               f"BASE={base}", "-t", image, str(REPO / "tests/hosts"), timeout=900)  # fmt: skip
        docker("run", "-d", "--name", PREFIX, "--hostname", "kestrelq-host", *RUN_FLAGS, image)
        h = Host(PREFIX)
        wait_until(lambda: h.sh("systemctl is-system-running || true").strip()
                   in ("running", "degraded"), 120, interval_s=0.5, what="systemd up")  # fmt: skip
        yield h
    finally:
        docker("rm", "-f", "-v", PREFIX, check=False)
        docker("rmi", image, base, check=False)


def test_install_start_stop_mid_task_and_a_new_pool_size(host: Host) -> None:
    out = host.sh("python3 -m kestrelq install 2>&1")
    assert (
        "wrote /etc/kestrelq/stack.toml" in out
        and "wrote /etc/systemd/system/kestrelq.service" in out
    )
    unit = host.sh("cat /etc/systemd/system/kestrelq.service")
    assert "KillMode=mixed" in unit
    # The handled log: where the workers say which task started and finished (the operator's
    # environment file is where a setting for every program goes).
    host.sh(f"echo KESTRELQ_HANDLED_LOG={HANDLED} >> /etc/kestrelq/secret.env")
    # Every command as the README gives it.
    host.sh("systemctl daemon-reload && systemctl enable --now kestrelq")
    wait_until(lambda: host.running_workers() == 4, 120, interval_s=0.5, what="4 workers")
    wait_until(host.answers, 120, interval_s=0.5, what="the queue answers")
    assert host.sh("stat -c %U /var/lib/kestrelq/queue").strip() == "kestrelq"
    assert "user=kestrelq" in host.sh("cat /etc/kestrelq/supervisord.d/work_worker.ini")

    # A task in progress during `systemctl stop` finishes, and is not run again.
    body = json.dumps({"task": "sleep", "args": {"seconds": 6}, "id": "slow-1"})
    send = "from kestrelq.client import Client\nClient('127.0.0.1', 22133).set('work', %r)"
    host.py(send % body.encode())
    wait_until(lambda: host.handled("start", "slow-1") == 1, 120, interval_s=0.2,
               what="the slow task started")  # fmt: skip
    host.sh("systemctl stop kestrelq", timeout=300)
    assert host.handled("done", "slow-1") == 1, host.sh(f"cat {HANDLED}")
    logs = host.sh("cat /var/log/kestrelq/work_worker_*.log")
    assert logs.count("stopped (warm)") == 4 and "stopped (cold)" not in logs, logs
    host.sh("systemctl start kestrelq")
    wait_until(host.answers, 120, interval_s=0.5, what="the queue answers again")
    assert host.queue("work") == (0, 0)  # confirmed before the stop: nothing to run again
    wait_until(lambda: host.running_workers() == 4, 120, interval_s=0.5, what="4 workers again")
    assert host.handled("start", "slow-1") == 1

    # A new pool size: edit the installed description, render it again with the command the
    # install printed (no flags: the description holds the paths, python and user), reload.
    host.sh("sed -i 's/^workers = 4/workers = 2/' /etc/kestrelq/stack.toml")
    check = host.sh("python3 -m kestrelq conf --out /etc/kestrelq --check 2>&1", check=False)
    assert "python3 -m kestrelq conf --out /etc/kestrelq" in check and "make conf" not in check
    host.sh("python3 -m kestrelq conf --out /etc/kestrelq && systemctl reload kestrelq")
    wait_until(lambda: host.running_workers() == 2, 120, interval_s=0.5, what="2 workers")
    assert "user=kestrelq" in host.sh("cat /etc/kestrelq/supervisord.d/work_worker.ini")
    assert "/var/lib/kestrelq/queue" in host.sh("cat /etc/kestrelq/supervisord.d/queue.ini")
    host.sh("systemctl stop kestrelq", timeout=300)
