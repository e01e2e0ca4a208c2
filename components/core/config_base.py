"""What every config section shares: the pydantic base class Section (unknown keys
refused), loading a section with any problem as one ConfigError line naming the config
key (``train.epochs must be an integer, got 'three'``), reading a config file and making
its relative paths absolute, and the flat ``section.key`` params logged to MLflow. The
sections themselves are in ``components.core.settings``.

KFP hands a dict input over as a protobuf Struct, where every number is a float:
pydantic's lax mode takes 7.0 for an int field, and refuses 7.5.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from components.core.errors import UserError


class ConfigError(UserError):
    """A user mistake in a config file, an override or a step's settings: one line."""


class Section(BaseModel):
    """A config section: unknown keys refused; a YAML null for a text setting means ""."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _fill_partial_subsections(cls, raw: Any) -> Any:
        """A partial sub-section keeps this field's own defaults (e.g. the train step's
        resources), not those of the sub-section's class."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for name, field in cls.model_fields.items():
            value = raw.get(name)
            if field.annotation is str and name in raw and value is None:
                raw[name] = ""
            elif isinstance(value, dict) and field.default_factory is not None:
                default = field.default_factory()
                if isinstance(default, BaseModel):
                    raw[name] = {**default.model_dump(), **value}
        return raw

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values: what a KFP task receives and what YAML holds."""
        return self.model_dump(mode="json")


S = TypeVar("S", bound=Section)


def load_section(cls: type[S], raw: Any, where: str = "") -> S:
    """``cls`` from a mapping; any problem as one ConfigError line keyed by ``where``
    (the section's prefix, e.g. ``"train."``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {where.rstrip('.') or 'root'!r} must be a mapping, got {raw!r}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc.errors()[0], cls, where)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A config file's sections (a YAML mapping; ``safe_load``, so no Python tags)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{p} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): save it as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of sections")
    return raw


# Values that are names, not files: train.weights "imagenet" (download) and "none".
NOT_PATHS = ("", "imagenet", "none")
SQLITE = "sqlite:///"


def _is_relative_local_path(value: Any) -> bool:
    return isinstance(value, str) and value not in NOT_PATHS and "://" not in value and not value.startswith(("/", "~"))


def _against(folder: Path, value: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(folder), value))


def resolve_relative_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config file's relative local paths (``data.source``, ``train.weights`` and the
    ensemble members' ``weights``, an ``sqlite:///`` ``mlflow.tracking_uri``) made
    absolute against ``folder``, the config file's own folder, so a config means the same
    files from wherever ``lesionpipe`` runs. URIs (gs://, http://) and names (imagenet)
    stay as they are."""
    raw = copy.deepcopy(raw)
    data, train, mlflow = (raw.get(k) if isinstance(raw.get(k), dict) else {} for k in ("data", "train", "mlflow"))
    if _is_relative_local_path(data.get("source")):
        data["source"] = _against(folder, data["source"])
    for section in [train, *(m for m in train.get("ensemble") or [] if isinstance(m, dict))]:
        if _is_relative_local_path(section.get("weights")):
            section["weights"] = _against(folder, section["weights"])
    uri = mlflow.get("tracking_uri")
    if isinstance(uri, str) and uri.startswith(SQLITE) and _is_relative_local_path(uri.removeprefix(SQLITE)):
        mlflow["tracking_uri"] = SQLITE + _against(folder, uri.removeprefix(SQLITE))
    return raw


def parse_override(cls: type[BaseModel], key: str, text: str) -> Any:
    """A ``--set key=text`` value typed by the setting it sets: a text setting (a str, or
    a choice of words) takes ``text`` as written, so a folder named ``2024-06-01``, ``null``
    or ``yes`` stays that name; any other setting parses it as YAML (``3``, ``false``,
    ``{mel: melanoma}``)."""
    if _is_text(_declared_type(cls, key.split("."))):
        return text
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def _declared_type(cls: type[BaseModel], parts: list[str]) -> Any:
    """The annotation of the setting ``parts`` leads to in ``cls`` (None when unknown)."""
    annotation: Any = cls
    for part in parts:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            annotation = field.annotation if field is not None else None
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _is_text(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return all(isinstance(choice, str) for choice in get_args(annotation))
    return annotation is str


def _key(loc: tuple, where: str) -> str:
    key = where
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key and not key.endswith(".") else part)
    return key.rstrip(".")


def known_keys(cls: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed where ``loc`` points (its last part excluded)."""
    model: Any = cls
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) and isinstance(model, type) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)


def unknown_key_message(key: str, known: list[str]) -> str:
    """``unknown config key 'train.epoch' (did you mean 'epochs'? known: ...)``."""
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown config key {key!r}" + (f" ({hint}known: {', '.join(known)})" if known else "")


def describe_error(error: dict, cls: type[BaseModel], where: str) -> str:
    key = _key(error["loc"], where)
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return unknown_key_message(key, known_keys(cls, error["loc"]))
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("above", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("below", "lt"),
    }
    if kind in bounds:
        words, name = bounds[kind]
        return f"{key} must be {words} {ctx[name]:g}, got {value!r}"
    if kind == "literal_error":
        return f"{key} must be {ctx['expected'].replace(chr(39), '')}, not {value!r}"
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return f"{key}: {message}" if key else message
    expected = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "string": "a string",
        "dict": "a mapping",
        "list": "a list",
    }
    for prefix, words in expected.items():
        if kind.startswith(prefix):
            return f"{key} must be {words}, got {value!r}"
    return f"{key}: {error['msg']}"


def flat_params(sections: dict[str, Any]) -> dict[str, str]:
    """``section.key -> str`` for mlflow.log_params (mappings and lists as JSON)."""
    out: dict[str, str] = {}
    for section, values in sections.items():
        if not isinstance(values, dict):
            out[section] = str(values)
            continue
        for key, value in values.items():
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return out
