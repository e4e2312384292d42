"""The generated files on disk: write them, tell how they drift, make the directories they name.

The only module of `kestrelq conf` that touches the file system. A generated file is known by
its header (`GENERATED_MARK`), so a file a user added to supervisord.d/ is never deleted.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from kestrelq.supervisord.render import GENERATED_MARK
from kestrelq.supervisord.stack import Stack


def _stale(out_dir: Path, files: Mapping[str, str]) -> list[str]:
    """Generated .ini files in out_dir/supervisord.d that this rendering no longer produces."""
    stale = []
    for path in sorted((out_dir / "supervisord.d").glob("*.ini")):
        rel = f"supervisord.d/{path.name}"
        if rel not in files and GENERATED_MARK in path.read_text(errors="replace")[:200]:
            stale.append(rel)
    return stale


def write_files(out_dir: Path, files: Mapping[str, str]) -> list[str]:
    """Write the files (only those that changed) and delete stale generated ones.

    Returns the relative paths that were written or deleted.
    """
    changed = []
    for rel, text in files.items():
        path = out_dir / rel
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        changed.append(rel)
    for rel in _stale(out_dir, files):
        (out_dir / rel).unlink()
        changed.append(rel)
    return changed


def drift(out_dir: Path, files: Mapping[str, str]) -> str:
    """A unified diff between the files on disk and a fresh rendering ('' when equal)."""
    chunks: list[str] = []
    for rel, text in files.items():
        path = out_dir / rel
        old = path.read_text() if path.exists() else ""
        if old != text:
            chunks += difflib.unified_diff(
                old.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"{rel} (on disk)",
                f"{rel} (rendered)",
            )
    for rel in _stale(out_dir, files):
        chunks.append(f"{rel}: generated file that the description no longer produces\n")
    return "".join(chunks)


def make_dirs(out_dir: Path, stack: Stack) -> list[Path]:
    """Create run, log and data directories (supervisord does not create them)."""
    made = []
    for rel in (stack.run_dir, stack.log_dir, stack.data_dir):
        path = Path(rel) if os.path.isabs(rel) else out_dir / rel
        path.mkdir(parents=True, exist_ok=True)
        made.append(path.resolve())
    return made
