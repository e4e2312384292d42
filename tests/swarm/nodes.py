"""A real swarm of three nodes on one machine, with the stack of swarm.yaml deployed on it.

Each node is a Docker-in-Docker container (images/node/Dockerfile) running its own engine;
the three join one swarm over a bridge network made for the run. The flags that work here
(no --privileged: one capability is not available; the host's cgroups mounted read-write;
/var/lib/docker on a named volume, so a killed node comes back with its images and volumes)
are those of /work/shared/docs/containers-here.md's "A swarm of several nodes on one machine".

- node1 is the only manager: it holds the swarm's state, so the chaos test kills node3, which
  holds queue3 and a worker, never the control plane.
- The inner engines have no registry: the queue and worker images are built on this machine
  and loaded into each node (`docker save | docker exec -i NODE docker load`).
- Clients (the producers, `kestrelq stats`, `kestrelq drain`) run as one-off containers on
  node1, attached to the stack's overlay network; they read the test's secrets from a copy
  on node1.
- Handled messages are read from the demo task's record ($KESTRELQ_HANDLED_LOG: one `done
  <id>` line per message, written with one write() before the handler returns, so before the
  worker confirms it) on a volume of each node. Not from the containers' logs: a line still on
  its way to the node's engine when the node is killed is lost with it, while the message was
  handled and confirmed.

Everything the run makes is named `<prefix>-...` (containers, volumes, network, images) and
removed by name in `destroy()`, whatever happened before.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from chaos.compose_stack import Producer
from helpers import wait_until

from kestrelq.certs import stack_secrets

REPO = Path(__file__).resolve().parents[2]
PRODUCER = REPO / "tests" / "producer.py"
STACK = "kestrelq"
SERVERS = ("queue1", "queue2", "queue3")
NODES = 3
# Where the workers record what they handled (app/tasks.py, KESTRELQ_HANDLED_LOG): a volume
# on each node, mounted over a directory the image gives its user, so the volume is theirs.
HANDLED_VOLUME = "kestrelq-handled"
HANDLED_DIR = "/var/lib/kestrelq/uploads"
NODE_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "apparmor=unconfined", "--security-opt", "seccomp=unconfined",
    "--tmpfs", "/run", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--cgroupns", "host",
)  # fmt: skip
# Where node1 keeps the stack file and the secrets it deploys.
NODE_STACK_DIR = "/stack"
CLIENT_ENV = {
    "KESTRELQ_TLS_CA": "/run/secrets/ca.pem",
    "KESTRELQ_TLS_CERT": "/run/secrets/client.pem",
    "KESTRELQ_TLS_KEY": "/run/secrets/client.key",
}


def docker(
    *args: str, timeout_s: float = 300, check: bool = True, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The docker command line on this machine's engine; a failure shows its output."""
    result = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, timeout=timeout_s, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)[:200]} exited {result.returncode}:\n"
            f"{result.stdout.decode(errors='replace')[-2000:]}\n"
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return result


