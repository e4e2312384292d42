"""The whole harness end to end with tiny numbers: every server, both clients (pymemcache and
the minimal one), the load generator, every scenario. It proves the harness runs and checks
what it measures, not how fast anything is. darner is not on CI machines: its rows are left
out here (tests/bench/test_bench_units.py checks how they are planned and compared). The full
run takes kestrelq's pure build only; a second, narrower run puts the compiled build beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVERS = (
    "kestrelq fsync=never",
    "kestrelq fsync=always",
    "memcached",
    "beanstalkd",
    "redis",
    "python floor",
)


def test_bench_runs_every_server_and_verifies_every_message(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench",
        "--messages", "60", "--repeat", "1", "--clients", "1,2",
        "--fsync", "never,always", "--builds", "pure",
        "--loadgen-messages", "300", "--loadgen-depth", "8",
        "--fsync-scale", "--fsync-scale-messages", "64",
        "--backlog", "300", "--compaction-wait", "0",
        "--fairness", "--fairness-seconds", "0.3", "--fairness-big-mib", "1",
        "--out", str(out), "--name", "smoke",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (out / "smoke.md").read_text()
    for label in SERVERS:
        assert f"| {label} |" in md, label
    for section in (
        "## Targets",
        "## Minimal client",
        "## Client matrix",
        "## Pipelined load generator",
    ):
        assert section in md
    for section in ("## fsync scaling", "## backlog", "## fairness"):
        assert section in md
    assert "## Errors" not in md
    # Progress lines went to stderr while it ran, one per run.
    assert proc.stderr.count("[") >= 16
    assert "kestrelq fsync=always reliable C=2 pymemcache" in proc.stderr
    assert "kestrelq fsync=always reliable C=2 minimal" in proc.stderr

    png = (out / "smoke.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    raw = json.loads((out / "smoke.json").read_text())
    matrix = raw["matrix"]
    # kestrelq: 2 fsync x 2 modes; memcached, beanstalkd, redis plain + reliable, the python
    # floor; x 2 counts.
    assert len(matrix) == (4 + 1 + 1 + 2 + 1) * 2
    for row in matrix:
        assert row["verified"] == row["runs"] == 1, row
        assert row["enq_rate"] > 0 and row["deq_rate"] > 0 and row["peak_rss_mb"] > 0, row
        assert row["enq_p99"] >= row["enq_p50"] > 0, row
    # The minimal client: kestrelq 2 fsync x 2 modes, memcached, the floor; x 2 counts, each
    # row held against the floor (there is no darner here, so no ratio to it).
    minimal = raw["minimal"]
    assert len(minimal) == (4 + 1 + 1) * 2
    assert {r["label"] for r in minimal} == {
        "kestrelq fsync=never", "kestrelq fsync=always", "memcached", "python floor"
    }  # fmt: skip
    for row in minimal:
        assert row["verified"] == row["runs"] == 1, row
        assert row["enq_rate"] > 0 and row["deq_rate"] > 0 and row["enq_p99"] > 0, row
        assert row["enq_vs_floor"] > 0 and row["deq_vs_floor"] > 0, row
        assert row["enq_vs_darner"] is None, row
    assert "| kestrelq fsync=always | 2 | set |" in md and "| get q/close/open |" in md
    assert "| kestrelq fsync=always | get q/close/open | 1 / 2 |" in md  # the summary
    assert all(r["verified"] == 1 for r in raw["loadgen"])
    assert {r["label"] for r in raw["loadgen"]} == {
        "memcached", "python floor", "kestrelq fsync=never", "kestrelq fsync=always"
    }  # fmt: skip
    assert raw["fsync scaling"]["always_missing"] == 0 == raw["fsync scaling"]["never_missing"]
    assert raw["backlog"]["missing"] == 0 and raw["backlog"]["corrupt"] == 0
    assert raw["backlog"]["first_item_s"] >= raw["backlog"]["ready_s"] > 0
    assert raw["fairness"]["with_big_items_big_mib_per_s"] > 0
    assert raw["fairness"]["alone_small_msgs"] > 0
    assert raw["errors"] == []


def test_bench_runs_the_compiled_build_beside_the_pure_one(tmp_path: Path) -> None:
    # The compiled build comes from build/compiled, compiled first if it is missing or stale
    # (about a minute; `make test-compiled` reuses it afterwards).
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "bench",
        "--servers", "kestrelq,pyfloor,memcached", "--client", "minimal",
        "--builds", "pure,compiled", "--fsync", "never,always", "--modes", "reliable",
        "--messages", "60", "--repeat", "1", "--clients", "1",
        "--loadgen-messages", "300", "--loadgen-depth", "8",
        "--out", str(out), "--name", "builds",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (out / "builds.md").read_text()
    raw = json.loads((out / "builds.json").read_text())
    kestrelqs = {
        "kestrelq fsync=never", "kestrelq fsync=never compiled",
        "kestrelq fsync=always", "kestrelq fsync=always compiled",
    }  # fmt: skip
    assert {r["label"] for r in raw["minimal"]} == kestrelqs | {"memcached", "python floor"}
    assert {r["label"] for r in raw["loadgen"]} == kestrelqs | {"memcached", "python floor"}
    for row in raw["minimal"] + raw["loadgen"]:
        assert row["verified"] == row["runs"] == 1, row
    # Ratios and targets against the compiled build, the pure rows still in the tables.
    assert "against **kestrelq fsync=never compiled**" in md
    assert "kestrelq builds: pure Python" in md and "compiled with mypyc" in md
    names = [c["name"] for c in raw["checks"]]
    assert "loadgen: kestrelq fsync=never compiled set CPU / memcached set" in names
    assert not any("fsync=never set" in n for n in names), names
    assert "| kestrelq fsync=never | 1 | set |" in md
    assert "| kestrelq fsync=never compiled | 1 | set |" in md
    assert "| kestrelq fsync=always compiled | reliable |" in md  # the load generator's
    assert "kestrelq fsync=always compiled reliable C=1 minimal" in proc.stderr
    assert raw["errors"] == []


def test_instruction_counts_come_out_per_message() -> None:
    # The floor only, at small counts: the tool's arithmetic and its table, in a minute. The
    # pure and compiled builds go through the same code with the log-line check on top.
    result = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--builds", "floor", "--messages", "200,600"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| floor |"))
    per_message = int(row.split("|")[2].replace(",", ""))
    # A set and a get cost a Python server thousands of instructions, not tens or millions.
    assert 2_000 < per_message < 500_000, row
