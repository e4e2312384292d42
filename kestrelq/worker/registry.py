"""Resolve `module:attribute` handler strings (as in `kestrelq work --handler tasks:handle`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class HandlerNotFound(ValueError):
    """The handler string does not name an importable callable."""


def resolve(spec: str) -> Callable[..., Any]:
    """Import `module:attr` (attr may be dotted) and return the callable it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerNotFound(f"handler {spec!r} must look like module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerNotFound(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise HandlerNotFound(f"{spec!r} is not callable")
    return obj  # type: ignore[no-any-return]
