"""The import graph of the package: no cycle, and nothing imports upward.

docs/architecture.md states the rule ("imports run one way, from the edge down to the core");
this test is its check. It reads every module's `import` and `from ... import` statements with
`ast` (those under `if TYPE_CHECKING:` count too: a type-only cycle is still a cycle of ideas),
so a new upward import fails here before it confuses a reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import kestrelq

PACKAGE = Path(kestrelq.__file__).resolve().parent

# What each part of the package may import of the others. The core is at the top of the list:
# errors and value import nothing, the journal only them, and so on up to the command line.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "value": set(),
    # The list of compiled modules; it loads them by name, when asked, to see how they loaded.
    "hotpath": set(),
    "journal": {"errors", "value"},
    "queue": {"errors", "value", "journal"},
    "protocol": {"errors", "value", "queue"},
    "credentials": {"errors"},
    "servers": {"errors"},
    "certs": {"errors"},
    "client": {"errors", "value", "protocol", "credentials", "servers"},
    "producer": {"errors", "credentials", "servers"},
    "requeue": {"errors", "credentials", "client", "servers"},
    "server": {
        "errors",
        "value",
        "journal",
        "queue",
        "protocol",
        "credentials",
        "client",
        "servers",
        "hotpath",
    },
    "worker": {"errors", "credentials", "client", "servers", "producer"},
    "supervisord": {"errors", "queue", "servers"},
    "dashboard": {"errors", "credentials", "client", "servers", "requeue"},
    "cli": {"server", "worker", "supervisord", "certs", "dashboard"},
    "__main__": {"cli"},
}
# `kestrelq/__init__.py` (the version) may be imported by anyone.
TOP = "kestrelq"


def module_name(path: Path) -> str:
    parts = ("kestrelq", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """The kestrelq modules that `path` imports (a `from kestrelq.x import y` names x.y if
    that is a module, else x)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == TOP)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != TOP:
                continue
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                yield candidate if candidate in MODULES else node.module


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): set(imported(p)) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else TOP


def test_every_part_of_the_package_is_placed() -> None:
    assert {part(m) for m in MODULES} - {TOP} == set(ALLOWED)


def test_imports_between_parts_run_one_way() -> None:
    upward = sorted(
        f"{src} imports {dst}"
        for src, dsts in GRAPH.items()
        for dst in dsts
        if part(dst) not in (part(src), TOP) and part(dst) not in ALLOWED[part(src)]
    )
    assert upward == []


def test_the_allowed_parts_form_no_cycle() -> None:
    # The table itself must be a hierarchy, or "one way" means nothing.
    seen: dict[str, int] = {}

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, " -> ".join((*stack, node))
        if seen.get(node):
            return
        for nxt in ALLOWED.get(node, set()):
            visit(nxt, (*stack, node))
        seen[node] = 1

    for name in ALLOWED:
        visit(name, ())


def test_no_module_imports_itself_back() -> None:
    cycles = []
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []
