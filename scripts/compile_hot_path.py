"""Compile kestrelq's hot path with mypyc into DEST, a directory that then holds a whole package.

    python scripts/compile_hot_path.py DEST [--source DIR]

DEST/kestrelq/ gets a copy of the package's sources (from DIR, the repository root by default)
with the modules of kestrelq/hotpath.py compiled beside them, and DEST/ the runtime library mypyc
shares between them. Put DEST first on sys.path (PYTHONPATH, or run from it) and those modules
load compiled; the copy keeps the checkout itself pure Python, so an edit to a source file is
never hidden by a stale extension module. Used by `make compile` and by the images' build stage
(with Debian's python3-mypy: no network needed).

The compile runs in a scratch directory holding only the package: setuptools would otherwise
read the project's pyproject.toml, which Debian's older setuptools cannot parse, and which the
compile does not need.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="kestrelq-hot-path", ext_modules=mypycify(sys.argv[1:], opt_level="3"),
      script_args=["build_ext", "--inplace"])
"""


def _hot_paths(source: Path) -> list[str]:
    # Read from the source being compiled, not from whatever kestrelq this interpreter imports.
    sys.path.insert(0, str(source))
    try:
        from kestrelq import hotpath
    finally:
        sys.path.pop(0)
    return hotpath.source_paths()


def compile_into(dest: Path, source: Path) -> list[Path]:
    """Compile, then install the package with its extension modules into `dest`."""
    work = dest / ".build"
    package = work / "kestrelq"
    # The scratch copy is refreshed, not recreated: mypyc's cache in `work` then makes a rebuild
    # after a small change quick.
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(
        source / "kestrelq", package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    paths = _hot_paths(source)
    subprocess.run([sys.executable, "-c", _SETUP, *paths], cwd=work, check=True)
    target = dest / "kestrelq"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = sorted(target.rglob(f"*{suffix}"))
    for shared in work.glob(f"*__mypyc{suffix}"):
        shutil.copy2(shared, dest / shared.name)
        built.append(dest / shared.name)
    expected = {dest / Path(p).with_suffix(suffix) for p in paths}
    missing = expected - set(built)
    if missing:
        raise SystemExit(f"compile_hot_path: not built: {', '.join(map(str, sorted(missing)))}")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    built = compile_into(dest, args.source.resolve())
    print(f"compile_hot_path: {len(built)} extension modules in {dest}")


if __name__ == "__main__":
    main()
