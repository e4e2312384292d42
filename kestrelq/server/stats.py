"""The `stats` and `dump_stats` replies, built a few hundred queues at a time.

With 10,000 queues one `stats` reply is about 5 MB, and building it takes ~100 ms of the one
event-loop thread: twenty pipelined `stats` held every other client for two seconds. So each
reply is a generator of parts; the connection writes a part, lets the event loop serve others,
and asks for the next only while the client keeps reading (flow control applies as to any
reply). A queue deleted between two parts is left out; nothing else changes on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator

from kestrelq import __version__
from kestrelq.protocol import replies
from kestrelq.server.state import ServerState

# Queues per part: small enough that a part costs ~2 ms, large enough that a server with a
# few queues answers in one part (and one write), as before.
QUEUES_PER_PART = 200

Pairs = list[tuple[str, object]]


def server_lines(server: ServerState, now: float) -> Pairs:
    coll = server.collection
    items, total_bytes = coll.totals()
    c = coll.counters
    store = server.store
    return [
        ("uptime", int(now - server.started_s)),
        ("time", int(now)),
        ("version", __version__),
        ("curr_items", items),
        ("total_items", c.total_items),
        ("bytes", total_bytes),
        ("curr_connections", len(server.connections)),
        ("total_connections", server.counters.total_connections),
        ("cmd_get", c.cmd_get),
        ("cmd_set", c.cmd_set),
        ("cmd_peek", c.cmd_peek),
        ("get_hits", c.get_hits),
        ("get_misses", c.get_misses),
        ("bytes_read", server.counters.bytes_read),
        ("bytes_written", server.counters.bytes_written),
        ("queue_creates", c.queue_creates),
        ("queue_deletes", c.queue_deletes),
        ("queue_expires", c.queue_expires),
        ("fsync_policy", server.config.fsync),
        ("sync_reads", int(server.config.sync_reads)),
        ("fsyncs", store.fsyncs),
        ("journal_bytes", sum(j.total_size for j in store.journals.values())),
        ("disk_full", int(store.reserve_released)),
        ("pending_bytes", server.pending.taken),
        ("pending_waiters", server.pending.waiting),
        ("timed_out_connections", server.counters.timed_out_connections),
    ]


def queue_lines(server: ServerState, name: str, now_ms: int) -> Pairs:
    state = server.collection.queues[name]
    journal = server.store.journals.get(name)
    s = state.stats
    pairs: Pairs = [
        ("items", state.items),
        ("bytes", state.bytes),
        ("total_items", s.total_items),
        ("logsize", journal.total_size if journal else 0),
        ("expired_items", s.expired_items),
        ("mem_items", len(state.ready)),
        ("mem_bytes", state.mem_bytes),
        ("age", state.age_ms()),
        ("discarded", s.discarded),
        ("waiters", server.waiters.count(name)),
        ("open_transactions", len(state.open_reads)),
        ("transactions", s.transactions),
        ("canceled_transactions", s.canceled_transactions),
        ("total_flushes", s.total_flushes),
        ("journal_rotations", journal.rotations if journal else 0),
        ("dead_lettered", s.dead_lettered),
        ("timed_out_transactions", s.timed_out_transactions),
        ("got_items", s.got_items),
        ("oldest_age_ms", state.oldest_age_ms(now_ms)),
    ]
    children = server.collection.children(name)
    if children:
        pairs.append(("children", ",".join(children)))
    return pairs


def stats_parts(server: ServerState) -> Iterator[tuple[bytes, bool]]:
    """The `stats` reply in (part, last) pairs: server lines, `queue_<name>_<key>` lines, END."""
    now = server.clock()
    now_ms = int(now * 1000)
    queues = server.collection.queues
    lines = server_lines(server, now)
    names = sorted(queues)
    for start in range(0, len(names), QUEUES_PER_PART):
        for name in names[start : start + QUEUES_PER_PART]:
            if name in queues:
                lines += [(f"queue_{name}_{k}", v) for k, v in queue_lines(server, name, now_ms)]
        if start + QUEUES_PER_PART < len(names):
            yield replies.stat_lines(lines), False
            lines = []
    yield replies.stat_lines(lines) + replies.END, True


def dump_stats_parts(server: ServerState, wanted: tuple[str, ...]) -> Iterator[tuple[bytes, bool]]:
    """`dump_stats [queue...]`: a block per existing queue (all when none named), then END."""
    now_ms = server.now_ms()
    queues = server.collection.queues
    names = list(wanted) if wanted else sorted(queues)
    part: list[bytes] = []
    for start in range(0, len(names), QUEUES_PER_PART):
        for name in names[start : start + QUEUES_PER_PART]:
            if name in queues:
                part.append(replies.dump_stats_block(name, queue_lines(server, name, now_ms)))
        if start + QUEUES_PER_PART < len(names):
            yield b"".join(part), False
            part = []
    yield b"".join(part) + replies.END, True
