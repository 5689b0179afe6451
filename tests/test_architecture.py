"""The package's structure: every module imports, and the import graph has no back-edges.

Rooms, from the bottom up: ``io``; ``losses``, ``metrics``; ``imbalance``; ``networks``; ``data`` (and its
``sources``), ``pipelines``; ``engines`` (everything ignite); ``inference``; the tools on top (``compare``, ``demo``,
``zoo``, ``bundles``). ``preprocessing`` may import ``supremix_med.data``, ``supremix_med.io`` and
``supremix_med.bundles`` (the plausible label range of the bundle a module feeds); the library reaches
``preprocessing`` only through the registry (``supremix_med.pipelines``, by module name, never an import statement).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("supremix_med", "preprocessing")
#: Rooms that build models and numbers: no engine framework, no higher room.
PLAIN_ROOMS = ("supremix_med.losses", "supremix_med.metrics", "supremix_med.imbalance", "supremix_med.networks",
               "supremix_med.data")
HIGHER = ("supremix_med.engines", "supremix_med.inference", "supremix_med.compare", "supremix_med.demo",
          "supremix_med.zoo", "supremix_med.bundles", "preprocessing")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [n for n in names if not n.endswith("__main__")]


def _imports(module: str) -> set[str]:
    """Absolute names the module imports (relative imports resolved)."""
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
    return found


MODULES = _modules()


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(PLAIN_ROOMS)])
def test_plain_rooms_import_no_engine_framework_and_no_higher_room(module):
    offending = sorted(name for name in _imports(module)
                       if name.split(".")[0] == "ignite" or name.startswith(HIGHER))
    assert not offending, f"{module} imports {offending}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("supremix_med")])
def test_the_library_never_imports_preprocessing(module):
    assert not [n for n in _imports(module) if n.split(".")[0] == "preprocessing"], module


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("preprocessing")])
def test_preprocessing_uses_only_the_data_layer_of_the_library(module):
    """Preprocessing reads the data layer, io and the bundle configs (a bundle's plausible label range), and ends
    like every command line (cli.refusals, stdlib only)."""
    used = {n for n in _imports(module) if n.startswith("supremix_med")}
    allowed = ("supremix_med.data", "supremix_med.io", "supremix_med.bundles", "supremix_med.cli.refusals")
    assert all(n.startswith(allowed) for n in used), (module, used)
