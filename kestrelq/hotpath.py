"""The compiled hot path: which modules it covers, and whether this process runs them compiled.

Every command a client sends runs through the same few modules: the parser and the replies, the
queue's add and take, the journal's record framing, batching and fsync bookkeeping, and the
connection that drives them. Built with `KESTRELQ_COMPILE=1` (or `make compile`), these modules
are compiled to C extension modules by mypyc from this very source, with the types the code
already declares; built without it, the same source runs as plain Python. There is one source
and so one behaviour: the tests run against both builds (`make test-compiled`).

mypyc, not a second implementation in Cython or C: nothing to keep in step by hand, and the
compiled build is checked by the same mypy strict run as the rest. Debian packages it
(python3-mypy), so the images compile offline in a build stage.
"""

from __future__ import annotations

import importlib
import importlib.machinery

# Dotted names, in the order they are compiled. Only modules whose per-command work is worth
# compiling: the server's start-up, configuration and admin code gain nothing.
MODULES: tuple[str, ...] = (
    "kestrelq.protocol.buffer",
    "kestrelq.protocol.commands",
    "kestrelq.protocol.parser",
    "kestrelq.protocol.replies",
    "kestrelq.queue.collection",
    "kestrelq.queue.state",
    "kestrelq.journal.item",
    "kestrelq.journal.format",
    "kestrelq.journal.ledger",
    "kestrelq.journal.writer",
    "kestrelq.server.connection",
    "kestrelq.server.state",
    "kestrelq.server.budget",
    "kestrelq.journal.policy",
    "kestrelq.journal.store",
    "kestrelq.queue.config",
)


def source_paths() -> list[str]:
    """The modules' source files, relative to the directory that holds `kestrelq/`."""
    return [name.replace(".", "/") + ".py" for name in MODULES]


def compiled_modules() -> list[str]:
    """The hot-path modules this process has loaded from compiled extension modules."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in MODULES:
        origin = getattr(importlib.import_module(name), "__file__", None) or ""
        if origin.endswith(suffixes):
            found.append(name)
    return found


def describe() -> str:
    """One line for the server's start-up log."""
    done = compiled_modules()
    if not done:
        return "hot path: pure Python"
    if len(done) == len(MODULES):
        return f"hot path: compiled (mypyc, {len(done)} modules)"
    missing = ", ".join(sorted(set(MODULES) - set(done)))
    return f"hot path: partly compiled ({len(done)} of {len(MODULES)}; pure: {missing})"
