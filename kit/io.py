"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything the kit writes to disk (data caches, checkpoints, results records, executed
notebooks) goes through :func:`atomic_write_bytes`. The bytes go to a temporary file beside
the target and are moved into place with ``os.replace``. A writer killed between the two
leaves an orphan ``.<name>.<pid>.<random>.tmp``; the next write to the same path deletes the
orphans whose writer is no longer running (:func:`remove_orphans`).
"""
from __future__ import annotations

import glob
import io
import os
import re
import tempfile
import time
from pathlib import Path

# Temporary files left by writers that used a random name without a pid (before the pid was
# part of the name) are deleted once they are this old: no write of bytes takes minutes.
ORPHAN_AGE_SECONDS = 15 * 60


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive but someone else's; anything else: assume alive
        return True
    return True


def remove_orphans(path: Path) -> None:
    """Delete the temporary files of earlier writes to ``path`` whose writer is gone.

    A live writer's file is never touched: new-style names carry the writer's pid
    (``.<name>.<pid>.<random>.tmp``) and are removed only when that pid no longer runs;
    old-style names (``.<name>.<random>.tmp``) only once older than :data:`ORPHAN_AGE_SECONDS`.
    """
    name = re.escape(path.name)
    with_pid = re.compile(rf"^\.{name}\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
    without_pid = re.compile(rf"^\.{name}\.[A-Za-z0-9_]{{8}}\.tmp$")
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return
    for candidate in candidates:
        match = with_pid.match(candidate.name)
        try:
            if match:
                orphan = int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1)))
            else:
                orphan = bool(without_pid.match(candidate.name)) and (
                    time.time() - candidate.stat().st_mtime > ORPHAN_AGE_SECONDS)
            if orphan:
                candidate.unlink()
        except OSError:  # gone already, or not ours to delete: leave it
            pass


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to ``.<name>.<pid>.<random>.tmp`` beside ``path`` and are moved into place;
    orphans of killed earlier writers are removed first (see :func:`remove_orphans`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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


def save_torch(path: Path, obj: object) -> None:
    """``torch.save`` of ``obj`` to ``path``, written atomically (the folder is created)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
