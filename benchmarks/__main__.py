"""``python -m benchmarks``: see :mod:`benchmarks.runner`."""

from __future__ import annotations

from benchmarks.runner import main

raise SystemExit(main())
