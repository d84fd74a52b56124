"""The kit's layering, read from its source: what ``kit/__init__.py``'s docstring promises.

Every module of ``kit/`` is parsed with :mod:`ast` (imports inside functions included, and
``importlib.import_module("kit....")`` with a literal name) and must

1. import only from its own layer or the layers below it (:data:`LAYERS`, the map of the
   docstring's "Layers" list);
2. use no private (``_``-prefixed) name of another kit module, neither imported
   (``from kit.x import _y``) nor reached as an attribute (``kit.x._y``, ``x._y`` after
   ``from kit import x``);
3. be at most :data:`MAX_LINES` lines long, unless its docstring has a line starting with
   :data:`LONG_MARKER` that says why it is one piece.

The helpers are tested too (the last tests), on small sources with a known violation each, so a
check that finds nothing is known to be looking.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "kit"

# Top-level part of a module's name -> its layer (kit/__init__.py, "Layers"; bottom = 1).
LAYERS = {
    "paths": 1, "profiles": 1, "runtime": 1, "io": 1,
    "data": 2, "ops": 2,
    "nn": 3,
    "det": 4, "seg": 4,
    "analysis": 5, "eval": 5,
    "train": 6, "checkpoint": 6, "experiment": 6, "verdicts": 6, "results": 6, "hpo": 6,
    "viz": 7, "show": 7,
    "notebook": 8, "book": 8,
}
PACKAGE_LAYER = 1  # ``kit`` itself (kit/__init__.py) loads only profiles and runtime
MAX_LINES = 300
LONG_MARKER = "Long because"


# --------------------------------------------------------------------------- reading the source

def module_name(path: Path, root: Path = KIT) -> str:
    """``kit/det/assigners.py`` -> ``kit.det.assigners``; ``kit/det/__init__.py`` -> ``kit.det``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kit_modules(root: Path = KIT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def layer_of(name: str) -> int:
    """The layer of a kit module (KeyError naming it if the map does not know it)."""
    parts = name.split(".")
    if parts == ["kit"]:
        return PACKAGE_LAYER
    if parts[1] not in LAYERS:
        raise KeyError(f"{name} is in no layer: add {parts[1]!r} to LAYERS here and to kit/__init__.py's docstring")
    return LAYERS[parts[1]]


@dataclass(frozen=True)
class Use:
    """One reference from a module to a kit module: ``name`` (the module), ``attribute`` (a name
    taken from it, or None for the module itself), and the line."""

    name: str
    attribute: str | None
    line: int


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def uses(tree: ast.AST, importer: str, is_package: bool, modules: set[str]) -> list[Use]:
    """Every kit module ``tree`` imports, and every name it takes from one (imported or as an attribute)."""
    found: list[Use] = []
    aliases: dict[str, str] = {}  # local name -> kit module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "kit" or alias.name.startswith("kit."):
                    found.append(Use(alias.name, None, node.lineno))
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases["kit"] = "kit"
        elif isinstance(node, ast.ImportFrom):
            source = (_resolve_relative(importer, is_package, node.level, node.module) if node.level
                      else node.module or "")
            if source != "kit" and not source.startswith("kit."):
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:  # ``from kit import train``: a module
                    found.append(Use(full, None, node.lineno))
                    aliases[alias.asname or alias.name] = full
                else:  # ``from kit.train import train``: a name of the module
                    found.append(Use(source, alias.name, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith("kit")):
            found.append(Use(node.args[0].value, None, node.lineno))
    for node in ast.walk(tree):  # attributes: kit.det.assigners._x, assigners._x
        if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if not isinstance(base, ast.Name) or base.id not in aliases:
                continue
            name = aliases[base.id]
            for attribute in chain:
                if f"{name}.{attribute}" in modules:
                    name = f"{name}.{attribute}"
                    continue
                found.append(Use(name, attribute, node.lineno))
                break
    return found


def is_private(attribute: str | None) -> bool:
    dunder = bool(attribute) and attribute.startswith("__") and attribute.endswith("__")
    return bool(attribute) and attribute.startswith("_") and not dunder


def violations(root: Path = KIT) -> dict[str, list[str]]:
    """Every breach of the three rules under ``root``, as readable lines, by rule."""
    modules = kit_modules(root)
    names = set(modules)
    found = {"upward imports": [], "private names": [], "long modules": []}
    for importer, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        where = path.relative_to(root.parent)
        for use in uses(tree, importer, path.name == "__init__.py", names):
            if layer_of(use.name) > layer_of(importer):
                found["upward imports"].append(f"{where}:{use.line} imports {use.name} (layer "
                                               f"{layer_of(use.name)}) from layer {layer_of(importer)}")
            if use.name != importer and is_private(use.attribute):
                found["private names"].append(f"{where}:{use.line} uses {use.name}.{use.attribute}")
        lines = len(text.splitlines())
        docstring = ast.get_docstring(tree) or ""
        if lines > MAX_LINES and not any(line.strip().startswith(LONG_MARKER) for line in docstring.splitlines()):
            found["long modules"].append(f"{where} has {lines} lines and no '{LONG_MARKER} ...' line in its docstring")
    return {rule: list(dict.fromkeys(lines)) for rule, lines in found.items()}  # one line per breach


# --------------------------------------------------------------------------- the kit itself

@pytest.fixture(scope="module")
def found():
    return violations()


def test_every_kit_module_is_in_a_layer():
    for name in kit_modules():
        layer_of(name)  # raises KeyError naming the module


def test_no_import_points_up_the_layers(found):
    assert not found["upward imports"], "\n".join(found["upward imports"])


def test_no_module_uses_another_modules_private_names(found):
    assert not found["private names"], "\n".join(found["private names"])


def test_long_modules_say_why(found):
    assert not found["long modules"], "\n".join(found["long modules"])


# --------------------------------------------------------------------------- the checks see violations

def write_kit(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "kit"
    for relative, text in {"__init__.py": "", **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("source", [
    "from kit.train import train\n",
    "def later():\n    from kit import experiment\n    return experiment\n",  # inside a function
    "import kit.viz.boxes\n",
    "import importlib\nm = importlib.import_module('kit.det.atss')\n",
], ids=["from-import", "inside-a-function", "import", "import_module"])
def test_an_upward_import_is_found(tmp_path, source):
    root = write_kit(tmp_path, {"ops/__init__.py": "", "ops/thing.py": source, "train.py": "", "experiment.py": "",
                                "viz/__init__.py": "", "viz/boxes.py": "", "det/__init__.py": "", "det/atss.py": ""})
    assert [line.split(":")[0] for line in violations(root)["upward imports"]] == ["kit/ops/thing.py"]


def test_same_layer_and_downward_imports_are_allowed(tmp_path):
    root = write_kit(tmp_path, {"train.py": "from kit import experiment, io\nfrom kit.det.atss import loss\n",
                                "experiment.py": "from . import results\n", "results.py": "", "io.py": "",
                                "det/__init__.py": "", "det/atss.py": "from .boxes import iou\n", "det/boxes.py": ""})
    assert violations(root) == {"upward imports": [], "private names": [], "long modules": []}


@pytest.mark.parametrize("source", [
    "from kit.det.boxes import _helper\n",
    "import kit.det.boxes\nx = kit.det.boxes._helper\n",
    "from kit.det import boxes\nx = boxes._helper(1)\n",
    "from kit.det import boxes as b\ndef f():\n    return b._helper\n",
], ids=["from-import", "dotted-attribute", "module-attribute", "aliased-module"])
def test_a_private_name_of_another_module_is_found(tmp_path, source):
    root = write_kit(tmp_path, {"det/__init__.py": "", "det/boxes.py": "def _helper(): pass\n", "det/atss.py": source})
    assert [line.split(" uses ")[1] for line in violations(root)["private names"]] == ["kit.det.boxes._helper"]


def test_own_private_names_and_dunders_are_allowed(tmp_path):
    root = write_kit(tmp_path, {"io.py": "import kit.io\nx = kit.io._own\nimport kit.paths\ny = kit.paths.__file__\n",
                                "paths.py": ""})
    assert violations(root)["private names"] == []


def test_a_long_module_needs_its_reason(tmp_path):
    body = "x = 1\n" * MAX_LINES
    root = write_kit(tmp_path, {"io.py": '"""Atomic writes."""\n' + body,
                                "paths.py": f'"""Paths.\n\n{LONG_MARKER} it is one table.\n"""\n' + body,
                                "runtime.py": '"""Short."""\n' + "x = 1\n" * (MAX_LINES - 1)})
    assert [line.split(" has ")[0] for line in violations(root)["long modules"]] == ["kit/io.py"]


def test_a_module_outside_the_map_is_named():
    with pytest.raises(KeyError, match=r"kit\.newthing\.part is in no layer: add .newthing. to LAYERS"):
        layer_of("kit.newthing.part")
