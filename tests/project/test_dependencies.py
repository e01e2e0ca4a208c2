"""Every distribution the code imports directly is declared in setup.cfg and pinned in
constraints.txt at the version installed: components/ and pipeline/ in install_requires
(TensorFlow in the cpu/gpu extras), bench/ and tests/ there or in the dev extra. A package
that the code only gets as another's dependency leaves when a constraints bump drops it.

Imports map to distributions by the files each installed distribution ships
(tests/helpers/imports.py): google.api_core is google-api-core, kfp.kubernetes is
kfp-kubernetes."""

from __future__ import annotations

import configparser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.imports import providers, third_party_imports

ROOT = Path(__file__).resolve().parents[2]
# Imported only under a Keras backend that the project does not install
# (bench/train_step_precision.py, with KERAS_BACKEND=jax or torch).
OTHER_KERAS_BACKENDS = {"jax", "torch"}
# The runtime is install_requires plus TensorFlow, from the cpu extra or the gpu extra
# (the same modules); tests and bench run with the dev extra.
RUNTIME = ("cpu",)
DEV = ("cpu", "dev")


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


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


def undeclared(files: list[Path], allowed: set[str], ignore: set[str] = frozenset()) -> dict[str, str]:
    """Each imported distribution that is not allowed -> its first import (``module in file``).
    A module that several distributions ship (mlflow, mlflow-skinny) needs one of them."""
    out: dict[str, str] = {}
    for module, path in sorted(third_party_imports(files).items()):
        if module.split(".")[0] in ignore:
            continue
        dists = providers(module)
        if not dists & allowed:
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            out.setdefault(", ".join(sorted(dists)), f"{module} in {where}")
    return out


def test_components_and_pipeline_import_only_declared_packages():
    assert undeclared(python_files("components", "pipeline"), declared(*RUNTIME)) == {}


def test_tests_and_bench_import_only_declared_packages():
    assert undeclared(python_files("tests", "bench"), declared(*DEV), OTHER_KERAS_BACKENDS) == {}


@pytest.mark.parametrize("extras", [RUNTIME, DEV], ids=["runtime", "dev"])
def test_every_declared_package_is_pinned_at_the_installed_version(extras):
    pinned = pins()
    for name in declared(*extras):
        assert name in pinned, f"{name} is declared in setup.cfg but not pinned in constraints.txt"
        installed = metadata.version(name)
        assert pinned[name] == installed, f"{name}: pinned {pinned[name]}, installed {installed}"


def test_an_undeclared_import_is_caught(tmp_path):
    # cloudpickle comes with mlflow, protobuf (google.protobuf) with kfp and TensorFlow:
    # installed, importable, and declared by nobody here. google.cloud.storage is declared.
    planted = tmp_path / "step.py"
    planted.write_text(
        "import cloudpickle\nfrom google.protobuf import json_format\nfrom google.cloud import storage\n"
    )
    assert undeclared([planted], declared(*RUNTIME)) == {
        "cloudpickle": "cloudpickle in step.py",
        "protobuf": "google.protobuf.json_format in step.py",
    }
