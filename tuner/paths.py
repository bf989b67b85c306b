"""Where runtime data lives (``$TUNER_HOME`` or ``./storage``), how a study's relative paths
resolve, and atomic file writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def storage_root() -> Path:
    return Path(os.environ.get("TUNER_HOME", "storage"))


def resolve_path(base_dir: str | Path, path: str) -> Path:
    """``path`` from a study file: absolute as is; else the first that exists of the study file's
    directory, the working directory and ``studies/`` (so a study stored in a database resolves
    on another machine's checkout too); else relative to the study file's directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    for candidate in (Path(base_dir) / p, p, Path("studies") / p):
        if candidate.exists():
            return candidate
    return Path(base_dir) / p


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``.

    Readers never see a half-written file; a crash leaves at most a stray ``.tmp``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
