"""Provenance of executed notebooks, and when a notebook is stale.

An executed notebook carries ``metadata["kit"]``: the profile and device it ran on, torch
and Python versions, the date, the wall time, a hash of its own code cells, and a hash of
every kit module its kernel had imported. It is *stale* when its code cells or one of those
modules changed since, or when it ran at a smaller profile than the one asked for (outputs
from the gpu profile also count as fresh for a cpu request: they are the preferred ones).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kit import paths

PROFILE_RANK = {"smoke": 0, "cpu": 1, "gpu": 2}


def code_hash(notebook: dict) -> str:
    """SHA-256 of the notebook's code cells, in order (outputs and markdown excluded)."""
    digest = hashlib.sha256()
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            digest.update(("".join(source) if isinstance(source, list) else source).encode())
            digest.update(b"\0")
    return digest.hexdigest()


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The source file of a kit module (``kit.det.tood`` -> ``kit/det/tood.py``), or None."""
    root = Path(root) if root is not None else paths.root()
    parts = name.split(".")
    candidates = [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    return next((p for p in candidates if p.is_file()), None)


def module_hash(name: str, root: Path | None = None) -> str | None:
    """SHA-256 of a kit module's source, or None if the module no longer exists."""
    path = module_file(name, root)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else None


def modules_hashes(names, root: Path | None = None) -> dict[str, str]:
    """Hashes of the kit modules (not ``kit.book``: the build tools are not notebook code)."""
    kept = sorted(n for n in set(names) if (n == "kit" or n.startswith("kit.")) and not n.startswith("kit.book"))
    return {n: h for n in kept if (h := module_hash(n, root)) is not None}


@dataclass
class Status:
    """Whether a notebook needs executing at a profile, and why."""

    state: str  # "fresh", "stale" or "never"
    reasons: list[str] = field(default_factory=list)
    provenance: dict | None = None

    @property
    def needs_run(self) -> bool:
        return self.state != "fresh"


def status(notebook: dict, profile: str, root: Path | None = None) -> Status:
    """Is ``notebook`` (a parsed .ipynb) up to date for ``profile``?"""
    if profile not in PROFILE_RANK:
        raise ValueError(f"profile must be one of {list(PROFILE_RANK)}, got {profile!r}")
    meta = notebook.get("metadata", {}).get("kit")
    if not meta:
        return Status("never", ["never executed by the kit"])
    reasons = []
    ran_at = meta.get("profile")
    fresh_profile = ran_at == profile or (ran_at == "gpu" and profile == "cpu")
    if not fresh_profile:
        reasons.append(f"executed at profile {ran_at}, asked for {profile}")
    if meta.get("code_sha256") != code_hash(notebook):
        reasons.append("its code cells changed")
    for name, recorded in meta.get("modules", {}).items():
        current = module_hash(name, root)
        if current is None:
            reasons.append(f"module {name} no longer exists")
        elif current != recorded:
            reasons.append(f"module {name} changed")
    return Status("stale" if reasons else "fresh", reasons, meta)
