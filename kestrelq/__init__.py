"""kestrelq: a Kestrel-compatible persistent queue server, worker runtime and supervised stack."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
