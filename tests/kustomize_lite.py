"""A small kustomize renderer for the features manifests/ uses, so that the tests can
render the overlays with no kustomize or kubectl binary (no network at test time).

Supported, with kustomize's meaning: `resources` (files and directories holding a
kustomization.yaml), `namespace` (namespaced objects, and the namespace of
ServiceAccount subjects in RoleBindings), and `patches` given as a file of RFC 6902
operations (add, replace, remove) with a `target` of group/version/kind/name.
Everything else (generators, images, labels, strategic-merge patches, remote bases,
components, ...) is refused with UnsupportedFeature rather than rendered wrongly.
tests/test_manifests.py compares the result with `kubectl kustomize` where it is installed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches"}
SUPPORTED_TARGET_KEYS = {"group", "version", "kind", "name"}
SUPPORTED_OPS = {"add", "replace", "remove"}
# Kinds that have no namespace (the ones these manifests could plausibly use).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "IngressClass"}


class UnsupportedFeature(ValueError):
    """The kustomization asks for something this renderer does not implement."""


class RenderError(ValueError):
    """The kustomization is wrong: a missing file, a patch that matches nothing, a bad path."""


def kustomization_file(directory: Path) -> Path:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        others = [p.name for p in directory.glob("[Kk]ustomization*")]
        if others:
            raise UnsupportedFeature(f"{directory}: only kustomization.yaml is read, found {others}")
        raise RenderError(f"{directory}: no kustomization.yaml")
    return path


def load_kustomization(directory: Path) -> dict[str, Any]:
    path = kustomization_file(directory)
    data = yaml.safe_load(path.read_text()) or {}
    unsupported = sorted(set(data) - SUPPORTED_KEYS)
    if unsupported:
        raise UnsupportedFeature(f"{path}: unsupported kustomization fields {unsupported}")
    if data.get("kind", "Kustomization") != "Kustomization":
        raise UnsupportedFeature(f"{path}: kind {data['kind']!r} (only Kustomization)")
    return data


def render(directory: str | Path) -> list[dict[str, Any]]:
    directory = Path(directory)
    spec = load_kustomization(directory)
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith(("github.com/", "git@")):
            raise UnsupportedFeature(f"{directory}: remote or non-path resource {entry!r}")
        path = (directory / entry)
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
        else:
            raise RenderError(f"{directory}: resource {entry} does not exist")
    for patch in spec.get("patches") or []:
        apply_patch(directory, patch, objects)
    for obj in objects:
        # As kustomize does: removing the last annotation (or label) drops the map.
        for field in ("annotations", "labels"):
            if obj.get("metadata", {}).get(field) == {}:
                del obj["metadata"][field]
    if spec.get("namespace"):
        set_namespace(objects, spec["namespace"])
    return objects


def group_version(obj: dict[str, Any]) -> tuple[str, str]:
    group, _, version = obj["apiVersion"].rpartition("/")
    return group, version


def matches(target: dict[str, Any], obj: dict[str, Any]) -> bool:
    group, version = group_version(obj)
    return ((target.get("kind") is None or target["kind"] == obj["kind"])
            and (target.get("name") is None or target["name"] == obj["metadata"]["name"])
            and ("group" not in target or (target["group"] or "") == group)
            and ("version" not in target or target["version"] == version))


def apply_patch(directory: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    if set(patch) != {"path", "target"}:
        raise UnsupportedFeature(f"{directory}: a patch needs exactly `path` and `target` (got {sorted(patch)})")
    target = patch["target"]
    if set(target) - SUPPORTED_TARGET_KEYS:
        raise UnsupportedFeature(f"{directory}: unsupported patch target fields {sorted(set(target) - SUPPORTED_TARGET_KEYS)}")
    path = directory / patch["path"]
    if not path.is_file():
        raise RenderError(f"{directory}: patch {patch['path']} does not exist")
    operations = yaml.safe_load(path.read_text())
    if not isinstance(operations, list):
        raise UnsupportedFeature(f"{path}: only RFC 6902 patches (a list of operations), not strategic merge")
    hits = [obj for obj in objects if matches(target, obj)]
    if not hits:
        raise RenderError(f"{path}: target {target} matches no resource")
    for obj in hits:
        for op in operations:
            apply_operation(obj, op, path)


def pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_operation(obj: dict[str, Any], op: dict[str, Any], where: Path) -> None:
    name = op.get("op")
    if name not in SUPPORTED_OPS:
        raise UnsupportedFeature(f"{where}: patch operation {name!r} (only {sorted(SUPPORTED_OPS)})")
    *parents, last = pointer(op["path"])
    node: Any = obj
    for part in parents:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError):
            raise RenderError(f"{where}: {op['path']}: {part!r} does not exist") from None
    if isinstance(node, list):
        if last == "-" and name == "add":
            node.append(copy.deepcopy(op["value"]))
            return
        try:
            index = int(last)
        except ValueError:
            raise RenderError(f"{where}: {op['path']}: {last!r} is not a list index") from None
        if name == "add":
            if index > len(node):
                raise RenderError(f"{where}: {op['path']}: index out of range")
            node.insert(index, copy.deepcopy(op["value"]))
        elif index >= len(node):
            raise RenderError(f"{where}: {op['path']}: index out of range")
        elif name == "replace":
            node[index] = copy.deepcopy(op["value"])
        else:
            del node[index]
        return
    if not isinstance(node, dict):
        raise RenderError(f"{where}: {op['path']}: parent is not an object")
    if name != "add" and last not in node:
        raise RenderError(f"{where}: {op['path']}: nothing to {name}")
    if name == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


def set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        obj.setdefault("metadata", {})["namespace"] = namespace
        if obj["kind"] == "RoleBinding":
            for subject in obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace
