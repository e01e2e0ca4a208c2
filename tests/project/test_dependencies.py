"""Every distribution the code imports directly is declared in setup.cfg and pinned in
constraints.txt at the version installed: components/ and pipeline/ in install_requires
(TensorFlow in the cpu/gpu extras), bench/ and tests/ there or in the dev extra. A package
that the code only gets as another's dependency leaves when a constraints bump drops it.

Import names map to distributions through importlib.metadata.packages_distributions();
a namespace shared by several distributions (google.*, kfp.kubernetes) is resolved by
which distribution ships the imported module's files."""

from __future__ import annotations

import ast
import configparser
import sys
from functools import cache
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
OURS = {"components", "pipeline", "tests", "bench"}
# Imported only under a Keras backend that the project does not install
# (bench/train_step_precision.py, with KERAS_BACKEND=jax or torch).
OTHER_KERAS_BACKENDS = {"jax", "torch"}


def imported_modules(files: list[Path]) -> dict[str, str]:
    """Every absolute import of ``files`` that is not ours or the standard library, as
    dotted module (``from a.b import c`` gives ``a.b.c``) -> the first file importing it."""
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in OURS and top not in sys.stdlib_module_names:
                    found.setdefault(name, str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@cache
def import_names() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@cache
def shipped_paths(distribution: str) -> frozenset[PurePosixPath]:
    return frozenset(PurePosixPath(str(f)) for f in metadata.files(distribution) or [])


def distribution_of(module: str) -> str:
    """The installed distribution that provides ``module`` (canonical name)."""
    parts = module.split(".")
    candidates = sorted(set(import_names().get(parts[0], [])))
    if not candidates:
        raise LookupError(f"{module}: no installed distribution provides {parts[0]!r}")
    if len(candidates) == 1:
        return canonicalize_name(candidates[0])
    # The deepest package or module of the import that exactly one candidate ships.
    for depth in range(len(parts), 0, -1):
        stem = PurePosixPath(*parts[:depth])
        owners = [
            d for d in candidates if any(p.parent == stem or p == stem.with_suffix(".py") for p in shipped_paths(d))
        ]
        if len(owners) == 1:
            return canonicalize_name(owners[0])
    named = [d for d in candidates if canonicalize_name(d) == canonicalize_name(parts[0])]
    if len(named) == 1:
        return canonicalize_name(named[0])
    raise LookupError(f"{module}: provided by {candidates}")


def declared(*extras: str) -> set[str]:
    """Canonical names of setup.cfg's install_requires and the given extras."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += parser["options.extras_require"][extra].splitlines()
    return {canonicalize_name(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            out[canonicalize_name(name)] = version
    return out


def undeclared(imports: dict[str, str], allowed: set[str]) -> dict[str, str]:
    """Each distribution imported but not allowed -> its first import (``module in file``)."""
    out: dict[str, str] = {}
    for module, where in sorted(imports.items()):
        distribution = distribution_of(module)
        if distribution not in allowed:
            out.setdefault(distribution, f"{module} in {where}")
    return out


# The runtime is install_requires plus TensorFlow, from the cpu extra or the gpu extra
# (the same modules); tests and bench run with the dev extra.
RUNTIME = ("cpu",)
DEV = ("cpu", "dev")


def test_components_and_pipeline_import_only_declared_packages():
    assert undeclared(imported_modules(python_files("components", "pipeline")), declared(*RUNTIME)) == {}


def test_tests_and_bench_import_only_declared_packages():
    imports = {
        m: w
        for m, w in imported_modules(python_files("tests", "bench")).items()
        if m.split(".")[0] not in OTHER_KERAS_BACKENDS
    }
    assert undeclared(imports, declared(*DEV)) == {}


@pytest.mark.parametrize("extras", [RUNTIME, DEV], ids=["runtime", "dev"])
def test_every_declared_package_is_pinned_at_the_installed_version(extras):
    pinned = pins()
    for name in declared(*extras):
        assert name in pinned, f"{name} is declared in setup.cfg but not pinned in constraints.txt"
        assert pinned[name] == metadata.version(name), (
            f"{name}: pinned {pinned[name]}, installed {metadata.version(name)}"
        )


def test_an_undeclared_import_is_caught(tmp_path):
    # cloudpickle comes with mlflow, protobuf (google.protobuf) with kfp and TensorFlow:
    # installed, importable, and declared by nobody here. google.cloud.storage is declared.
    planted = tmp_path / "step.py"
    planted.write_text(
        "import cloudpickle\nfrom google.protobuf import json_format\nfrom google.cloud import storage\n"
    )
    imports = imported_modules([planted])
    found = undeclared(imports, declared(*RUNTIME))
    assert sorted(found) == ["cloudpickle", "protobuf"], found
