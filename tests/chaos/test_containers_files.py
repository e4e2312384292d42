"""Static checks of the container files: what a review would look for, checked on every run.

No engine needed: the Dockerfiles are read as text and compose.yaml through
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

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("queue", "worker", "app")
PREFIX_RE = re.compile(r"^FROM .*?# --- End of the shared prefix\.", re.DOTALL | re.MULTILINE)


def duration_s(text: str) -> float:
    """A compose duration like `40s`, `1m30s` in seconds (compose config normalises to these)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_dockerfiles_share_their_prefix() -> None:
    """The three images share their layers only while their first lines are identical."""
    prefixes = {}
    for image in IMAGES:
        text = (REPO / "images" / image / "Dockerfile").read_text()
        match = PREFIX_RE.search(text)
        assert match, f"images/{image}/Dockerfile lost its shared-prefix markers"
        prefixes[image] = match.group(0)
    assert prefixes["queue"] == prefixes["worker"] == prefixes["app"]
    assert prefixes["queue"].startswith("FROM debian:bookworm-slim\n")


def test_images_run_unprivileged_under_an_init() -> None:
    for image in IMAGES:
        text = (REPO / "images" / image / "Dockerfile").read_text()
        assert re.search(r"^USER kestrelq$", text, re.MULTILINE), image
        assert 'ENTRYPOINT ["tini", "--"' in text, image
        # pip cannot reach PyPI from a container build here: Debian packages only.
        assert "pip install" not in text, image


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
    }


@pytest.mark.docker
def test_compose_builds_restarts_and_orders(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == {"queue", "worker", "app"}
    for name, service in services.items():
        assert service["pull_policy"] == "build", name
        assert service["build"]["dockerfile"] == f"images/{name}/Dockerfile"
        assert service["restart"] == "unless-stopped", name
    for name in ("worker", "app"):
        assert services[name]["depends_on"]["queue"]["condition"] == "service_healthy"
    journal = [v for v in services["queue"]["volumes"] if v["type"] == "volume"]
    assert [(v["source"], v["target"]) for v in journal] == [("journal", "/var/lib/kestrelq/queue")]


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
