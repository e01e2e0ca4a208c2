"""The floor plan: components/ never imports pipeline/; a stage of components/ imports
only the stages before it and the shared basics; no module imports itself back through
others; every module imports on its own (no hidden order dependence); and no module
grows past one idea's length."""

from __future__ import annotations

import ast
import graphlib
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipeline")
# components/'s packages in the order data flows through them; each may import only
# those before it. ``core`` holds the basics every stage shares.
STAGES = ("core", "data", "scoring", "training", "evaluation", "registry")
MAX_MODULE_LINES = 360


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[str]:
    return sorted(module_name(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_file(module: str) -> Path:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if path.is_file() else ROOT / module.replace(".", "/") / "__init__.py"


def imported_modules(module: str) -> set[str]:
    """Our modules that ``module`` imports anywhere (top level or inside functions)."""
    tree = ast.parse(module_file(module).read_text())
    ours = set(modules())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in ours}
    return found - {module}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "components" and len(parts) > 2 else None


def test_components_are_grouped_by_stage():
    loose = [p.name for p in (ROOT / "components").glob("*.py") if p.name != "__init__.py"]
    packages = sorted(p.name for p in (ROOT / "components").iterdir() if (p / "__init__.py").is_file())
    assert loose == [] and packages == sorted(STAGES)


def test_components_never_import_pipeline():
    upward = {
        m: sorted(i for i in imported_modules(m) if i.startswith("pipeline."))
        for m in modules()
        if m.startswith("components.")
    }
    assert {m: i for m, i in upward.items() if i} == {}


def test_a_stage_imports_only_earlier_stages_and_the_basics():
    later = {}
    for m in modules():
        if stage(m) is None:
            continue
        rank = STAGES.index(stage(m))
        wrong = sorted(i for i in imported_modules(m) if stage(i) and STAGES.index(stage(i)) > rank)
        if wrong:
            later[m] = wrong
    assert later == {}


def test_the_stage_rule_sees_a_wrong_import(tmp_path, monkeypatch):
    """The check above can fail: a data module importing training is found."""
    fake = ROOT / "components" / "data" / "_layer_probe.py"
    fake.write_text("from components.training.train import train\n")
    try:
        assert "components.training.train" in imported_modules("components.data._layer_probe")
        assert STAGES.index(stage("components.training.train")) > STAGES.index(stage("components.data._layer_probe"))
    finally:
        fake.unlink()


def test_no_import_cycle():
    graph = {m: imported_modules(m) for m in modules()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_module_holds_more_than_one_ideas_length():
    long = {m: n for m in modules() if (n := len(module_file(m).read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


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
