"""Server settings from the command line, environment variables and a config file.

The rule: the command line wins over the environment, which wins over the file. A real
`python -m kestrelq serve` is started each time; the effect of a setting is observed through
the wire (the port it listens on, `stats`, a limit that refuses an item).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Wire, child_env, free_port, request, server_stats, wait_until


class Proc:
    """`python -m kestrelq serve` with exactly the given arguments and environment."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
        self.log_path = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
        # The repository importable from any working directory, and no stray KESTRELQ_ vars.
        base = {k: v for k, v in child_env().items() if not k.startswith("KESTRELQ_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kestrelq", "serve", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**base, **env},
                cwd=tmp_path,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, port: int) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if f"(pid {self.proc.pid}," not in self.log():  # not yet listening, or not on this port
                return False
            try:
                return request(port, b"version\r\n", timeout_s=1).startswith(b"VERSION")
            except OSError:
                return False

        wait_until(ready, 60, what=f"kestrelq on port {port}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(15)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def serve(procs: list[Proc], tmp_path: Path, *args: str, **env: str) -> Proc:
    proc = Proc(tmp_path, list(args), env)
    procs.append(proc)
    return proc


def set_reply(port: int, size: int) -> bytes:
    with Wire(port) as w:
        return w.call(b"set q 0 0 %d\r\n%s\r\n" % (size, b"x" * size))


def test_no_sync_reads_on_the_command_line_beats_the_environment(
    tmp_path: Path, procs: list[Proc]
) -> None:
    port = free_port()
    proc = serve(
        procs,
        tmp_path,
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        "--no-sync-reads",
        KESTRELQ_SYNC_READS="true",
    )
    proc.wait_ready(port)
    assert server_stats(port)["sync_reads"] == "0"
    assert proc.stop() == 0


def test_environment_only(tmp_path: Path, procs: list[Proc]) -> None:
    port, data_dir = free_port(), tmp_path / "env-data"
    proc = serve(
        procs,
        tmp_path,
        KESTRELQ_HOST="127.0.0.1",
        KESTRELQ_PORT=str(port),
        KESTRELQ_DATA_DIR=str(data_dir),
        KESTRELQ_FSYNC="never",
        KESTRELQ_MAX_ITEM_BYTES="100",
    )
    proc.wait_ready(port)
    assert server_stats(port)["fsync_policy"] == "never"
    assert set_reply(port, 100) == b"STORED\r\n"
    assert set_reply(port, 101).startswith(b"SERVER_ERROR object too large")
    assert list(data_dir.glob("q.*.kqj")), "the journal is not in KESTRELQ_DATA_DIR"
    assert proc.stop() == 0


def test_command_line_beats_environment_beats_file(tmp_path: Path, procs: list[Proc]) -> None:
    file_port, env_port, cli_port = free_port(), free_port(), free_port()
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(
        f'[server]\nport = {file_port}\nfsync = "never"\nmax_item_bytes = 100\n'
        f'data_dir = "{tmp_path / "file-data"}"\n'
    )
    # The file alone, found through KESTRELQ_CONFIG.
    proc = serve(procs, tmp_path, KESTRELQ_CONFIG=str(conf))
    proc.wait_ready(file_port)
    assert server_stats(file_port)["fsync_policy"] == "never"
    assert server_stats(file_port)["sync_reads"] == "0"
    assert set_reply(file_port, 150).startswith(b"SERVER_ERROR ")
    assert proc.stop() == 0
    # The environment over the file.
    proc = serve(
        procs,
        tmp_path,
        KESTRELQ_CONFIG=str(conf),
        KESTRELQ_PORT=str(env_port),
        KESTRELQ_FSYNC="250",
        KESTRELQ_MAX_ITEM_BYTES="200",
    )
    proc.wait_ready(env_port)
    assert server_stats(env_port)["fsync_policy"] == "250"
    assert set_reply(env_port, 150) == b"STORED\r\n"
    assert proc.stop() == 0
    # The command line over both.
    proc = serve(
        procs,
        tmp_path,
        "--port",
        str(cli_port),
        "--fsync",
        "always",
        "--sync-reads",
        "--max-item-bytes",
        "300",
        "--config",
        str(conf),
        KESTRELQ_PORT=str(env_port),
        KESTRELQ_FSYNC="250",
        KESTRELQ_MAX_ITEM_BYTES="200",
    )
    proc.wait_ready(cli_port)
    assert server_stats(cli_port)["fsync_policy"] == "always"
    assert server_stats(cli_port)["sync_reads"] == "1"
    assert set_reply(cli_port, 250) == b"STORED\r\n"
    # Items from all three runs went to the file's data dir (nobody overrode it).
    with Wire(cli_port) as w:
        assert w.call(b"get q\r\n") == b"VALUE q 0 150\r\n" + b"x" * 150 + b"\r\nEND\r\n"
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("config", "env", "words"),
    [
        pytest.param('[server]\nfsync = "sometimes"\n', {}, ["fsync"], id="bad-fsync"),
        pytest.param("[server]\nprot = 1\n", {}, ["unknown", "prot"], id="unknown-key"),
        pytest.param("[queues.work]\nmax_itemz = 5\n", {}, ["max_itemz"], id="unknown-queue-key"),
        pytest.param('[queues."a.b"]\nmax_items = 1\n', {}, ["a.b"], id="bad-queue-name"),
        pytest.param("[server\n", {}, ["kestrelq.toml"], id="not-toml"),
        pytest.param(
            "",
            {"KESTRELQ_PORT": "http"},
            ["port"],
            id="bad-env-port",
        ),
        pytest.param("", {"KESTRELQ_MAX_CONNECTIONS": "-1"}, ["max_connections"], id="negative"),
    ],
)
def test_bad_settings_stop_the_start_with_a_clear_message(
    tmp_path: Path, procs: list[Proc], config: str, env: dict[str, str], words: list[str]
) -> None:
    conf = tmp_path / "kestrelq.toml"
    conf.write_text(config)
    proc = serve(
        procs, tmp_path, "--config", str(conf), "--data-dir", str(tmp_path / "data"), **env
    )
    assert proc.proc.wait(20) == 2
    log = proc.log()
    assert "Traceback" not in log
    for word in words:
        assert word in log, log


def test_missing_config_file_is_an_error(tmp_path: Path, procs: list[Proc]) -> None:
    proc = serve(procs, tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert proc.proc.wait(20) == 2
    assert "nope.toml" in proc.log()


def test_data_dir_in_use_by_another_server(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    first = serve(procs, tmp_path, "--port", str(port), "--data-dir", str(tmp_path / "data"))
    first.wait_ready(port)
    second = serve(
        procs, tmp_path, "--port", str(free_port()), "--data-dir", str(tmp_path / "data")
    )
    assert second.proc.wait(20) == 2
    assert "in use" in second.log()
    assert first.stop() == 0


def test_runs_from_the_repository_as_a_module(tmp_path: Path, procs: list[Proc]) -> None:
    # `python -m kestrelq` works from any directory (cwd is tmp_path here).
    port = free_port()
    proc = serve(procs, tmp_path, "--port", str(port), "--data-dir", "relative-data")
    proc.wait_ready(port)
    assert (tmp_path / "relative-data").is_dir()
    assert proc.stop() == 0
