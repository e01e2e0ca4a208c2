"""docs/configuration.md, generated from the config classes themselves: every key, its
type, its default and the comment above it in the source (``lesionpipe config docs``).
tests/project/test_docs.py holds the file to this output, so the reference cannot drift."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from pipeline.config import MELANOMA_CLASS_SECTIONS, RunConfig

HEADER = """# Configuration reference

Every key of a run config, generated from the config classes
(`components/core/settings.py`: the steps' sections; `pipeline/config.py`: images and
cluster) by `lesionpipe config docs > docs/configuration.md`; `tests/project/test_docs.py` fails
when this file and the code differ.

A config file sets any of these keys (YAML, one mapping per section), `--set key=value`
overrides one on the command line (`--set train.epochs=3`, `--set 'data.class_map={nv: nevus}'`),
and `lesionpipe config show --config F` prints the effective config with every default.
Unknown keys are refused with the closest known name. A relative path in a config file is
relative to that file's folder; given with `--data` or `--set`, to the working folder.
"""


NAME_HELP = "The config's name: each local run's folder, the KFP run and the schedule are named after it."


def field_comments(cls: type) -> dict[str, str]:
    """The ``#`` comment lines right above each field of ``cls`` and a comment at its
    line's end, joined: the source is the one place each setting is explained. A class
    made at run time (cluster.resources, from pipeline.steps.STEPS) has no source: none."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except OSError:
        return {}
    source = textwrap.dedent("".join(lines))
    body = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, row = [], node.lineno - 2
        while row >= 0 and body[row].strip().startswith("#"):
            above.insert(0, body[row].strip().lstrip("#").strip())
            row -= 1
        own = body[node.lineno - 1]
        trailing = own.split("  # ", 1)[1].strip() if "  # " in own else ""
        comments[node.target.id] = " ".join(part for part in [*above, trailing] if part)
    return comments


# Fields the run config fills in (its melanoma_class), not keys of a config file.
GIVEN_KEYS = {f"{section}.melanoma_class" for section in MELANOMA_CLASS_SECTIONS}


def type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if getattr(annotation, "__name__", None) in ("int", "float", "bool", "str"):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def rows(cls: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    comments = {}
    for klass in reversed(cls.__mro__):
        if isinstance(klass, type) and issubclass(klass, BaseModel) and klass is not BaseModel:
            comments.update(field_comments(klass))
    defaults = cls().model_dump(mode="json")
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, f"{key}.") if not _is_uniform(cls, annotation) else ()
            continue
        yield key, type_name(annotation), json.dumps(defaults[name]), comments.get(name, "")


def _is_uniform(cls: type[BaseModel], annotation: type) -> bool:
    """Every field of ``cls`` has this one type (cluster.resources: one row set for all steps)."""
    return len(cls.model_fields) > 3 and all(f.annotation is annotation for f in cls.model_fields.values())


def markdown() -> str:
    out = [HEADER]
    for section, field in RunConfig.model_fields.items():
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            text = field_comments(RunConfig).get(section) or NAME_HELP
            out.append(f"## `{section}`\n\n{text} Default: `{json.dumps(field.default)}`.\n")
            continue
        out.append(f"## `{section}`\n\n{inspect.cleandoc(annotation.__doc__ or '')}\n")
        out.append("| key | type | default | what it does |\n|---|---|---|---|")
        for key, kind, default, text in rows(annotation, f"{section}."):
            if key in GIVEN_KEYS:
                continue
            out.append(f"| `{key}` | {kind} | `{default}` | {text.replace('|', chr(92) + '|')} |")
        if section == "cluster":
            out.append(_resources_table())
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _resources_table() -> str:
    from pipeline.config import ResourcesConfig, StepResources
    from pipeline.steps import STEPS

    lines = [
        f"\n### `cluster.resources.<step>`\n\n{inspect.cleandoc(ResourcesConfig.__doc__ or '')} Each step "
        f"has {', '.join(f'`{k}`' for k in StepResources.model_fields)}: "
        f"{inspect.cleandoc(StepResources.__doc__ or '')} "
        "E.g. `--set cluster.resources.train.memory_limit=64Gi`.\n",
        "| step | cpu request / limit | memory request / limit | note |",
        "|---|---|---|---|",
    ]
    for step, res in ResourcesConfig().model_dump().items():
        lines.append(
            f"| `{step}` | {res['cpu_request']} / {res['cpu_limit']} | {res['memory_request']} / "
            f"{res['memory_limit']} | {STEPS[step].sizing} |"
        )
    return "\n".join(lines)


def all_keys() -> set[str]:
    """Every dotted key a config has (cluster.resources.<step>.<quantity> included)."""

    def walk(model: BaseModel, prefix: str) -> Iterator[str]:
        for name in type(model).model_fields:
            value = getattr(model, name)
            yield f"{prefix}{name}"
            if isinstance(value, BaseModel):
                yield from walk(value, f"{prefix}{name}.")

    return set(walk(RunConfig(), "")) - GIVEN_KEYS
