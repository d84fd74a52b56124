"""A small on-disk cache for generated tensors, written atomically and verified.

Each entry is two files under ``data/cache/``: ``<name>-<key>.pt`` (a dict of tensors saved
with ``torch.save``) and ``<name>-<key>.sha256`` (the SHA-256 of the ``.pt`` bytes). Both are
written to a temporary file in the same folder and moved into place with ``os.replace``,
so a reader never sees half a file. On load the checksum is recomputed; a missing,
truncated or corrupt entry is rebuilt (and a warning says so).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Mapping

import torch

from kit import paths


def params_key(params: Mapping) -> str:
    """A short stable hash of JSON-serialisable parameters (the cache key)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def save(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Save a dict of tensors with its checksum (data first, checksum last)."""
    buffer = io.BytesIO()
    torch.save(dict(tensors), buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, payload)
    atomic_write_bytes(path.with_suffix(".sha256"), _sha256(payload).encode())


def load(path: Path) -> dict[str, torch.Tensor] | None:
    """Load a verified entry, or return ``None`` when it is missing, truncated or corrupt."""
    path = Path(path)
    checksum_file = path.with_suffix(".sha256")
    if not path.exists() or not checksum_file.exists():
        return None
    payload = path.read_bytes()
    if _sha256(payload) != checksum_file.read_text().strip():
        return None
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception:  # a checksum match with unreadable content: treat as corrupt
        return None


def cached(name: str, params: Mapping, build: Callable[[], Mapping[str, torch.Tensor]],
           folder: Path | None = None) -> dict[str, torch.Tensor]:
    """Return the cached tensors for ``(name, params)``, building and saving them if needed."""
    folder = Path(folder) if folder is not None else paths.data_dir() / "cache"
    path = folder / f"{name}-{params_key(params)}.pt"
    entry = load(path)
    if entry is not None:
        return entry
    if path.exists():
        warnings.warn(f"cache entry {path.name} failed its checksum; rebuilding it", stacklevel=2)
    tensors = dict(build())
    save(path, tensors)
    return tensors
