"""Turn repeated runs into medians, ratios to kestrelq, a Markdown table and a PNG chart.

The minimal client's table holds every row against its two rulers instead: darner, the C++
Kestrel clone (a peer to beat), and the Python floor (bench/pyfloor.py, the least a Python
server can do per message).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.drivers import OP_NAMES
from bench.runner import PhaseResult, RunResult
from bench.servers import kestrelq_label

# Which kestrelq mode a peer's row is held against: its closest equivalent.
REFERENCE_MODE = {"kv": "plain", "plain": "plain", "reliable": "reliable"}


@dataclass
class Row:
    """The median over the repeats of one (server, mode, clients) run."""

    label: str
    kind: str
    mode: str
    clients: int
    runs: int
    verified: int
    enq_rate: float
    enq_p50: float
    enq_p99: float
    enq_cpu: float
    deq_rate: float
    deq_p50: float
    deq_p99: float
    deq_cpu: float
    peak_rss_mb: float
    enq_ratio: float | None = None
    deq_ratio: float | None = None
    # Half the range of the repeats' rates over their median: how far to trust a row.
    enq_spread: float = 0.0
    deq_spread: float = 0.0
    # The minimal client's rulers (peer_ratios): darner's rate in the matching mode (darner-sync
    # for kestrelq fsync=always) and the Python floor's, at the same client count.
    enq_vs_darner: float | None = None
    deq_vs_darner: float | None = None
    enq_vs_floor: float | None = None
    deq_vs_floor: float | None = None

    @property
    def ops(self) -> tuple[str, str]:
        return OP_NAMES[(self.kind, self.mode)]


def _median(results: list[RunResult], get: Callable[[RunResult], float]) -> float:
    return statistics.median(get(r) for r in results)


def _spread(values: list[float]) -> float:
    mid = statistics.median(values)
    return (max(values) - min(values)) / 2 / mid if mid else 0.0


def _phase(getter: Callable[[RunResult], PhaseResult]) -> tuple[Callable[[RunResult], float], ...]:
    return (
        lambda r: getter(r).rate,
        lambda r: getter(r).percentile(50),
        lambda r: getter(r).percentile(99),
        lambda r: getter(r).cpu_us_per_msg,
    )


def aggregate(results: Iterable[RunResult], ref_label: str) -> list[Row]:
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.server_label, r.config.mode, r.config.clients), []).append(r)
    rows: list[Row] = []
    for (label, mode, clients), rs in groups.items():
        enq = [_median(rs, f) for f in _phase(lambda r: r.enqueue)]
        deq = [_median(rs, f) for f in _phase(lambda r: r.dequeue)]
        rows.append(
            Row(
                label=label,
                kind=rs[0].config.kind,
                mode=mode,
                clients=clients,
                runs=len(rs),
                verified=sum(1 for r in rs if r.complete),
                enq_rate=enq[0],
                enq_p50=enq[1],
                enq_p99=enq[2],
                enq_cpu=enq[3],
                deq_rate=deq[0],
                deq_p50=deq[1],
                deq_p99=deq[2],
                deq_cpu=deq[3],
                peak_rss_mb=_median(rs, lambda r: r.peak_rss_kb / 1024.0),
                enq_spread=_spread([r.enqueue.rate for r in rs]),
                deq_spread=_spread([r.dequeue.rate for r in rs]),
            )
        )
    by_key = {(r.label, r.mode, r.clients): r for r in rows}
    for row in rows:
        ref = by_key.get((ref_label, REFERENCE_MODE[row.mode], row.clients))
        if ref is not None and ref.enq_rate > 0 and ref.deq_rate > 0:
            row.enq_ratio = row.enq_rate / ref.enq_rate
            row.deq_ratio = row.deq_rate / ref.deq_rate
    return rows


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pm(spread: float) -> str:
    return f" ±{100 * spread:.0f}%" if spread else ""


def table(rows: list[Row], ref_label: str) -> str:
    head = (
        "| server | mode | C | enqueue op | enq msg/s | enq vs ref | enq p50 µs | enq p99 µs "
        "| enq CPU µs/msg | dequeue op | deq msg/s | deq vs ref | deq p50 µs | deq p99 µs "
        "| deq CPU µs/msg | peak RSS MB | verified |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        put_op, take_op = r.ops
        lines.append(
            f"| {r.label} | {r.mode} | {r.clients} | {put_op} "
            f"| {r.enq_rate:,.0f}{_pm(r.enq_spread)} "
            f"| {_fmt_ratio(r.enq_ratio)} | {r.enq_p50:.0f} | {r.enq_p99:.0f} | {r.enq_cpu:.1f} "
            f"| {take_op} | {r.deq_rate:,.0f}{_pm(r.deq_spread)} | {_fmt_ratio(r.deq_ratio)} "
            f"| {r.deq_p50:.0f} "
            f"| {r.deq_p99:.0f} | {r.deq_cpu:.1f} | {r.peak_rss_mb:.1f} | {r.verified}/{r.runs} |"
        )
    note = (
        f"\n'vs ref' is the row's median rate divided by {ref_label}'s in the matching mode "
        "(memcached's get against plain `get q`; beanstalkd's reserve+delete against "
        "`get q/close/open`). Latency is per operation as the client saw it; CPU is the "
        "server's, all threads, over the phase. ±: half the range of the repeats' rates, "
        "relative to the median."
    )
    return "\n".join(lines) + "\n" + note + "\n"


FLOOR = "python floor"
ALWAYS = kestrelq_label("always")
NEVER = kestrelq_label("never")
COMPILED = " compiled"
# The minimal table's order: the ceiling, the peer, the floor, kestrelq without a sync per
# set, then what fsyncs every set; each kestrelq's compiled build right after its pure one.
# Anything else (another fsync policy) follows kestrelq's.
_ORDER = ("memcached", "darner", FLOOR, NEVER, "darner-sync", ALWAYS)
_MODE_ORDER = {"kv": 0, "plain": 0, "reliable": 1}


def darner_peer(label: str) -> str:
    """The darner a row is held against: darner-sync when the row fsyncs every set too."""
    return "darner-sync" if label.removesuffix(COMPILED) == ALWAYS else "darner"


def _ratio(row: Row, ref: Row | None) -> tuple[float | None, float | None]:
    if ref is None or ref.enq_rate <= 0 or ref.deq_rate <= 0:
        return None, None
    return row.enq_rate / ref.enq_rate, row.deq_rate / ref.deq_rate


def peer_ratios(rows: list[Row]) -> None:
    """Fill each row's ratios to darner and to the floor (None where the run had no such row).

    A get is held against darner's get of the same kind (reliable against `get q/close/open`,
    plain and memcached's keyed get against plain `get q`), or against darner's other get when
    the run has only that one (`--modes reliable`: memcached's and the floor's plain gets
    against darner's reliable one); every get against the floor's,
    which has only the plain one.
    """
    by_key = {(r.label, r.mode, r.clients): r for r in rows}
    for row in rows:
        name, mode = darner_peer(row.label), REFERENCE_MODE[row.mode]
        other = "plain" if mode == "reliable" else "reliable"
        peer = by_key.get((name, mode, row.clients)) or by_key.get((name, other, row.clients))
        row.enq_vs_darner, row.deq_vs_darner = _ratio(row, peer)
        row.enq_vs_floor, row.deq_vs_floor = _ratio(row, by_key.get((FLOOR, "plain", row.clients)))


def _rank(row: Row) -> tuple[int, str, bool, int, int]:
    label = row.label.removesuffix(COMPILED)
    if label in _ORDER:
        rank = _ORDER.index(label)
    else:
        rank = _ORDER.index(NEVER) if label.startswith("kestrelq") else len(_ORDER)
    return rank, label, row.label != label, _MODE_ORDER.get(row.mode, 2), row.clients


def _k(rate: float) -> str:
    return f"{rate / 1000:.1f}k"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def summary_table(rows: list[Row]) -> str:
    """One line per server and get: every client count in one cell ("1 / 4"), rates and ratios."""
    counts = sorted({r.clients for r in rows})
    by_key = {(r.label, r.mode, r.clients): r for r in rows}
    lines = [
        "| server | get op | C | set msg/s | get msg/s | set vs darner | get vs darner "
        "| set vs floor | get vs floor |",
        "|" + "---|" * 9,
    ]
    seen: list[tuple[str, str]] = []
    for r in sorted(rows, key=_rank):
        if (r.label, r.mode) not in seen:
            seen.append((r.label, r.mode))
    for label, mode in seen:
        line = [by_key[(label, mode, c)] for c in counts if (label, mode, c) in by_key]

        def cell(get: Callable[[Row], str], line: list[Row] = line) -> str:
            return " / ".join(get(r) for r in line)

        lines.append(
            f"| {label} | {line[0].ops[1]} | {cell(lambda r: str(r.clients))} "
            f"| {cell(lambda r: _k(r.enq_rate))} | {cell(lambda r: _k(r.deq_rate))} "
            f"| {cell(lambda r: _x(r.enq_vs_darner))} | {cell(lambda r: _x(r.deq_vs_darner))} "
            f"| {cell(lambda r: _x(r.enq_vs_floor))} | {cell(lambda r: _x(r.deq_vs_floor))} |"
        )
    return "\n".join(lines) + "\n"


def minimal_table(rows: list[Row]) -> str:
    """The minimal client's table: rates, and their ratios to darner and to the floor."""
    lines = [
        "| server | C | set op | set msg/s | vs darner | vs floor | get op | get msg/s "
        "| vs darner | vs floor | set p99 µs | get p99 µs | server CPU µs/msg set / get "
        "| verified |",
        "|" + "---|" * 14,
    ]
    for r in sorted(rows, key=_rank):
        put_op, take_op = r.ops
        lines.append(
            f"| {r.label} | {r.clients} | {put_op} | {r.enq_rate:,.0f}{_pm(r.enq_spread)} "
            f"| {_fmt_ratio(r.enq_vs_darner)} | {_fmt_ratio(r.enq_vs_floor)} | {take_op} "
            f"| {r.deq_rate:,.0f}{_pm(r.deq_spread)} | {_fmt_ratio(r.deq_vs_darner)} "
            f"| {_fmt_ratio(r.deq_vs_floor)} | {r.enq_p99:.0f} | {r.deq_p99:.0f} "
            f"| {r.enq_cpu:.1f} / {r.deq_cpu:.1f} | {r.verified}/{r.runs} |"
        )
    note = (
        "\n'vs darner' is the row's median rate divided by darner's at the same C, get against "
        "the same kind of get (plain `get q` for memcached's keyed get and the floor's) when "
        "darner ran it, else against darner's other get; "
        f"{ALWAYS} (pure or compiled) is held against darner-sync, which fsyncs every set as "
        "it does. "
        "'vs floor' divides by the Python floor's plain `set q` / `get q`. '-': the run had no "
        "such row (darner runs only with --darner BIN). ±: half the range of the repeats' "
        "rates, relative to the median."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def peer_checks(rows: list[Row], build: str = "pure") -> list[Check]:
    """The targets against darner: fsync=never against darner, fsync=always against darner-sync.

    Sets: at least darner's rate, and with fsync=always 1.5x darner-sync's once clients are
    concurrent (group commit against one sync per set). Reliable gets: at least darner's.
    Judged on kestrelq's `build` (the compiled one when it ran: it is what the images ship).
    """
    by_key = {(r.label, r.mode, r.clients): r for r in rows}
    checks: list[Check] = []
    for c in sorted({r.clients for r in rows}):
        for label in (kestrelq_label("never", build), kestrelq_label("always", build)):
            peer = darner_peer(label)
            # Both modes set alike: judge the set on the reliable pair, else on the plain one.
            pairs = [
                (by_key.get((label, m, c)), by_key.get((peer, m, c))) for m in ("reliable", "plain")
            ]
            kq_set, peer_set = next(((k, d) for k, d in pairs if k and d), (None, None))
            if kq_set and peer_set and peer_set.enq_rate:
                need = 1.0 if peer == "darner" or c == 1 else 1.5
                checks.append(
                    Check(f"C={c}: {label} set / {peer} set (minimal client)",
                          kq_set.enq_rate / peer_set.enq_rate, need)
                )  # fmt: skip
            kq_rel, peer_rel = pairs[0]
            if kq_rel and peer_rel and peer_rel.deq_rate:
                checks.append(
                    Check(
                        f"C={c}: {label} get q/close/open / {peer}'s (minimal client)",
                        kq_rel.deq_rate / peer_rel.deq_rate,
                        1.0,
                    )
                )
    return checks


@dataclass
class Check:
    name: str
    value: float
    target: float
    # "ge": value must be at least target; "le": at most.
    sense: str = "ge"
    detail: str = field(default="")

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.sense == "ge" else self.value <= self.target


def target_checks(rows: list[Row], ref_label: str) -> list[Check]:
    """The throughput targets that the client matrix can judge."""
    by_key = {(r.label, r.mode, r.clients): r for r in rows}
    checks: list[Check] = []
    for c in sorted({r.clients for r in rows}):
        mc = by_key.get(("memcached", "kv", c))
        bs = by_key.get(("beanstalkd", "reliable", c))
        kq_plain = by_key.get((ref_label, "plain", c))
        kq_rel = by_key.get((ref_label, "reliable", c))
        # Both modes enqueue with the same `set`; the plain run is judged when there is one.
        kq_set = kq_plain or kq_rel
        if mc and kq_set and mc.enq_rate:
            checks.append(
                Check(f"C={c}: {ref_label} set / memcached set", kq_set.enq_rate / mc.enq_rate, 0.9)
            )
        if mc and kq_rel and mc.deq_rate:
            checks.append(
                Check(
                    f"C={c}: {ref_label} get q/close/open / memcached get",
                    kq_rel.deq_rate / mc.deq_rate,
                    0.9,
                )
            )
        if bs and kq_rel and bs.deq_rate:
            checks.append(
                Check(
                    f"C={c}: {ref_label} get q/close/open / beanstalkd reserve+delete",
                    kq_rel.deq_rate / bs.deq_rate,
                    1.5,
                )
            )
    return checks


def checks_table(checks: list[Check]) -> str:
    if not checks:
        return "(no targets could be judged from this run)\n"
    lines = ["| target | measured | needed | result |", "|---|---|---|---|"]
    for c in checks:
        op = ">=" if c.sense == "ge" else "<="
        verdict = "PASS" if c.passed else "FAIL"
        lines.append(f"| {c.name} | {c.value:.3g} | {op} {c.target:g} | {verdict} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path, title: str) -> None:
    """Grouped bars: throughput and p99 per server variant, one bar per client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants: list[tuple[str, str]] = []
    for r in rows:
        if (r.label, r.mode) not in variants:
            variants.append((r.label, r.mode))
    counts = sorted({r.clients for r in rows})
    by_key = {(r.label, r.mode, r.clients): r for r in rows}
    fig, axes = plt.subplots(2, 2, figsize=(max(10, 1.3 * len(variants) + 4), 9))
    panels: tuple[tuple[Any, str, Callable[[Row], float]], ...] = (
        (axes[0][0], "enqueue msg/s", lambda r: r.enq_rate),
        (axes[0][1], "dequeue msg/s", lambda r: r.deq_rate),
        (axes[1][0], "enqueue p99 latency (µs)", lambda r: r.enq_p99),
        (axes[1][1], "dequeue p99 latency (µs)", lambda r: r.deq_p99),
    )
    width = 0.8 / max(1, len(counts))
    names = [f"{label}\n{mode}" for label, mode in variants]
    for ax, ylabel, get in panels:
        for j, c in enumerate(counts):
            xs = [i + (j - (len(counts) - 1) / 2) * width for i in range(len(variants))]
            ys = [
                get(by_key[(lab, mode, c)]) if (lab, mode, c) in by_key else 0.0
                for lab, mode in variants
            ]
            ax.bar(xs, ys, width=width, label=f"C={c}")
        ax.set_ylabel(ylabel)
        if "latency" in ylabel:
            # fsync=always sits two orders of magnitude above the rest; a linear axis hides them.
            ax.set_yscale("log")
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
