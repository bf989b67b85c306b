"""Model fingerprints: what the stats cache and every trial are keyed by."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def state_fingerprint(model: Any) -> str:
    """sha256 over parameter names and bytes (cheap for small models)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_fingerprint(path: Path) -> str:
    """For large local checkpoints: config plus each weight file's name, size and edges."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix not in (".json", ".safetensors", ".bin", ".model", ".py"):
            continue
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]
