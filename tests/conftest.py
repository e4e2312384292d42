"""Shared pytest configuration. Its presence puts tests/ on sys.path, so `import helpers` works."""

from __future__ import annotations
