"""The journal's record opcodes, apart from format.py so that they stay plain Python.

mypyc 1.0 (Debian bookworm's, which builds the images) cannot compile references to the members
of an IntEnum defined in a compiled module: it loads them as final names it never stores. Kept
in a module that is not compiled, they are ordinary attribute reads.
"""

from __future__ import annotations

from enum import IntEnum


class Opcode(IntEnum):
    ADD = 1
    REMOVE = 2
    OPEN = 3
    CONFIRM = 4
    UNREMOVE = 5
    FLUSH = 6
    CHECKPOINT = 7
    SNAP_ADD = 8
    BEHIND = 9
