"""Static checks of the container files: what a review would look for, checked on every run.

No engine needed: images/Dockerfile is read as text and compose.yaml through
`docker compose config` (the client only), against conf/stack.toml's stop times.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from compose_stack import make_stack

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "Dockerfile"
SERVICES = ("queue", "worker", "app", "dashboard")
COMPOSE_CONFIG = ("docker", "compose", "-f", "compose.yaml", "config", "--format", "json")
STAGE_RE = re.compile(r"^FROM (\S+) AS (\S+)$", re.MULTILINE)


def duration_s(text: str) -> float:
    """A compose duration like `40s`, `1m30s` in seconds (compose config normalises to these)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def stages() -> dict[str, str]:
    """images/Dockerfile's stages: {name: the image or stage it starts FROM}."""
    text = DOCKERFILE.read_text()
    assert len(STAGE_RE.findall(text)) == len(re.findall(r"^FROM ", text, re.MULTILINE)), (
        "every FROM names its stage"
    )
    return {name: parent for parent, name in STAGE_RE.findall(text)}


def test_one_dockerfile_a_target_per_service_on_one_base() -> None:
    """Every service image is a target of the one Dockerfile and starts from its shared stage.

    The shared lines exist once, so the images share their layers without a copy to keep equal.
    """
    # `compiled` builds the queue's hot path (a compiler, no service): from Debian, so that its
    # packages are not downloaded again for every edit of the source.
    assert stages() == {
        "base": "debian:bookworm-slim",
        "compiled": "debian:bookworm-slim",
        **dict.fromkeys((*SERVICES, "prometheus"), "base"),
    }
    # The one other Dockerfile is no service's: the swarm tests' Docker-in-Docker node.
    others = sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile"))
    assert others == ["node"]


def test_images_run_unprivileged_under_an_init() -> None:
    text = DOCKERFILE.read_text()
    base = text[: text.index("\nFROM base AS ")]
    # Set once in the shared stage; a target that must install a package as root (Prometheus)
    # goes back to it before its stage ends, or the image would run as someone else.
    assert re.search(r"^USER kestrelq$", base, re.MULTILINE)
    for stage in text.split("\nFROM ")[1:]:
        users = re.findall(r"^USER (.*)$", stage, re.MULTILINE)
        assert users in ([], ["kestrelq"], ["root", "kestrelq"]), (stage.split()[2], users)
    for entrypoint in re.findall(r"^ENTRYPOINT .*$", text, re.MULTILINE):
        assert entrypoint.startswith('ENTRYPOINT ["tini", "--"'), entrypoint
    # pip cannot reach PyPI from a container build here: Debian packages only.
    assert "pip install" not in text


def test_service_files_are_copied_into_their_image() -> None:
    """images/<service>/ holds what only that image has; each file is copied into it."""
    text = DOCKERFILE.read_text()
    for service in ("queue", "worker"):
        files = sorted(p.name for p in (REPO / "images" / service).iterdir())
        assert files, f"images/{service}/ is empty"
        stage = text[text.index(f"FROM base AS {service}\n") :].split("\nFROM ", 1)[0]
        for name in files:
            assert f"COPY images/{service}/{name} " in stage, (service, name)


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "compose", "-f", "compose.yaml", "config", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        # The defaults, not whatever the developer's shell or var/stack.env says.
        env={k: v for k, v in os.environ.items() if not k.startswith(("KESTRELQ_", "COMPOSE_"))},
    )
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = json.loads(out.stdout)
    return config


@pytest.mark.docker
def test_compose_publishes_on_loopback_only(compose_config: dict[str, Any]) -> None:
    published = {
        (name, str(port["published"]), port.get("host_ip"))
        for name, service in compose_config["services"].items()
        for port in service.get("ports", [])
    }
    assert published == {
        ("queue", "22133", "127.0.0.1"),
        ("queue", "9001", "127.0.0.1"),
        ("worker", "9002", "127.0.0.1"),
        ("app", "8080", "127.0.0.1"),
        ("dashboard", "8081", "127.0.0.1"),
    }


@pytest.mark.docker
def test_compose_builds_restarts_and_orders(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == set(SERVICES)
    for name, service in services.items():
        assert service["pull_policy"] == "build", name
        assert service["build"]["dockerfile"] == "images/Dockerfile"
        assert service["build"]["target"] == name
        assert service["restart"] == "unless-stopped", name
    for name in ("worker", "app", "dashboard"):
        assert services[name]["depends_on"]["queue"]["condition"] == "service_healthy"
    journal = [v for v in services["queue"]["volumes"] if v["type"] == "volume"]
    assert [(v["source"], v["target"]) for v in journal] == [("journal", "/var/lib/kestrelq/queue")]


@pytest.mark.docker
def test_the_metrics_profile_adds_prometheus_hardened_on_loopback() -> None:
    out = subprocess.run(
        [*COMPOSE_CONFIG[:4], "--profile", "metrics", *COMPOSE_CONFIG[4:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("KESTRELQ_", "COMPOSE_"))},
    )
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert set(services) == {*SERVICES, "prometheus"}
    prometheus = services["prometheus"]
    assert (prometheus["build"]["target"], prometheus["pull_policy"]) == ("prometheus", "build")
    assert [(str(p["published"]), p["host_ip"], p["target"]) for p in prometheus["ports"]] == [
        ("9090", "127.0.0.1", 9090)
    ]
    # Hardened like the other services (compose.yaml's x-hardened).
    assert prometheus["user"] == "10001:10001"
    assert prometheus["cap_drop"] == ["ALL"]
    assert prometheus["read_only"] is True
    assert prometheus["security_opt"] == ["no-new-privileges:true"]
    for name in ("queue", "worker"):
        assert prometheus["depends_on"][name]["condition"] == "service_healthy"
    data = [(v["source"], v["target"]) for v in prometheus["volumes"] if v["type"] == "volume"]
    assert data == [("prometheus", "/var/lib/kestrelq/prometheus")]


@pytest.mark.docker
def test_stop_grace_outlasts_supervisord_stopwaitsecs(compose_config: dict[str, Any]) -> None:
    """docker stop must not SIGKILL a worker mid-message or the server mid-sync."""
    stack = tomllib.loads((REPO / "conf" / "stack.toml").read_text())
    queue_wait = int(stack["server"]["stopwaitsecs"])
    worker_wait = max(
        int(q.get("stopwaitsecs", 10)) for q in stack["queues"].values() if q.get("workers", 0)
    )
    services = compose_config["services"]
    assert duration_s(services["queue"]["stop_grace_period"]) > queue_wait
    assert duration_s(services["worker"]["stop_grace_period"]) > worker_wait


@pytest.mark.docker
def test_test_stacks_ignore_the_callers_compose_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A developer's exported project, image tag and ports never reach a test stack.

    Compose prefers the shell's variables to any --env-file, so without the scrubbed
    environment `make chaos-test` would build, drive and tear down the developer's own stack.
    """
    users = {
        "COMPOSE_PROJECT_NAME": "my-own-kestrelq",
        "KESTRELQ_IMAGE_TAG": "mine",
        "KESTRELQ_QUEUE_PORT": "22133",
    }
    for key, value in users.items():
        monkeypatch.setenv(key, value)
    stack = make_stack(REPO, tmp_path, "isolation")

    def resolved(env: dict[str, str]) -> dict[str, Any]:
        out = subprocess.run(
            [*stack.command, "config", "--format", "json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        config: dict[str, Any] = json.loads(out.stdout)
        return config

    # The hazard is real: the same command in the caller's environment is the caller's stack.
    naive = resolved(dict(os.environ))
    assert naive["name"] == "my-own-kestrelq"
    assert naive["services"]["queue"]["image"] == "kestrelq-queue:mine"

    config = resolved(stack.env)
    assert config["name"] == stack.project != "my-own-kestrelq"
    assert stack.project.startswith("kestrelq-test-isolation-")
    assert {name: s["image"] for name, s in config["services"].items()} == {
        name: f"kestrelq-{name}:{stack.project}" for name in SERVICES
    }
    queue_ports = {str(p["published"]) for p in config["services"]["queue"]["ports"]}
    assert "22133" not in queue_ports and str(stack.queue_port) in queue_ports
