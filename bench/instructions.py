"""Instructions per message: the server's own cost, counted by callgrind instead of timed.

    python -m bench.instructions [--builds pure,compiled,floor] [--messages 2000,6000]

Rates and CPU times on a shared 2-core machine swing by tens of percent between runs; an
instruction count does not. Each server runs under `valgrind --tool=callgrind` while the
pipelined load generator (bench/loadgen.py) sets and then gets N messages of 100 bytes, and
the run is repeated with a larger N: the difference of the two totals, divided by the
difference of N, is what one message (a set and its get) costs the server. Start-up, imports
and recovery cancel out.

Builds: `pure` is this checkout; `compiled` is build/compiled (`make compile`, see
kestrelq/hotpath.py; compiled first when missing or stale, as `python -m bench` does);
`floor` is bench/pyfloor.py, the least a Python server on uvloop can do.
The instructions counted include the server's user-space share of every system call it
makes, not the kernel's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.servers import (
    REPO_ROOT,
    ServerProc,
    ServerSpec,
    build_compiled,
    check_build,
    command,
    compiled_is_current,
    free_port,
    server_env,
    server_home,
    wait_ready,
)

_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


def _spec(build: str) -> ServerSpec:
    if build == "floor":
        return ServerSpec("pyfloor")
    return ServerSpec("kestrelq", fsync="never", build=build)


def count(build: str, messages: int, work: Path) -> int:
    """Instructions the server ran while `messages` were set and then got."""
    spec = _spec(build)
    port = free_port()
    out = work / f"callgrind-{build}-{messages}.out"
    data_dir = work / f"data-{build}-{messages}"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    log_path = work / f"server-{build}-{messages}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [*valgrind, *command(spec, port, data_dir)],
            cwd=server_home(spec),
            env=server_env(spec),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc = ServerProc(spec, port, data_dir, log_path, popen)
    try:
        # Under valgrind, start-up takes many seconds.
        if not wait_ready(proc, timeout_s=300):
            raise SystemExit(f"{build}: the server did not start; see {log_path}")
        # A row is only worth its label if the server really runs that build.
        check_build(proc)
        kind = "pyfloor" if build == "floor" else "kestrelq"
        load = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--kind", kind]
        load += ["--messages", str(messages), "--size", "100"]
        subprocess.run(load, cwd=REPO_ROOT, check=True, capture_output=True)
    finally:
        proc.stop(signal.SIGTERM, timeout_s=600)
    found = _TOTALS.search(out.read_bytes())
    if found is None:
        raise SystemExit(f"{build}: no totals in {out}")
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
    if "compiled" in builds and not compiled_is_current():
        build_compiled()  # as `python -m bench` does: missing or stale, compiled first
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
