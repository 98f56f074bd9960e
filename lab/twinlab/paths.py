"""Where the lab keeps its files: everything under lab/, big artifacts in gitignored folders."""

from __future__ import annotations

import os
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent.parent
GUEST_DIR = LAB_DIR / "guest"
IMAGE_FILES_DIR = GUEST_DIR / "image"
CACHE_DIR = Path(os.environ.get("TWINLOG_LAB_CACHE", LAB_DIR / ".cache"))
RUN_DIR = Path(os.environ.get("TWINLOG_LAB_RUN", LAB_DIR / "run"))
