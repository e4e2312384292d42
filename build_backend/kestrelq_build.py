"""setuptools' build backend, asking for mypy (mypyc) only when KESTRELQ_COMPILE=1 (setup.py).

An editable install is never compiled (setup.py says why): its hooks run with the flag
cleared, so an exported KESTRELQ_COMPILE=1 does not break `pip install -e .`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every other hook is setuptools' own

_FLAG = "KESTRELQ_COMPILE"


@contextlib.contextmanager
def _not_compiling() -> Iterator[bool]:
    """The flag cleared for the duration; yields whether it was set."""
    compiling = os.environ.pop(_FLAG, None) == "1"
    try:
        yield compiling
    finally:
        if compiling:
            os.environ[_FLAG] = "1"


def get_requires_for_build_wheel(config_settings: dict[str, str] | None = None) -> list[str]:
    # setuptools runs setup.py to answer this, before mypy is installed: it must not compile.
    with _not_compiling() as compiling:
        wanted: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return [*wanted, "mypy>=1.10"] if compiling else wanted


def get_requires_for_build_editable(config_settings: dict[str, str] | None = None) -> list[str]:
    with _not_compiling():
        wanted: list[str] = _setuptools.get_requires_for_build_editable(config_settings)
    return wanted


def prepare_metadata_for_build_editable(metadata_directory: str, *args: Any) -> str:
    with _not_compiling():
        name: str = _setuptools.prepare_metadata_for_build_editable(metadata_directory, *args)
    return name


def build_editable(wheel_directory: str, *args: Any) -> str:
    with _not_compiling():
        name: str = _setuptools.build_editable(wheel_directory, *args)
    return name
