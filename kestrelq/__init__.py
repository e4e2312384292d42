"""kestrelq: a Kestrel-compatible persistent queue server, worker runtime and supervised stack."""

from __future__ import annotations

__version__ = "0.1.0"

# What `version` answers: the Kestrel release whose protocol we speak, then our own version.
# libmemcached (memcping, memcstat, PHP's Memcached) refuses a reply whose major number is 0.
WIRE_VERSION = f"2.4.1 kestrelq-{__version__}"

__all__ = ["WIRE_VERSION", "__version__"]
