"""Make the repository root importable so `import bench` finds the harness package.

`python -m pytest` puts the working directory on sys.path, but plain `pytest` does not, and
then `bench` would resolve to this very directory (tests/bench) as a namespace package.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
