"""This user's local cache folder, shared by the Ray-free modules (dataset arrays) and the full install (an
empty MLflow store): standard library only."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache() -> Path:
    """This user's local cache of things banray derives once and reuses (an empty MLflow store, dataset arrays
    and splits): $XDG_CACHE_HOME/banray, else ~/.cache/banray."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "banray"
