"""The user's cache folder: the one place derived data (prepared cases, split shapes, built anatomies) is kept."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(name: str) -> Path:
    """``name`` under $MSKAI_CACHE_DIR, else $XDG_CACHE_HOME/mskai or ~/.cache/mskai: never inside the installed
    extension or the working directory. Not created here."""
    root = os.environ.get("MSKAI_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mskai"
    return Path(root).expanduser() / name