@dataclass
class Swarm:
    """Three nodes, one swarm, the stack deployed; `destroy()` removes all of it by name."""

    prefix: str
    secrets_dir: Path
    timings: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def new(cls, secrets_dir: Path) -> Swarm:
        return cls(f"kestrelq-swarm-{secrets.token_hex(3)}", secrets_dir)

    @property
    def nodes(self) -> list[str]:
        return [f"{self.prefix}-node{i}" for i in range(1, NODES + 1)]

    @property
    def network(self) -> str:
        return f"{self.prefix}-net"

    @property
    def images(self) -> list[str]:
        return [f"kestrelq-{target}:{self.prefix}" for target in ("queue", "worker")]

    @property
    def node_image(self) -> str:
        return f"kestrelq-node:{self.prefix}"

    # ---- making it -------------------------------------------------------------------------
    def create(self) -> None:
        start = time.monotonic()
        docker("build", "-q", "-f", "images/node/Dockerfile", "-t", self.node_image,
               "images/node", timeout_s=900)  # fmt: skip
        for image in self.images:
            target = image.split(":")[0].removeprefix("kestrelq-")
            docker("build", "-q", "-f", str(REPO / "images/Dockerfile"), "--target", target,
                   "-t", image, str(REPO), timeout_s=900)  # fmt: skip
        self._lap("node, queue and worker images built", start)
        docker("network", "create", self.network)
        for i, node in enumerate(self.nodes, 1):
            self.run_node(node, f"node{i}")
        for node in self.nodes:
            wait_until(partial(self.engine_answers, node), 120, what=f"the engine of {node}")
        self._lap("three node engines answer", start)
        self._join()
        self._load_images()
        self._lap("images loaded into each node", start)
        self._deploy()
        self.wait_running()
        self._record_handled()
        self._spread_workers()
        self._lap("stack deployed, every service running", start)

    def run_node(self, node: str, hostname: str) -> None:
        docker("run", "-d", "--name", node, *NODE_FLAGS, "-v", f"{node}-docker:/var/lib/docker",
               "--network", self.network, "--hostname", hostname, self.node_image)  # fmt: skip

    def engine_answers(self, node: str) -> bool:
        return self.on(node, "info", check=False, timeout_s=30).returncode == 0

    def _join(self) -> None:
        manager = self.nodes[0]
        template = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        address = docker("inspect", "-f", template, manager).stdout.decode().strip()
        # History kept per task slot: the killed node's old worker containers (their logs).
        self.on(manager, "swarm", "init", "--advertise-addr", address, "--task-history-limit", "50")
        token = self.on(manager, "swarm", "join-token", "-q", "worker").stdout.decode().strip()
        for node in self.nodes[1:]:
            self.on(node, "swarm", "join", "--token", token, f"{address}:2377")
        for i, server in enumerate(SERVERS, 1):
            self.on(manager, "node", "update", "--label-add", f"kestrelq.{server}=true", f"node{i}")
        # Tasks are placed on the nodes that are Ready when the stack is deployed: a node still
        # joining would get no worker, and the spread the tests rely on would be left to chance.
        wait_until(self.nodes_ready, 300, what="every node Ready in the swarm")

    def nodes_ready(self) -> bool:
        out = self.on(self.nodes[0], "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
        ready = {line.split()[0] for line in out.stdout.decode().splitlines() if "Ready" in line}
        return ready == {f"node{i}" for i in range(1, NODES + 1)}

    def _record_handled(self) -> None:
        """The workers, replaced one by one, with the task's record of what they handle."""
        self.on(self.nodes[0], "service", "update", "--detach",
                "--env-add", f"KESTRELQ_HANDLED_LOG={HANDLED_DIR}/handled.log",
                "--mount-add", f"type=volume,source={HANDLED_VOLUME},target={HANDLED_DIR}",
                f"{STACK}_worker")  # fmt: skip
        wait_until(self._worker_update_done, 300, what="the workers updated")
        self.wait_running()

    def _worker_update_done(self) -> bool:
        out = self.on(self.nodes[0], "service", "inspect", "-f",
                      "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                      f"{STACK}_worker")  # fmt: skip
        state = out.stdout.decode().strip()
        assert state not in ("paused", "rollback_completed"), f"the workers' update: {state}"
        return state == "completed"

    def _spread_workers(self) -> None:
        """Workers on more than one node, so a node's loss leaves some running elsewhere.

        The scheduler spreads a service's tasks over the nodes, but a node whose engine was
        slow to take tasks can end with none: a forced update places them all again."""
        for _ in range(3):
            if len(set(self.running_on("worker"))) > 1:
                return
            self.on(self.nodes[0], "service", "update", "--detach", "--force",
                    f"{STACK}_worker")  # fmt: skip
            self.wait_running()
        raise AssertionError(f"the workers stay on one node: {self.running_on('worker')}")

    def _load_images(self) -> None:
        archive = docker("save", *self.images, timeout_s=600).stdout
        loads = [
            subprocess.Popen(
                ["docker", "exec", "-i", node, "docker", "load", "-q"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for node in self.nodes
        ]
        for node, load in zip(self.nodes, loads, strict=True):
            _, err = load.communicate(archive, timeout=600)
            assert load.returncode == 0, f"docker load on {node}: {err.decode()[-500:]}"
        # Loaded into the nodes, they are not needed here any more.
        docker("image", "rm", *self.images, check=False)

    def _deploy(self) -> None:
        manager = self.nodes[0]
        stack_secrets(self.secrets_dir, days=2)
        # Copied, not bind-mounted: the nodes' view of this machine's paths is not ours. The
        # one-off clients run as root so that they read these copies whatever their owner.
        self.on_shell(manager, f"mkdir -p {NODE_STACK_DIR}")
        docker("cp", str(REPO / "swarm.yaml"), f"{manager}:{NODE_STACK_DIR}/swarm.yaml")
        docker("cp", str(self.secrets_dir), f"{manager}:{NODE_STACK_DIR}/secrets")
        docker("exec", "-w", NODE_STACK_DIR, "-e", f"KESTRELQ_IMAGE_TAG={self.prefix}",
               "-e", f"KESTRELQ_SECRETS={NODE_STACK_DIR}/secrets", manager,
               "docker", "stack", "deploy", "-c", "swarm.yaml", STACK)  # fmt: skip

    # ---- looking at it -----------------------------------------------------------------------
    def on(
        self, node: str, *args: str, check: bool = True, timeout_s: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        """`docker <args>` on a node's own engine."""
        return docker("exec", node, "docker", *args, check=check, timeout_s=timeout_s)

    def on_shell(self, node: str, script: str) -> subprocess.CompletedProcess[bytes]:
        return docker("exec", node, "sh", "-c", script)

    def replicas(self) -> dict[str, tuple[int, int]]:
        """Each service of the stack: (tasks running, tasks wanted)."""
        out = self.on(self.nodes[0], "service", "ls", "--format", "{{.Name}} {{.Replicas}}")
        found: dict[str, tuple[int, int]] = {}
        for line in out.stdout.decode().splitlines():
            name, counts = line.split()[:2]
            running, wanted = counts.split("/")
            found[name.removeprefix(f"{STACK}_")] = (int(running), int(wanted))
        return found

    def all_running(self) -> bool:
        found = self.replicas()
        return len(found) == len(SERVERS) + 1 and all(r == w > 0 for r, w in found.values())

    def wait_running(self, timeout_s: float = 300) -> None:
        wait_until(self.all_running, timeout_s, what=f"every service running: {self.replicas}")

    def running_on(self, service: str) -> list[str]:
        """The nodes (hostnames) where the service has a running task."""
        out = self.on(self.nodes[0], "service", "ps", f"{STACK}_{service}",
                      "--filter", "desired-state=running",
                      "--format", "{{.Node}} {{.CurrentState}}")  # fmt: skip
        return [
            line.split()[0]
            for line in out.stdout.decode().splitlines()
            if line.split()[1:2] == ["Running"]
        ]

    def handled(self, nodes: Iterable[str] | None = None) -> Counter[str]:
        """Message ids the workers on `nodes` recorded as done, each as often as it was."""
        seen: Counter[str] = Counter()
        record = f"/var/lib/docker/volumes/{HANDLED_VOLUME}/_data/handled.log"
        for node in self.nodes if nodes is None else nodes:
            out = docker("exec", node, "sh", "-c", f"cat {record} 2>/dev/null || true")
            for line in out.stdout.decode(errors="replace").splitlines():
                event, _, rest = line.partition(" ")
                if event == "done":
                    seen[rest.split(" ", 1)[0]] += 1
        return seen

    # ---- clients, run on node1 in the overlay network ------------------------------------------
    def client_command(self, user: str, entrypoint: str, *args: str) -> list[str]:
        """`docker exec` into node1 of a one-off container with the login of `user`."""
        env = [f"{k}={v}" for k, v in CLIENT_ENV.items()]
        env += [f"KESTRELQ_USER={user}", f"KESTRELQ_PASSWORD_FILE=/run/secrets/{user}.password"]
        return [
            "docker", "exec", "-i", self.nodes[0],
            "docker", "run", "--rm", "-i", "--network", f"{STACK}_queues", "--user", "0",
            "-v", f"{NODE_STACK_DIR}/secrets:/run/secrets:ro",
            *(arg for e in env for arg in ("-e", e)),
            "--entrypoint", entrypoint, f"kestrelq-worker:{self.prefix}", *args,
        ]  # fmt: skip

    def kestrelq(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[bytes]:
        """A kestrelq command (stats, drain, ...) as `user` in the overlay network."""
        cmd = self.client_command(user, "kestrelq", *args)
        return subprocess.run(cmd, capture_output=True, timeout=600, check=False)

    def producer(self, prefix: str, count: int, *extra: str, servers: str = "") -> Producer:
        """tests/producer.py sending `count` echo tasks over the servers, as the app user."""
        args = ["-", "--servers", servers or ",".join(SERVERS), "--count", str(count),
                "--prefix", prefix, "--task", "echo", "--timeout-s", "2", "--lifetime-s", "600",
                *extra]  # fmt: skip
        proc = subprocess.Popen(
            self.client_command("app", "python3", *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(PRODUCER.read_text())
        proc.stdin.close()
        return Producer(proc)

    def queue_items(self, server: str, queue: str) -> int:
        """Items waiting in `queue` on one server, from `kestrelq stats`."""
        out = self.kestrelq("stats", "--servers", f"{server}:22133")
        assert out.returncode == 0, out.stderr.decode()[-1000:]
        for line in out.stdout.decode().splitlines():
            fields = line.split()
            if fields[:1] == [queue]:
                return int(fields[1])
        return 0

    # ---- breaking it and cleaning up -----------------------------------------------------------
    def kill(self, node: str) -> None:
        docker("kill", node)

    def restart(self, node: str) -> None:
        docker("start", node)
        wait_until(lambda: self.engine_answers(node), 120, what=f"the engine of {node} again")

    def all_nodes_up(self) -> None:
        """Start any node a failed test left killed, and wait until every service runs."""
        for node in self.nodes:
            state = docker("inspect", "-f", "{{.State.Running}}", node).stdout.decode().strip()
            if state != "true":
                self.restart(node)
        self.wait_running()

    def destroy(self) -> None:
        """Remove every container, volume, network and image of this run, by name."""
        for node in self.nodes:
            docker("rm", "-f", "-v", node, check=False, timeout_s=600)
            docker("volume", "rm", f"{node}-docker", check=False, timeout_s=600)
        docker("network", "rm", self.network, check=False)
        docker("image", "rm", "-f", self.node_image, *self.images, check=False)

    def leftovers(self) -> list[str]:
        """Anything named after this run still on this machine's engine."""
        found: list[str] = []
        for kind in ("container", "volume", "network"):
            args = [kind, "ls", "-q", "--filter", f"name={self.prefix}"]
            if kind == "container":
                args = ["ps", "-aq", "--filter", f"name={self.prefix}"]
            found += docker(*args).stdout.decode().split()
        images = docker("images", "-q", "--filter", f"reference=*:{self.prefix}")
        found += images.stdout.decode().split()
        return found

    def _lap(self, what: str, start: float) -> None:
        self.timings.append((what, time.monotonic() - start))
