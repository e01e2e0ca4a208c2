"""The floor plan: components/ never imports pipeline/; a stage of components/ imports
only the stages before it and the shared basics; no module imports itself back through
others; every module imports on its own (no hidden order dependence); and no module nor
function grows past one idea's length."""

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
MAX_FUNCTION_LINES = 80  # a def's lines, from `def` to its last line (nested defs counted in it)
# Functions allowed to be longer, each with why; the list only shrinks.
LONG_FUNCTIONS: dict[str, int] = {}


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
    return imports_in(module_file(module).read_text()) - {module}


def imports_in(source: str) -> set[str]:
    """Our modules that the Python ``source`` imports anywhere."""
    tree = ast.parse(source)
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
    return found


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


def later_stage_imports(module: str, imported: set[str]) -> list[str]:
    """Of ``imported``, the modules of a stage after ``module``'s."""
    rank = STAGES.index(stage(module))
    return sorted(i for i in imported if stage(i) and STAGES.index(stage(i)) > rank)


def test_a_stage_imports_only_earlier_stages_and_the_basics():
    later = {}
    for m in modules():
        if stage(m) is None:
            continue
        if wrong := later_stage_imports(m, imported_modules(m)):
            later[m] = wrong
    assert later == {}


def test_the_stage_rule_sees_a_wrong_import():
    """The check above can fail: a data module importing training, anywhere in it, is
    found (the module's source is only parsed, never written into the tree)."""
    probe = "import json\n\ndef f():\n    from components.training.train import train\n    return train\n"
    assert imports_in(probe) == {"components.training.train"}
    assert later_stage_imports("components.data._layer_probe", imports_in(probe)) == ["components.training.train"]
    assert later_stage_imports("components.evaluation._layer_probe", imports_in(probe)) == []


def test_no_import_cycle():
    graph = {m: imported_modules(m) for m in modules()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_no_module_holds_more_than_one_ideas_length():
    long = {m: n for m in modules() if (n := len(module_file(m).read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def function_lengths(source: str, module: str) -> dict[str, int]:
    """``module.[Class.]function -> lines`` of every def in ``source``, nested ones too."""
    lengths = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name)

    visit(ast.parse(source), module)
    return lengths


def test_no_function_holds_more_than_one_ideas_length():
    lengths = {name: n for m in modules() for name, n in function_lengths(module_file(m).read_text(), m).items()}
    long = {name: n for name, n in lengths.items() if n > LONG_FUNCTIONS.get(name, MAX_FUNCTION_LINES)}
    assert long == {}
    # An exemption whose function shrank or went is struck off.
    assert {name: n for name, n in LONG_FUNCTIONS.items() if lengths.get(name, 0) <= MAX_FUNCTION_LINES} == {}


def test_the_function_length_rule_counts_a_defs_lines():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    source = (
        f"class C:\n    def m(self):\n        def inner():\n            pass\n        return 1\n\ndef long():\n{body}"
    )
    assert function_lengths(source, "mod") == {"mod.C.m": 4, "mod.C.m.inner": 2, "mod.long": MAX_FUNCTION_LINES + 1}


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
