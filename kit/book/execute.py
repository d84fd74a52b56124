"""Execute the notebooks that are stale or never ran, and write outputs and provenance back.

    python -m kit.book.execute [--profile auto|smoke|cpu|gpu] [--all] [--check] [NOTEBOOK ...]

Without notebook paths it looks at every ``notebooks/**/*.ipynb``. A notebook is executed in
a fresh kernel (nbclient) with ``KIT_PROFILE`` set (and ``ONEDNN_MAX_CPU_ISA=AVX2`` unless set: see
the Makefile) and its own folder as the working directory; a last probe cell, removed
afterwards, reports which kit modules the kernel imported and on what device it ran. ``--all``
executes every notebook whatever its state;
``--check`` executes nothing and exits with 1 if any notebook would be executed. A notebook
that cannot be read (malformed JSON, not a notebook, outside the repository) or fails to
execute is reported by name and the others go on; the exit status is then 1, with the
failures listed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from kit import paths
from kit.book import provenance
from kit.io import atomic_write_bytes
from kit.profiles import resolve

PROBE = """\
import sys as _sys, json as _json, platform as _platform
import torch as _torch
_device = (_torch.cuda.get_device_name(0) if _torch.cuda.is_available()
           else f"CPU ({_platform.machine()}, {_torch.get_num_threads()} threads)")
print("KIT-PROBE " + _json.dumps({"modules": sorted(m for m in _sys.modules if m == "kit" or m.startswith("kit.")),
                                  "device": _device, "torch": _torch.__version__}))
"""


def find_notebooks(root: Path | None = None) -> list[Path]:
    root = Path(root) if root is not None else paths.root()
    return sorted(p for p in (root / "notebooks").glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _probe_result(cell) -> dict:
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        text = "".join(text) if isinstance(text, list) else text
        for line in text.splitlines():
            if line.startswith("KIT-PROBE "):
                return json.loads(line[len("KIT-PROBE "):])
    raise RuntimeError("the provenance probe cell printed nothing; the kernel did not finish")


def execute(path: Path, profile: str, timeout: int = 1800) -> dict:
    """Execute one notebook in place at ``profile``; returns its new provenance."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    previous = os.environ.get("KIT_PROFILE")
    os.environ["KIT_PROFILE"] = profile
    # the kernel inherits this: oneDNN's AVX-512 kernels crash in some strided 1x1 convolutions'
    # backward (see the Makefile); ``make`` sets it already, a direct ``python -m`` run gets it here
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    started = time.perf_counter()
    try:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        if previous is None:
            os.environ.pop("KIT_PROFILE", None)
        else:
            os.environ["KIT_PROFILE"] = previous
    wall = time.perf_counter() - started
    probe = _probe_result(notebook.cells.pop())
    meta = {
        "profile": profile,
        "device": probe["device"],
        "torch": probe["torch"],
        "python": platform.python_version(),
        "executed_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(wall, 1),
        "code_sha256": provenance.code_hash(notebook),
        "modules": provenance.modules_hashes(probe["modules"]),
        "shown": provenance.shown_hashes(notebook),
    }
    notebook.metadata["kit"] = meta
    atomic_write_bytes(path, nbformat.writes(notebook).encode())
    return meta


def _check_notebook_path(path: Path) -> Path:
    """The resolved path of a notebook to execute: an existing ``.ipynb`` inside the repository.

    A notebook outside the repository cannot be stamped with provenance (its kit modules are
    hashed relative to the root), so it is refused.
    """
    resolved = Path(path).resolve()
    root = paths.root()
    if not resolved.is_relative_to(root):
        raise ValueError(f"it is outside the repository {root}; the executor runs notebooks under "
                         f"{root / 'notebooks'} only")
    if resolved.suffix != ".ipynb" or not resolved.is_file():
        raise ValueError("it is not an existing .ipynb file")
    return resolved


def _read_status(path: Path, profile: str):
    """(resolved path, provenance status) of one notebook; ValueError naming what is wrong."""
    import nbformat

    resolved = _check_notebook_path(path)
    try:
        return resolved, provenance.status(nbformat.read(resolved, as_version=4), profile)
    except Exception as error:  # NotJSONError, unreadable bytes, metadata of the wrong shape
        raise ValueError(f"it is not a readable notebook ({type(error).__name__}: {error}); "
                         "a notebook is nbformat 4 JSON") from None


def main(argv: list[str] | None = None) -> int:
    """Check every notebook, execute the stale ones; a bad or failing notebook does not stop the others.

    Returns 1 when any notebook could not be read or executed (each is named, and listed again
    at the end), or with ``--check`` when any is stale; 0 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--profile", default=os.environ.get("KIT_PROFILE", "auto"))
    parser.add_argument("--all", action="store_true", help="execute every notebook, fresh or not")
    parser.add_argument("--check", action="store_true", help="execute nothing; exit 1 if any notebook is stale")
    args = parser.parse_args(argv)
    try:
        profile = resolve(args.profile)
    except ValueError as error:
        parser.error(str(error))
    notebooks = args.notebooks or find_notebooks()

    pending, failures = [], []
    for path in notebooks:
        try:
            resolved, state = _read_status(path, profile)
        except ValueError as error:
            failures.append(f"{path}: {error}")
            print(f"FAILED: {failures[-1]}", file=sys.stderr, flush=True)
            continue
        name = resolved.relative_to(paths.root())
        if state.needs_run or args.all:
            pending.append(resolved)
            print(f"{name}: {state.state if not args.all else 'forced'} ({'; '.join(state.reasons) or 'asked'})")
        else:
            print(f"{name}: fresh at {state.provenance['profile']} ({state.provenance['executed_at']})")
    if not args.check:
        for path in pending:
            print(f"executing {path.name} at profile {profile} ...", flush=True)
            try:
                meta = execute(path, profile)
            except Exception as error:  # a failing notebook fails the build, loudly, after the others ran
                failures.append(f"{path}: {error}")
                print(f"FAILED: {failures[-1]}", file=sys.stderr, flush=True)
                continue
            print(f"  done in {meta['wall_seconds']} s on {meta['device']}", flush=True)
    if failures:
        print(f"{len(failures)} notebook(s) failed:", *(f"  {f}" for f in failures), sep="\n", file=sys.stderr)
        return 1
    return 1 if args.check and pending else 0


if __name__ == "__main__":
    sys.exit(main())
