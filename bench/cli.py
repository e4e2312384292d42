"""`python -m bench`: kestrelq against memcached, beanstalkd, redis and darner, same client pattern.

For every server configuration, client library and client count: start a fresh server on a
free port, have C client processes enqueue N messages of S bytes, then dequeue them all, check
every id came back intact, and record rate, latency percentiles, server CPU per message and
peak RSS. Two client libraries: pymemcache (and each peer's own), and the minimal client, one
request and one reply at a time, the same for every memcache server (darner with --darner BIN).
kestrelq runs in both builds side by side, pure Python and its hot path compiled with mypyc
(--builds; the compiled one is built into build/compiled first when it is missing or stale).
Repeat R times; report medians, ratios (to kestrelq, compiled when it ran; for the minimal
client to darner and to the Python floor), the performance targets, a chart.
Scenario flags add the other targets: --fsync-scale, --backlog N, --fairness.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import loadgen, report, scenarios
from bench.drivers import CLIENTS, DARNER_KINDS, MIN_SIZE, TARGETS, runs_with
from bench.runner import RunConfig, RunResult, run_once
from bench.servers import (
    BUILDS,
    COMPILED_DIR,
    KINDS,
    REPO_ROOT,
    CompileError,
    ServerSpec,
    build_compiled,
    compiled_is_current,
    kestrelq_label,
    missing_binaries,
    start,
)

log = logging.getLogger("bench")

DEFAULT_OUT = REPO_ROOT / "bench" / "results"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(p) for p in _csv(text)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    g = p.add_argument_group("client matrix")
    g.add_argument("-n", "--messages", type=int, default=5000, help="messages per run (5000)")
    g.add_argument("-s", "--size", type=int, default=64, help="message size in bytes (64)")
    g.add_argument("-c", "--clients", type=_ints, default=[1, 4], help="client counts (1,4)")
    g.add_argument("-r", "--repeat", type=int, default=3, help="runs per row; median kept (3)")
    g.add_argument(
        "--servers",
        type=_csv,
        default=["kestrelq", "memcached", "beanstalkd", "redis", "pyfloor"],
        help="which servers (kestrelq,memcached,beanstalkd,redis,pyfloor: the Python floor;\n"
        "darner,darner-sync come with --darner)",
    )
    g.add_argument(
        "--darner",
        type=Path,
        metavar="BIN",
        help="darner's binary: adds darner and darner-sync (`set q/sync`) to the minimal\n"
        "client's runs",
    )
    g.add_argument(
        "--client",
        type=_csv,
        default=list(CLIENTS),
        help="client libraries (pymemcache,minimal): pymemcache and each peer's own client,\n"
        "and the minimal one-request-one-reply client for every memcache server",
    )
    g.add_argument(
        "--fsync", type=_csv, default=["always", "never", "100"], help="kestrelq fsync policies"
    )
    g.add_argument(
        "--modes",
        type=_csv,
        default=["plain", "reliable"],
        help="kestrelq/redis/darner dequeue modes",
    )
    g.add_argument(
        "--builds",
        type=_csv,
        default=None,
        help="kestrelq builds (pure,compiled: both by default, the compiled hot path built\n"
        "into build/compiled first if it is missing or stale; pure alone, with a note, when\n"
        "it cannot be built). Ratios and targets use the compiled build when it ran",
    )
    g.add_argument(
        "--ref-fsync",
        default="never",
        help="the kestrelq fsync policy that ratios and targets compare against (never)",
    )
    g.add_argument(
        "--kestrelq-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `kestrelq serve` (repeatable), e.g. --kestrelq-arg=--config=F",
    )
    g.add_argument(
        "--profile", type=Path, metavar="DIR", help="run kestrelq under cProfile; .prof files here"
    )
    g.add_argument("--no-matrix", action="store_true", help="skip the client matrix")
    g.add_argument(
        "--scenarios-only", action="store_true", help="skip the matrix and the load generator"
    )
    g = p.add_argument_group("pipelined load generator (server CPU per message)")
    g.add_argument("--no-loadgen", action="store_true")
    g.add_argument("--loadgen-messages", type=int, default=20000)
    g.add_argument("--loadgen-connections", type=int, default=4)
    g.add_argument("--loadgen-depth", type=int, default=32)
    g = p.add_argument_group("scenarios (off unless asked for)")
    g.add_argument("--fsync-scale", action="store_true", help="16 producers, always vs never")
    g.add_argument("--fsync-scale-messages", type=int, default=5000)
    g.add_argument("--fsync-scale-producers", type=int, default=16)
    g.add_argument("--backlog", type=int, default=0, metavar="N", help="backlog of N items")
    g.add_argument("--backlog-size", type=int, default=1024)
    g.add_argument("--backlog-fsync", default="never")
    g.add_argument(
        "--restart-signal", choices=("KILL", "TERM"), default="KILL", help="backlog restart"
    )
    g.add_argument("--compaction-wait", type=float, default=30.0, metavar="SECONDS")
    g.add_argument("--fairness", action="store_true", help="8 MiB items beside 64 B ones")
    g.add_argument("--fairness-seconds", type=float, default=5.0)
    g.add_argument("--fairness-clients", type=int, default=10)
    g.add_argument("--fairness-rate", type=float, default=200.0, help="small msgs/s per client")
    g.add_argument("--fairness-big-mib", type=int, default=8)
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    g.add_argument("--name", default="", help="file name stem (default: a UTC timestamp)")
    g.add_argument("--quick", action="store_true", help="tiny run: n=300, r=1, c=1,2")
    g.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    g.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.repeat, args.clients = 300, 1, [1, 2]
        args.loadgen_messages = 2000
        args.fsync_scale_messages = min(args.fsync_scale_messages, 500)
        args.fairness_seconds = min(args.fairness_seconds, 1.0)
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.scenarios_only:
        args.no_matrix = args.no_loadgen = True
    unknown = (
        [k for k in args.servers if k not in KINDS]
        + [m for m in args.modes if m not in ("plain", "reliable")]
        + [c for c in args.client if c not in CLIENTS]
        + [b for b in args.builds or () if b not in BUILDS]
    )
    if unknown:
        p.error(f"unknown server, mode, client or build: {', '.join(unknown)}")
    if args.builds == []:
        p.error("--builds: name at least one of pure,compiled")
    # Asked for by name, the compiled build must run; by default it may fall back to pure.
    args.builds_asked = args.builds is not None
    args.builds = [b for b in BUILDS if b in (args.builds or BUILDS)]
    if args.darner is not None:
        args.darner = args.darner.resolve()
        if not (args.darner.is_file() and os.access(args.darner, os.X_OK)):
            p.error(f"--darner {args.darner}: not an executable file")
        if not any(k in args.servers for k in DARNER_KINDS):
            args.servers = [*args.servers, *DARNER_KINDS]
    elif any(k in args.servers for k in DARNER_KINDS):
        p.error("darner needs its binary: --darner BIN")
    if args.size < MIN_SIZE:
        p.error(f"--size must be at least {MIN_SIZE} (the message id is in the body)")
    return args


def reference_build(args: argparse.Namespace) -> str:
    """The build that ratios, targets and scenarios use: compiled when it runs (images ship it)."""
    return "compiled" if "compiled" in args.builds else "pure"


def ensure_builds(args: argparse.Namespace) -> str:
    """Build the compiled hot path if the run wants it and it is missing or stale.

    Returns a note for the report when the compiled build was dropped (it could not be built
    and was not asked for by name); raises CompileError when it was asked for.
    """
    if "kestrelq" not in args.servers or "compiled" not in args.builds or compiled_is_current():
        return ""
    log.info("compiling kestrelq's hot path into %s (about a minute) ...", COMPILED_DIR)
    try:
        build_compiled()
    except CompileError as exc:
        if args.builds_asked:
            raise
        args.builds = [b for b in args.builds if b != "compiled"]
        log.warning("the compiled build could not be built; kestrelq runs pure only: %s", exc)
        return f"kestrelq ran pure only: the compiled hot path could not be built ({exc})."
    return ""


def kestrelq_template(args: argparse.Namespace) -> ServerSpec:
    """kestrelq as every part of the run starts it; fsync (and in the matrix the build) is
    filled in per run."""
    return ServerSpec(
        "kestrelq",
        build=reference_build(args),
        extra_args=tuple(args.kestrelq_arg),
        max_item_bytes=max(args.size, 65535),
        profile_dir=args.profile,
    )


def source_revision() -> str:
    """The checkout's commit, marked dirty when kestrelq/ has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "kestrelq"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "an unknown revision"
    if not rev:
        return "an unknown revision"
    return f"`{rev}`" + (" with uncommitted changes in kestrelq/" if dirty else "")


def builds_line(args: argparse.Namespace, note: str = "") -> str:
    """Which kestrelq builds ran, for the report's head, and why one did not."""
    said = {
        "pure": "pure Python (rows without a build in their label)",
        "compiled": f"the hot path compiled with mypyc ('compiled' rows, from {COMPILED_DIR})",
    }
    line = "kestrelq builds: " + "; ".join(said[b] for b in args.builds) + "."
    return line + (f" **{note}**" if note else "")


def plan(args: argparse.Namespace) -> list[tuple[RunConfig, ServerSpec]]:
    """Every (client config, server) pair of the matrix, in the order they run."""
    runs: list[tuple[RunConfig, ServerSpec]] = []
    max_item = max(args.size, 65535)
    # memcached's cache must hold every message, or it evicts and the run reports losses.
    mem_mb = max(64, args.messages * (args.size + 200) * 2 // (1 << 20) + 16)
    for client in args.client:
        for kind, mode in TARGETS:
            # memcached, beanstalkd and the floor have one mode each; --modes picks the others'.
            if kind not in args.servers or not runs_with(kind, client):
                continue
            if kind not in ("memcached", "beanstalkd", "pyfloor") and mode not in args.modes:
                continue
            if kind == "kestrelq":
                specs = [
                    replace(kestrelq_template(args), fsync=f, build=b)
                    for f in args.fsync
                    for b in args.builds
                ]
            elif kind in DARNER_KINDS:
                specs = [ServerSpec(kind, binary=str(args.darner))]
            else:
                specs = [ServerSpec(kind, memory_mb=mem_mb, max_item_bytes=max_item)]
            for spec in specs:
                for c in args.clients:
                    cfg = RunConfig(kind, mode, c, args.messages, args.size, client)
                    runs.append((cfg, spec))
    return runs


def run_matrix(args: argparse.Namespace, work_dir: Path) -> tuple[list[RunResult], list[str]]:
    results: list[RunResult] = []
    errors: list[str] = []
    todo = plan(args)
    total = len(todo) * args.repeat
    done = 0
    # Round-robin over the repeats: a burst of other work on the machine then lands on one
    # run of several configurations, and the medians drop it, instead of sinking all the
    # runs of one configuration.
    for rep in range(args.repeat):
        for cfg, spec in todo:
            done += 1
            t0 = time.monotonic()
            tag = (
                f"[{done}/{total}] {spec.label} {cfg.mode} C={cfg.clients} {cfg.client} "
                f"run {rep + 1}"
            )
            try:
                r = run_once(cfg, spec, work_dir)
            except Exception as exc:
                errors.append(f"{tag}: {exc}")
                log.error("%s: FAILED: %s", tag, exc)
                continue
            results.append(r)
            verdict = (
                "ok" if r.complete else (f"LOST {r.missing} CORRUPT {r.corrupt} DUP {r.duplicates}")
            )
            log.info(
                "%s: enq %.0f/s deq %.0f/s p99 %.0f/%.0f µs cpu %.1f/%.1f µs/msg rss %.1f MB "
                "%s (%.1f s)",
                tag,
                r.enqueue.rate,
                r.dequeue.rate,
                r.enqueue.percentile(99),
                r.dequeue.percentile(99),
                r.enqueue.cpu_us_per_msg,
                r.dequeue.cpu_us_per_msg,
                r.peak_rss_kb / 1024,
                verdict,
                time.monotonic() - t0,
            )
            if not r.complete:
                errors.append(f"{tag}: {verdict}")
    return results, errors


@dataclass
class LoadRow:
    label: str
    mode: str
    enq_rate: float
    deq_rate: float
    enq_cpu: float
    deq_cpu: float
    enq_p99: float
    deq_p99: float
    verified: int
    runs: int


def run_loadgen(args: argparse.Namespace, work_dir: Path) -> tuple[list[LoadRow], list[str]]:
    variants: list[tuple[ServerSpec, str]] = []
    if "memcached" in args.servers:
        # Room for every message: memcached evicts silently when its cache is full.
        mem_mb = max(256, args.loadgen_messages * (args.size + 200) * 2 // (1 << 20) + 16)
        variants.append((ServerSpec("memcached", memory_mb=mem_mb), "kv"))
    if "pyfloor" in args.servers:
        variants.append((ServerSpec("pyfloor"), "plain"))
    if "kestrelq" in args.servers:
        for f in args.fsync:
            for mode in args.modes:
                for b in args.builds:
                    variants.append((replace(kestrelq_template(args), fsync=f, build=b), mode))
    rows: list[LoadRow] = []
    errors: list[str] = []
    n = args.loadgen_messages
    runs: dict[int, list[loadgen.LoadResult]] = {i: [] for i in range(1, len(variants) + 1)}
    # Round-robin over the repeats, as in the matrix.
    for rep in range(args.repeat):
        for i, (spec, mode) in enumerate(variants, 1):
            tag = f"[loadgen {i}/{len(variants)}] {spec.label} {mode} run {rep + 1}"
            server = start(spec, work_dir)
            try:
                res = loadgen.run(
                    server.port,
                    spec.kind,
                    n,
                    args.size,
                    args.loadgen_connections,
                    args.loadgen_depth,
                    mode="reliable" if mode == "reliable" else "plain",
                    pid=server.pid,
                )
            except Exception as exc:
                errors.append(f"{tag}: {exc}")
                log.error("%s: FAILED: %s", tag, exc)
                continue
            finally:
                server.stop()
            runs[i].append(res)
            log.info(
                "%s: set %.0f/s (%.1f µs cpu/msg) get %.0f/s (%.1f µs cpu/msg) %s",
                tag,
                res.enqueue.rate,
                res.enqueue.server_cpu_us_per_msg or 0.0,
                res.dequeue.rate,
                res.dequeue.server_cpu_us_per_msg or 0.0,
                "ok" if res.complete else f"LOST {res.missing} CORRUPT {res.corrupt}",
            )
            if not res.complete:
                errors.append(f"{tag}: lost {res.missing}, corrupt {res.corrupt}")
    for i, (spec, mode) in enumerate(variants, 1):
        got = runs[i]
        if got:
            med = statistics.median
            rows.append(
                LoadRow(
                    spec.label,
                    mode,
                    med(r.enqueue.rate for r in got),
                    med(r.dequeue.rate for r in got),
                    med(r.enqueue.server_cpu_us_per_msg or 0.0 for r in got),
                    med(r.dequeue.server_cpu_us_per_msg or 0.0 for r in got),
                    med(r.enqueue.batch_p99_us for r in got),
                    med(r.dequeue.batch_p99_us for r in got),
                    sum(1 for r in got if r.complete),
                    len(got),
                )
            )
    return rows, errors


def loadgen_markdown(args: argparse.Namespace, rows: list[LoadRow]) -> str:
    lines = [
        f"{args.loadgen_messages} messages of {args.size} B over {args.loadgen_connections} "
        f"connections, {args.loadgen_depth} commands in flight on each (batch p99 = round trip "
        "of one pipelined batch).",
        "",
        "| server | mode | set/s | set CPU µs/msg | set batch p99 µs | get/s | get CPU µs/msg "
        "| get batch p99 µs | verified |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.mode} | {r.enq_rate:,.0f} | {r.enq_cpu:.1f} | {r.enq_p99:.0f} "
            f"| {r.deq_rate:,.0f} | {r.deq_cpu:.1f} | {r.deq_p99:.0f} | {r.verified}/{r.runs} |"
        )
    return "\n".join(lines) + "\n"


def loadgen_checks(rows: list[LoadRow], ref_label: str) -> list[report.Check]:
    by = {(r.label, r.mode): r for r in rows}
    mc = by.get(("memcached", "kv"))
    checks: list[report.Check] = []
    if mc is None:
        return checks
    kq_sets = [by[(ref_label, m)] for m in ("plain", "reliable") if (ref_label, m) in by]
    if kq_sets and mc.enq_cpu:
        # Both modes enqueue with the same `set`: judge it once, on the first run that has it.
        checks.append(
            report.Check(
                f"loadgen: {ref_label} set CPU / memcached set",
                kq_sets[0].enq_cpu / mc.enq_cpu,
                2.0,
                "le",
            )
        )
    for mode in ("plain", "reliable"):
        kq = by.get((ref_label, mode))
        if kq is None or not mc.deq_cpu:
            continue
        op = "get q/close/open" if mode == "reliable" else "get q"
        checks.append(
            report.Check(
                f"loadgen: {ref_label} {op} CPU / memcached get", kq.deq_cpu / mc.deq_cpu, 2.0, "le"
            )
        )
    return checks


def preflight(args: argparse.Namespace) -> str | None:
    """Check the peers are installed and build what the run needs: None when it cannot run,
    else the note on the builds for the report (see ensure_builds)."""
    missing = [b for b in missing_binaries() if b.split("-")[0] in args.servers]
    if missing:
        log.error("not installed: %s (apt-get install memcached beanstalkd redis-server)", missing)
        return None
    try:
        return ensure_builds(args)
    except CompileError as exc:
        log.error("--builds %s: %s", ",".join(args.builds), exc)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    build_note = preflight(args)
    if build_note is None:
        return 1
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    stem = args.name or stamp
    args.out.mkdir(parents=True, exist_ok=True)
    ref_build = reference_build(args)
    ref_label = kestrelq_label(args.ref_fsync, ref_build)
    sections: list[str] = []
    checks: list[report.Check] = []
    errors: list[str] = []
    raw: dict[str, object] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "revision": source_revision(),
    }
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kestrelq-bench-") as tmp:
        work_dir = Path(tmp)
        rows: list[report.Row] = []
        mini_rows: list[report.Row] = []
        if not args.no_matrix:
            results, errs = run_matrix(args, work_dir)
            errors += errs
            mini = [r for r in results if r.config.client == "minimal"]
            if mini:
                mini_rows = report.aggregate(mini, ref_label)
                report.peer_ratios(mini_rows)
                checks += report.peer_checks(mini_rows, ref_build)
                sections.append(
                    f"## Minimal client\n\n{args.messages} messages of {args.size} B per run, "
                    f"median of {args.repeat} run(s), C client processes, each with the minimal "
                    "client (bench/miniclient.py: one request, one reply, no pipelining), the "
                    "same for every server.\n\n"
                    + report.summary_table(mini_rows)
                    + "\nEvery row, with latency and the server's CPU:\n\n"
                    + report.minimal_table(mini_rows)
                )
                raw["minimal"] = [asdict(r) for r in mini_rows]
            rows = report.aggregate(
                [r for r in results if r.config.client == "pymemcache"], ref_label
            )
            if rows:
                checks += report.target_checks(rows, ref_label)
                sections.append(
                    f"## Client matrix\n\n{args.messages} messages of {args.size} B per run, "
                    f"median of {args.repeat} run(s), pymemcache / redis-py / a raw beanstalkd "
                    f"client, one client per process.\n\n" + report.table(rows, ref_label)
                )
                raw["matrix"] = [asdict(r) for r in rows]
        if not args.no_loadgen:
            lrows, errs = run_loadgen(args, work_dir)
            errors += errs
            checks += loadgen_checks(lrows, ref_label)
            sections.append("## Pipelined load generator\n\n" + loadgen_markdown(args, lrows))
            raw["loadgen"] = [asdict(r) for r in lrows]
        wanted_scenarios: list[tuple[bool, str, Callable[[], scenarios.Section]]] = [
            (
                args.fsync_scale,
                "fsync scaling",
                lambda: scenarios.fsync_scale(
                    work_dir,
                    args.fsync_scale_messages,
                    args.fsync_scale_producers,
                    args.size,
                    template=kestrelq_template(args),
                ),
            ),
            (
                args.backlog > 0,
                "backlog",
                lambda: scenarios.backlog(
                    work_dir,
                    args.backlog,
                    size=args.backlog_size,
                    fsync=args.backlog_fsync,
                    restart_signal=signal.Signals["SIG" + args.restart_signal],
                    compaction_wait_s=args.compaction_wait,
                    template=kestrelq_template(args),
                ),
            ),
            (
                args.fairness,
                "fairness",
                lambda: scenarios.fairness(
                    work_dir,
                    seconds=args.fairness_seconds,
                    clients=args.fairness_clients,
                    rate=args.fairness_rate,
                    big_bytes=args.fairness_big_mib << 20,
                    fsync=args.ref_fsync,
                    template=kestrelq_template(args),
                ),
            ),
        ]
        for wanted, title, run in wanted_scenarios:
            if not wanted:
                continue
            log.info("[scenario] %s ...", title)
            try:
                sec = run()
            except Exception as exc:
                errors.append(f"{title}: {exc}")
                log.error("[scenario] %s FAILED: %s", title, exc)
                continue
            if not sec.ok:
                errors.append(f"{title}: messages lost or corrupted")
            checks += sec.checks
            sections.append(f"## {sec.title}\n\n{sec.markdown}")
            raw[title] = sec.numbers
            log.info("[scenario] %s done", title)
        png = args.out / f"{stem}.png"
        # pymemcache's matrix when there is one: it has every peer.
        chart_rows = rows or mini_rows
        if chart_rows:
            report.chart(
                chart_rows, png, f"kestrelq bench {stamp}: N={args.messages}, S={args.size} B"
            )
    elapsed = time.monotonic() - started
    load_end = os.getloadavg()[0]
    head = (
        f"# kestrelq benchmark {stamp}\n\nRatios and targets against **{ref_label}**. "
        f"Took {elapsed:.0f} s. Command: `python -m bench {' '.join(argv or sys.argv[1:])}`\n\n"
        f"kestrelq at {source_revision()}; {os.cpu_count()} CPUs; load average "
        f"{load_start:.2f} at the start, {load_end:.2f} at the end (above ~0.5 other work "
        "shared the machine and the numbers are noisier).\n"
        f"\n{builds_line(args, build_note)}\n"
    )
    body = head + "\n## Targets\n\n" + report.checks_table(checks) + "\n" + "\n".join(sections)
    if errors:
        body += "\n## Errors\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
    md = args.out / f"{stem}.md"
    md.write_text(body)
    raw["checks"] = [asdict(c) | {"passed": c.passed} for c in checks]
    raw["errors"] = errors
    (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=2, default=str))
    print(body)
    log.info("wrote %s%s", md, f" and {png}" if chart_rows else "")
    if errors:
        return 1
    if args.strict and not all(c.passed for c in checks):
        return 2
    return 0
