"""The floor plan: components/ never imports pipeline/, no module imports itself back
through others, and every module imports on its own (no hidden order dependence)."""
from __future__ import annotations

import ast
import graphlib
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipeline")


def modules() -> list[str]:
    return sorted(f"{p.parent.name}.{p.stem}" for package in PACKAGES for p in (ROOT / package).glob("*.py")
                  if p.stem != "__init__")


def imported_modules(module: str) -> set[str]:
    """Our modules that ``module`` imports anywhere (top level or inside functions)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules()}
    return found - {module}


def test_components_never_import_pipeline():
    upward = {m: sorted(i for i in imported_modules(m) if i.startswith("pipeline."))
              for m in modules() if m.startswith("components.")}
    assert {m: i for m, i in upward.items() if i} == {}


def test_no_import_cycle():
    graph = {m: imported_modules(m) for m in modules()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("module", modules())
def test_every_module_imports_alone(module):
    """Each of our modules imported into an interpreter where none of ours is loaded yet
    (third-party packages stay cached, so this takes seconds, not minutes)."""
    saved = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in PACKAGES}
    for name in saved:
        del sys.modules[name]
    try:
        importlib.import_module(module)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in PACKAGES]:
            del sys.modules[name]
        sys.modules.update(saved)
