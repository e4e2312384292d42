"""The optional compiled hot path, at install time: `KESTRELQ_COMPILE=1 pip install .`

Everything else about the package is in pyproject.toml. With KESTRELQ_COMPILE=1 the modules
named in kestrelq/hotpath.py are compiled with mypyc into the wheel beside their sources;
without it the wheel is pure Python, as before. The in-tree build backend
(build_backend/kestrelq_build.py) asks for mypy in the build environment only when compiling.
An editable install is never compiled: its extension modules would sit in the checkout and
hide every later edit of their sources (`make compile` builds a separate tree instead).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ext_modules = []
if os.environ.get("KESTRELQ_COMPILE") == "1" and "editable_wheel" not in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mypyc.build import mypycify

    from kestrelq import hotpath

    ext_modules = mypycify(hotpath.source_paths(), opt_level="3")

setup(ext_modules=ext_modules)
