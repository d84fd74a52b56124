"""Provenance of executed notebooks, and when a notebook is stale.

An executed notebook carries ``metadata["kit"]``: the profile and device it ran on, torch
and Python versions, the date, the wall time, a hash of its own code cells, a hash of every
kit module its kernel had imported, and a hash of every kit source it shows on the page. It
is *stale* when one of those changed since, or when it ran at a smaller profile than the one
asked for (outputs from the gpu profile also count as fresh for a cpu request: they are the
preferred ones).

What a page depends on, and why these hashes
--------------------------------------------
A page's outputs depend on the code its kernel ran, and its text on the source it displays.

- **The code it ran**: each imported kit module is hashed as its syntax tree with docstrings
  removed (``ast.dump`` carries no comments, no line numbers and no formatting). A comment, a
  docstring, a re-wrapped line or a moved function leaves the hash alone: none of them can
  change a number. Any change to what runs — a constant, an argument default, an expression —
  changes it. (A program could read a docstring at run time; no notebook does, and a page that
  prints one shows it through ``kit.show``, below.) The granularity stays the module: a page
  that imports a module is taken to depend on all of it, since following calls across modules
  statically would miss dynamic dispatch and is not worth its errors.
- **The source it shows**: ``kit.show.source`` tags each block it displays with the module and
  qualified name; execution records a hash of that object's exact source text (decorators,
  docstring and comments included), found by name in the module's syntax tree. Editing the
  docstring of a function a page displays makes that page stale, and only that page.

Before this, whole module files were hashed, so a comment edit re-executed every notebook
that imported the module.
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kit import paths
from kit.profiles import PROFILES

PROFILE_RANK = {name: rank for rank, name in enumerate(PROFILES)}  # smallest scale first


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


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """The tree with the docstring of every module, class and function removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(text: str) -> str:
    """SHA-256 of what a module's source runs: its syntax tree without docstrings.

    Comments, docstrings, blank lines and line breaks inside brackets do not count. A file that
    does not parse is hashed as its bytes (it is stale either way).
    """
    try:
        tree = _without_docstrings(ast.parse(text))
    except SyntaxError:
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(("ast:" + ast.dump(tree)).encode()).hexdigest()


def module_hash(name: str, root: Path | None = None) -> str | None:
    """Fingerprint of the code a kit module runs (:func:`code_fingerprint`), or None if it no longer exists."""
    path = module_file(name, root)
    return code_fingerprint(path.read_text()) if path else None


def _find_definition(tree: ast.Module, qualname: str):
    """The class or function node named by ``qualname`` (``Class.method``), or None."""
    body = tree.body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def shown_source_hash(module: str, qualname: str, root: Path | None = None) -> str | None:
    """SHA-256 of the exact source of ``module.qualname`` (decorators and docstring included), or None.

    None when the module is not a kit module in this repository, or holds no such definition.
    """
    path = module_file(module, root) if module == "kit" or module.startswith("kit.") else None
    if path is None:
        return None
    text = path.read_text()
    try:
        node = _find_definition(ast.parse(text), qualname)
    except SyntaxError:
        return None
    if node is None:
        return None
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = text.splitlines()[first - 1:node.end_lineno]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def shown_sources(notebook: dict) -> list[tuple[str, str]]:
    """The (module, qualname) of every source block ``kit.show.source`` displayed in the outputs."""
    shown = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            tag = output.get("metadata", {}).get("kit_source")
            if isinstance(tag, dict) and (tag.get("module"), tag.get("qualname")) not in shown:
                shown.append((tag.get("module"), tag.get("qualname")))
    return shown


def shown_hashes(notebook: dict, root: Path | None = None) -> dict[str, str]:
    """``{"module:qualname": hash}`` of the kit sources the executed notebook shows."""
    hashes = {}
    for module, qualname in shown_sources(notebook):
        if isinstance(module, str) and isinstance(qualname, str):
            digest = shown_source_hash(module, qualname, root)
            if digest is not None:
                hashes[f"{module}:{qualname}"] = digest
    return hashes


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
    for key, recorded in meta.get("shown", {}).items():
        module, _, qualname = key.partition(":")
        current = shown_source_hash(module, qualname, root)
        if current is None:
            reasons.append(f"the source it shows, {module}.{qualname}, no longer exists")
        elif current != recorded:
            reasons.append(f"the source it shows, {module}.{qualname}, changed")
    return Status("stale" if reasons else "fresh", reasons, meta)
