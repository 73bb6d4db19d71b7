"""Where tinytrain looks for data and keeps caches: an explicit path, else an environment variable, else ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_root() -> Path:
    """($XDG_CACHE_HOME or ~/.cache)/tinytrain."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tinytrain"


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory: `explicit` (--data-dir), else $TINYTRAIN_DATA, else <user cache>/data. Not created here."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get("TINYTRAIN_DATA"):
        return Path(os.environ["TINYTRAIN_DATA"]).expanduser()
    return user_cache_root() / "data"


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The cache directory: `explicit`, else $TINYTRAIN_CACHE, else the user cache root. Not created here."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get("TINYTRAIN_CACHE"):
        return Path(os.environ["TINYTRAIN_CACHE"]).expanduser()
    return user_cache_root()
