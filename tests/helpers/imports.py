"""The code's third-party imports and the installed distributions they come from, read
from installed metadata: tests/deploy/test_docker.py checks that the images install them,
tests/project/test_dependencies.py that setup.cfg declares them."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from packaging.utils import canonicalize_name

FIRST_PARTY = {"components", "pipeline", "tests", "bench"}


def third_party_imports(files: Iterable[Path]) -> dict[str, Path]:
    """Dotted name of every absolute third-party import in ``files``, module-level or inside
    a function (component bodies import inside themselves) -> the first file importing it."""
    found: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from kfp import kubernetes` needs kfp-kubernetes, not kfp: keep the name.
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(name, path)
    return found


@cache
def module_owners() -> dict[str, frozenset[str]]:
    """Dotted package/module path (up to 4 levels) -> the distributions that ship files in it."""
    owners: dict[str, set[str]] = {}
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            if file.suffix not in (".py", ".so", ".pyi") or ".." in file.parts:
                continue
            parts = list(file.parts[:-1])
            stem = file.name.split(".")[0]
            if stem != "__init__":
                parts.append(stem)
            for depth in range(1, min(4, len(parts)) + 1):
                owners.setdefault(".".join(parts[:depth]), set()).add(name)
    return {k: frozenset(v) for k, v in owners.items()}


def providers(module: str) -> frozenset[str]:
    """The distributions that ship `module`, by its longest prefix that any ships:
    google.cloud.storage -> google-cloud-storage, kfp.kubernetes -> kfp-kubernetes.
    Several for one module (mlflow, mlflow-skinny, mlflow-tracing all ship `mlflow`):
    any one of them installed provides it."""
    owners = module_owners()
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        found = owners.get(".".join(parts[:depth]))
        if found:
            return found
    raise AssertionError(f"no installed distribution provides {module!r}")
