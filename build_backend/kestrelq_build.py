"""setuptools' build backend, asking for mypy (mypyc) only when KESTRELQ_COMPILE=1 (setup.py)."""

from __future__ import annotations

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every other hook is setuptools' own

_FLAG = "KESTRELQ_COMPILE"


def get_requires_for_build_wheel(config_settings: dict[str, str] | None = None) -> list[str]:
    compiling = os.environ.get(_FLAG) == "1"
    # setuptools runs setup.py to answer this, before mypy is installed: it must not compile.
    os.environ.pop(_FLAG, None)
    try:
        wanted = _setuptools.get_requires_for_build_wheel(config_settings)
    finally:
        if compiling:
            os.environ[_FLAG] = "1"
    return [*wanted, "mypy>=1.10"] if compiling else wanted
