"""`python -m bench.compare OLD.json NEW.json`: what changed between two bench runs.

For work on the server (measure each change; keep what pays): run `make bench` before and
after a change, then compare the two JSON files row by row. Rates are shown as
NEW/OLD (above 1 is faster), CPU per message as NEW/OLD (below 1 is cheaper).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

Key = tuple[str, ...]


def _rows(raw: dict[str, Any], section: str, keys: tuple[str, ...]) -> dict[Key, dict[str, Any]]:
    return {tuple(str(r[k]) for k in keys): r for r in raw.get(section, [])}


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}" if old else "-"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    out: list[str] = [
        f"old: {old.get('revision', '?')}  new: {new.get('revision', '?')}",
        "",
    ]
    fields = ("enq_rate", "deq_rate", "enq_cpu", "deq_cpu")
    for section, keys, title in (
        ("minimal", ("label", "mode", "clients"), "Minimal client"),
        ("matrix", ("label", "mode", "clients"), "Client matrix"),
        ("loadgen", ("label", "mode"), "Pipelined load generator"),
    ):
        a = _rows(old, section, keys)
        b = _rows(new, section, keys)
        common = [k for k in a if k in b]
        if not common:
            continue
        out += [
            f"## {title}",
            "",
            "| " + " | ".join(keys) + " | enq/s old → new | x | deq/s old → new | x "
            "| enq CPU x | deq CPU x |",
            "|" + "---|" * (len(keys) + 6),
        ]
        for k in common:
            o, n = (a[k][f] for f in fields), (b[k][f] for f in fields)
            eo, do, co_e, co_d = o
            en, dn, cn_e, cn_d = n
            out.append(
                "| " + " | ".join(k) + f" | {eo:,.0f} → {en:,.0f} | {_ratio(en, eo)} "
                f"| {do:,.0f} → {dn:,.0f} | {_ratio(dn, do)} | {_ratio(cn_e, co_e)} "
                f"| {_ratio(cn_d, co_d)} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    print(compare(json.loads(args.old.read_text()), json.loads(args.new.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
