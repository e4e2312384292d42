"""Instructions per message: the server's own cost, counted by callgrind instead of timed.

    python -m bench.instructions [--builds pure,compiled,floor] [--messages 2000,6000]

Rates and CPU times on a shared 2-core machine swing by tens of percent between runs; an
instruction count does not. Each server runs under `valgrind --tool=callgrind` while the
pipelined load generator (bench/loadgen.py) sets and then gets N messages of 100 bytes, and
the run is repeated with a larger N: the difference of the two totals, divided by the
difference of N, is what one message (a set and its get) costs the server. Start-up, imports
and recovery cancel out.

Builds: `pure` is this checkout; `compiled` is build/compiled (`make compile`, see
kestrelq/hotpath.py); `floor` is bench/pyfloor.py, the least a Python server on uvloop can do.
The instructions counted include the server's user-space share of every system call it
makes, not the kernel's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.servers import BUILD_LOG_LINES, COMPILED_DIR, REPO_ROOT, free_port, probe

_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


def _server_command(build: str, port: int, data_dir: Path) -> tuple[list[str], Path]:
    """The server's command line and the directory to run it from (which decides the build)."""
    if build == "floor":
        cmd = ["-m", "bench.pyfloor", "--port", str(port), "--data-dir", str(data_dir)]
        return [sys.executable, *cmd], REPO_ROOT
    serve = ["-m", "kestrelq", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    cmd = [sys.executable, *serve, "--fsync", "never"]
    return cmd, (COMPILED_DIR if build == "compiled" else REPO_ROOT)


def count(build: str, messages: int, work: Path) -> int:
    """Instructions the server ran while `messages` were set and then got."""
    port = free_port()
    out = work / f"callgrind-{build}-{messages}.out"
    cmd, cwd = _server_command(build, port, work / f"data-{build}-{messages}")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    log = open(work / f"server-{build}-{messages}.log", "wb")  # noqa: SIM115 - the child's
    server = subprocess.Popen([*valgrind, *cmd], cwd=cwd, env=env, stdout=log, stderr=log)
    log.close()
    try:
        kind = "pyfloor" if build == "floor" else "kestrelq"
        deadline = time.monotonic() + 300  # under valgrind, start-up takes many seconds
        while not probe(kind, port, timeout_s=1.0):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{build}: the server did not start; see {work}")
            time.sleep(0.25)  # the interval between probes, not a stand-in for one
        load = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--kind", kind]
        load += ["--messages", str(messages), "--size", "100"]
        subprocess.run(load, cwd=REPO_ROOT, check=True, capture_output=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=600)
    found = _TOTALS.search(out.read_bytes())
    if found is None:
        raise SystemExit(f"{build}: no totals in {out}")
    if build != "floor":
        # A row is only worth its label if the server really ran that build.
        said = (work / f"server-{build}-{messages}.log").read_text(errors="replace")
        expected = BUILD_LOG_LINES[build]
        if expected not in said:
            raise SystemExit(f"{build}: the server did not say {expected!r}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--builds", default="pure,compiled,floor")
    parser.add_argument("--messages", default="2000,6000", help="two message counts, a,b")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    low, high = (int(n) for n in args.messages.split(","))
    builds = args.builds.split(",")
    if "compiled" in builds and not (COMPILED_DIR / "kestrelq" / "hotpath.py").exists():
        parser.error(f"no compiled build in {COMPILED_DIR}: run `make compile` first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kq-instr-") as tmp:
        work = Path(tmp)
        for build in builds:
            per = (count(build, high, work) - count(build, low, work)) / (high - low)
            rows.append((build, per))
            print(f"{build}: {per:,.0f} instructions per message (set + get)", flush=True)
    floor = dict(rows).get("floor")
    print("\n| build | instructions per message (set + get) | vs floor |\n|---|---|---|")
    for build, per in rows:
        ratio = f"{per / floor:.2f}x" if floor else "-"
        print(f"| {build} | {per:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
