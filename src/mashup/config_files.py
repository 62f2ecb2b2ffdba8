"""Config files: YAML read into typed configs (mashup.config's), with one-line errors naming the file and the
field, a misspelt key said as such (with the key it was meant to be), and configs saved back atomically."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from mashup.errors import MashupError

ConfigT = TypeVar("ConfigT", bound=BaseModel)
# the labels pydantic puts in an error's location for the member of a union that failed (``max_share`` is
# ``float | 'auto' | None``: ``max_share.constrained-float``): no field of ours, so no part of a field's path
UNION_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "bytes", "none", "list", "dict"})


def load_config(path: Path, cls: type[ConfigT]) -> ConfigT:
    """Read a YAML file into a typed config; errors name the file and the field."""
    return validate_config(read_config_mapping(path), cls, path)


def read_config_mapping(path: Path) -> dict[str, Any]:
    """A config file's raw YAML mapping (empty file: {}), not validated yet; errors are one line naming the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise MashupError(f"cannot read config ({exc.strerror or exc})", str(path),
                          "check the file exists and is readable") from None
    except UnicodeDecodeError as exc:
        raise MashupError(f"config is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                          str(path), "save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MashupError(f"invalid YAML: {_yaml_problem(exc)}", str(path), "fix the YAML syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MashupError(f"config is a YAML {type(raw).__name__}, not a mapping of fields", str(path),
                          "write one 'field: value' per line") from None
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's problem and where, on one line (its own text spans several, quoting the line)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def field_path(loc: Sequence[int | str]) -> str:
    """An error location as the dotted path of the field (list items as numbers), without the union member
    labels pydantic adds after a field whose type is a union (``constrained-float``, ``literal['auto']``)."""
    def is_union_tag(part: str) -> bool:
        return not part.isidentifier() or part in UNION_TYPE_TAGS or part[:1].isupper()

    return ".".join(str(part) for part in loc if not (isinstance(part, str) and is_union_tag(part)))


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """The first invalid field's dotted path and what is wrong with it, without pydantic's "Value error, " (the
    prefix it puts before a validator's own message)."""
    first = exc.errors()[0]
    problem = first["msg"].removeprefix("Value error, ")
    return field_path(first["loc"]), problem


def validate_config(raw: dict[str, Any], cls: type[ConfigT], path: Path | None) -> ConfigT:
    """``raw`` (a config file's mapping, maybe with flags merged over it) as a typed config; errors name ``path``
    and the field, and an unknown key comes first (a misspelt required key would read as a missing one)."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, cls, path) from None


def config_error(exc: ValidationError, cls: type[BaseModel], path: Path | None) -> MashupError:
    """``validate_config``'s error for a config that failed validation: an unknown key first, else the first
    invalid field, naming ``path``."""
    unknown = [error["loc"] for error in exc.errors() if error["type"] == "extra_forbidden"]
    if unknown:
        return unknown_key_error(unknown[0], cls, path)
    field, problem = first_problem(exc)
    what = f"invalid config field '{field}': {problem}" if field else f"invalid config: {problem}"
    return MashupError(what, str(path) if path else None, "fix that field" if field else "fix the config")


def require_known_keys(raw: Mapping[str, Any], cls: type[BaseModel], path: Path | None,
                       section: tuple[str, ...] = ()) -> None:
    """Refuse a key ``cls`` has no field for, in ``raw`` or a section of it, before any check of what is missing
    (validation would also refuse it, after a caller's own checks)."""
    model = _model_at(cls, section)
    if model is None:
        return
    for key, value in raw.items():
        if str(key) not in _accepted_keys(model):
            raise unknown_key_error((*section, str(key)), cls, path)
        if isinstance(value, Mapping):
            require_known_keys(value, cls, path, (*section, str(key)))


def unknown_key_error(loc: Sequence[int | str], cls: type[BaseModel], path: Path | None) -> MashupError:
    """The error for the key at ``loc``: the valid key it is closest to, and the valid keys of its section."""
    key, section = str(loc[-1]), field_path(loc[:-1])
    model = _model_at(cls, loc[:-1])
    valid = _shown_keys(model) if model is not None else []
    close = difflib.get_close_matches(key, valid, n=1)
    meant = f" (did you mean '{close[0]}'?)" if close else ""
    where = f" in section '{section}'" if section else ""
    return MashupError(f"unknown config key '{key}'{where}{meant}", str(path) if path else None,
                       f"valid keys{where}: {', '.join(valid)}" if valid else "remove it")


def _shown_keys(cls: type[BaseModel]) -> list[str]:
    """A config's keys as a file spells them (``lambda``, not ``lambda_``), in declaration order."""
    return [field.alias or name for name, field in cls.model_fields.items()]


def _accepted_keys(cls: type[BaseModel]) -> set[str]:
    return {*cls.model_fields, *_shown_keys(cls)}


def _model_at(cls: type[BaseModel], loc: Iterable[int | str]) -> type[BaseModel] | None:
    """The config class of the section at ``loc`` (list items and union labels are looked through)."""
    model: type[BaseModel] | None = cls
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int) or part not in _accepted_keys(model):
            continue
        name = next(name for name, field in model.model_fields.items() if part in (name, field.alias))
        model = _nested_model(model.model_fields[name].annotation)
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config class inside a field's type (``X``, ``X | None``, ``list[X]``, ``Annotated[X, ...]``); none in a
    mapping's (its keys are the user's own, not fields)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (dict, Mapping):
        return None
    return next((model for arg in get_args(annotation) if (model := _nested_model(arg)) is not None), None)


def save_config(config: BaseModel, path: Path) -> None:
    """``config`` as YAML at ``path``, atomically (a kill never leaves half a config to be read back)."""
    from mashup.io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False))
