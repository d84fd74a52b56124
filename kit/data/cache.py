"""A small on-disk cache for generated tensors, written atomically and verified.

Each entry is two files under ``data/cache/``: ``<name>-<key>.pt`` (a dict of tensors saved
with ``torch.save``) and ``<name>-<key>.sha256`` (the SHA-256 of the ``.pt`` bytes). Both are
written to a temporary file in the same folder and moved into place with ``os.replace``,
so a reader never sees half a file. On load the checksum is recomputed; a missing,
truncated or corrupt entry is rebuilt (and a warning says so).

The key of an entry hashes the generator's parameters *and its source code*
(:func:`source_hash`), so editing a generator regenerates its data. A writer killed between
creating its temporary file and moving it into place leaves an orphan
``.<name>.<pid>.<random>.tmp``; the next write to the same path deletes the orphans whose
writer is no longer running (:func:`kit.io.remove_orphans`). A folder that cannot be written (a
read-only checkout) is not an error: :func:`cached` warns and returns the data it built.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable, Mapping

import torch

from kit import paths
from kit.io import atomic_write_bytes

def params_key(params: Mapping) -> str:
    """A short stable hash of JSON-serialisable parameters (the cache key)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- generator source


def _kit_data_imports(path: Path) -> set[str]:
    """Names of the ``kit.data`` modules a source file imports (``from kit.data.shapes import ...``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("kit.data."):
                found.add(node.module)
            elif node.module == "kit.data":  # from kit.data import shapes
                found.update(f"kit.data.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kit.data."))
    return found


def source_hash(module: str, folder: Path | None = None) -> str:
    """SHA-256 (16 hex digits) of a generator module's source and of the ``kit.data`` modules it uses.

    ``module`` is a dotted name such as ``"kit.data.shapes"``. The imports are followed
    transitively inside ``kit.data`` (``finegrained`` draws with ``shapes``' helpers, so an edit
    to ``shapes.py`` changes both keys). This module is left out: it stores the tensors, it
    does not draw them. Reads a few small files per call, as the notebooks' provenance
    does. ``folder`` (default: the
    folder of this file, ``kit/data/``) is for tests.
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent  # kit/data/
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        if name in seen or name == __name__:
            continue
        path = folder / f"{name.rsplit('.', 1)[-1]}.py"
        if not name.startswith("kit.data.") or not path.is_file():
            raise ValueError(f"source_hash needs a module file under kit/data/, got {name!r}")
        seen.add(name)
        pending.extend(_kit_data_imports(path))
    digest = hashlib.sha256()
    for name in sorted(seen):  # (file name, bytes) pairs in a fixed order
        digest.update(name.encode() + b"\0" + (folder / f"{name.rsplit('.', 1)[-1]}.py").read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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
    """Return the cached tensors for ``(name, params)``, building and saving them if needed.

    When the entry cannot be written (a read-only data folder, a full disk) the built tensors
    are returned anyway, with a warning: the cache only saves time.
    """
    folder = Path(folder) if folder is not None else paths.data_dir() / "cache"
    path = folder / f"{name}-{params_key(params)}.pt"
    entry = load(path)
    if entry is not None:
        return entry
    if path.exists():
        warnings.warn(f"cache entry {path.name} failed its checksum; rebuilding it", stacklevel=2)
    tensors = dict(build())
    try:
        save(path, tensors)
    except OSError as error:
        warnings.warn(f"could not write the cache entry {path} ({error}); returning the data without "
                      "caching it (make the folder writable, or set KIT_ROOT to a writable copy)", stacklevel=2)
    return tensors
