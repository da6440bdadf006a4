"""The cache of device profiles: one JSON file a key, `<mlruns>/profiles/<key>.json`, named by
the sha256 of what the numbers depend on (profile/measure.py's `profile_study` makes the key),
read back only for the same key, and written whole or not at all.

Layer: profile (the device's hardware profile; docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_FOLDER = "profiles"  # under the study's mlruns folder


def key_digest(key: dict[str, Any]) -> str:
    """The cache key's name: the first 24 hex digits of the sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def cache_path(folder: str | Path, key: dict[str, Any]) -> Path:
    """<folder>/<key_digest>.json."""
    return Path(folder) / f"{key_digest(key)}.json"


def read_cached(path: Path, key: dict[str, Any]) -> dict | None:
    """The profile stored at `path` for this key, marked cached; None if absent or unreadable."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key or "profile" not in stored:
        return None
    return {**stored["profile"], "cached": True}


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace, so a
    reader (or a killed writer) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
