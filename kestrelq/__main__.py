from __future__ import annotations

from kestrelq.cli import main

raise SystemExit(main())
