"""An operator's ``input`` and ``output`` lists: names, mount paths and Clara types.

References between operators (an input's ``from`` and ``name``) are resolved later, once
every operator is known (:mod:`server_mock._definition._parse`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any, TypeAlias

from server_mock._definition._errors import PipelineDefinitionError
from server_mock._definition._language import (
    ARRAY_ELEMENT_TYPES,
    INPUT_KEYS,
    OUTPUT_KEYS,
    SHARED_MEMORY_TYPES,
    Version,
    version_text,
)
from server_mock._definition._model import InputSpec, OutputSpec
from server_mock._definition._reader import ParseContext, check_name, echo, type_name

__all__ = ["check_mount_paths", "parse_inputs", "parse_outputs"]

_Typing: TypeAlias = tuple[str | None, str | None, tuple[int, ...] | None]
_CLARA_TYPES = ("stream", "array", "string")


def parse_inputs(
    context: ParseContext, raw: Mapping[Any, Any], operator: str
) -> tuple[InputSpec, ...]:
    """Parse the operator's ``input`` list (without resolving ``from`` references)."""
    inputs: list[InputSpec] = []
    for index, entry in enumerate(_entries(raw, operator, "input")):
        field = f"input[{index}]"
        _check_entry(context, entry, INPUT_KEYS, operator, field)
        source = entry.get("from")
        if source is not None and (not isinstance(source, str) or not source):
            raise PipelineDefinitionError(
                f"must be an operator name, got {type_name(source)} {echo(source)}",
                operator,
                f"{field}.from",
            )
        name = _parse_entry_name(entry, operator, field)
        typing = _parse_typing(context, entry, operator, field)
        if source is None and typing[0] in SHARED_MEMORY_TYPES:
            raise PipelineDefinitionError(
                f"an input without 'from' reads the job's input payload, which is on disk: "
                f"its type must be 'stream', not {typing[0]!r}",
                operator,
                f"{field}.type",
            )
        path = _parse_path(entry, operator, field, typing[0])
        inputs.append(InputSpec(path, source, name, None, *typing))
    return tuple(inputs)


def parse_outputs(
    context: ParseContext, raw: Mapping[Any, Any], operator: str
) -> tuple[OutputSpec, ...]:
    """Parse the operator's ``output`` list; names are unique case-insensitively."""
    outputs: list[OutputSpec] = []
    names: dict[str | None, int] = {}
    entries = _entries(raw, operator, "output")
    for index, entry in enumerate(entries):
        field = f"output[{index}]"
        _check_entry(context, entry, OUTPUT_KEYS, operator, field)
        name = _parse_entry_name(entry, operator, field)
        if name is None and context.typed:
            raise PipelineDefinitionError(
                "missing required key 'name': outputs are named in api-version "
                f"{version_text(context.api_version)} (0.5.0 and above)",
                operator,
                f"{field}.name",
            )
        folded = None if name is None else name.lower()
        if folded in names:
            other = f"output[{names[folded]}]"
            detail = (
                f"more than one unnamed output ({other} is unnamed too); name all but one"
                if name is None
                else f"duplicate output name {name!r} (also used by {other}; names are "
                "case-insensitive)"
            )
            raise PipelineDefinitionError(detail, operator, f"{field}.name")
        names[folded] = index
        if name is None and len(entries) > 1:
            context.warn(
                "an operator with several outputs should name each of them (the Output page "
                "makes the name optional only for a single output); this one is read as the "
                "operator's unnamed output",
                operator,
                f"{field}.name",
            )
        typing = _parse_typing(context, entry, operator, field)
        path = _parse_path(entry, operator, field, typing[0])
        outputs.append(OutputSpec(path, name, *typing))
    return tuple(outputs)


def check_mount_paths(
    operator: str, inputs: tuple[InputSpec, ...], outputs: tuple[OutputSpec, ...]
) -> None:
    """Refuse two inputs or outputs of one operator mounted at the same path."""
    used: dict[str, str] = {}
    mounts = [(f"input[{i}]", e.path) for i, e in enumerate(inputs)]
    mounts += [(f"output[{i}]", e.path) for i, e in enumerate(outputs)]
    for field, path in mounts:
        if not path:  # shared memory: nothing is mounted
            continue
        normalized = posixpath.normpath(path)
        if normalized in used:
            raise PipelineDefinitionError(
                f"path {echo(path)} is already mounted by {used[normalized]}",
                operator,
                f"{field}.path",
            )
        used[normalized] = field


def _entries(raw: Mapping[Any, Any], operator: str, key: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            f"must be a list of {key}s, got {type_name(value)}", operator, key
        )
    return value


def _check_entry(
    context: ParseContext,
    entry: object,
    known: Mapping[str, Version],
    operator: str,
    field: str,
) -> None:
    if not isinstance(entry, dict):
        raise PipelineDefinitionError(f"must be a mapping, got {type_name(entry)}", operator, field)
    context.check_keys(entry, known, operator, field)


def _parse_entry_name(entry: Mapping[Any, Any], operator: str, field: str) -> str | None:
    name = entry.get("name")
    if name is None:
        return None
    return check_name(name, operator, f"{field}.name", "name")


def _parse_typing(
    context: ParseContext, entry: Mapping[Any, Any], operator: str, field: str
) -> _Typing:
    """Return ``(type, element-type, shape)``, checked against the Clara types table."""
    raw_type = entry.get("type")
    if raw_type is None:
        if context.typed:
            raise PipelineDefinitionError(
                "missing required key 'type': api-version 0.5.0 and above type every input "
                "and output (use 'stream' for a folder on disk)",
                operator,
                f"{field}.type",
            )
        for key in ("element-type", "shape"):
            if entry.get(key) is not None:
                raise PipelineDefinitionError(
                    f"{key!r} is given without a 'type'", operator, f"{field}.{key}"
                )
        return (None, None, None)
    if not isinstance(raw_type, str) or not raw_type:
        raise PipelineDefinitionError(
            f"must be a Clara type name, got {type_name(raw_type)} {echo(raw_type)}",
            operator,
            f"{field}.type",
        )
    kind = raw_type.lower()
    if kind not in _CLARA_TYPES and kind not in ARRAY_ELEMENT_TYPES:
        raise PipelineDefinitionError(
            f"unknown Clara type {echo(raw_type)} (known: stream, array, string, or a "
            f"primitive: {', '.join(sorted(ARRAY_ELEMENT_TYPES))})",
            operator,
            f"{field}.type",
        )
    element = _parse_element_type(entry, operator, field, kind)
    shape = _parse_shape(entry, operator, field, kind)
    return (kind, element, shape)


def _parse_element_type(
    entry: Mapping[Any, Any], operator: str, field: str, kind: str
) -> str | None:
    value = entry.get("element-type")
    where = f"{field}.element-type"
    if kind not in ("stream", "array"):
        if value is not None:
            raise PipelineDefinitionError(
                f"must be omitted for type {kind!r} (only 'stream' and 'array' have one)",
                operator,
                where,
            )
        return None
    if value is None:
        raise PipelineDefinitionError(
            f"missing required key 'element-type' (type {kind!r} needs one)", operator, where
        )
    if not isinstance(value, str) or not value:
        raise PipelineDefinitionError(
            f"must be a string, got {type_name(value)} {echo(value)}", operator, where
        )
    if kind == "array":
        if value.lower() not in ARRAY_ELEMENT_TYPES:
            raise PipelineDefinitionError(
                f"an array's element-type must be a Clara primitive, got {echo(value)} "
                f"(known: {', '.join(sorted(ARRAY_ELEMENT_TYPES))})",
                operator,
                where,
            )
        return value.lower()
    return value  # a stream's element-type is free-form


def _parse_shape(
    entry: Mapping[Any, Any], operator: str, field: str, kind: str
) -> tuple[int, ...] | None:
    value = entry.get("shape")
    where = f"{field}.shape"
    if kind != "array":
        if value is not None:
            raise PipelineDefinitionError(
                f"must be omitted for type {kind!r} (only 'array' has a shape)", operator, where
            )
        return None
    if value is None:
        raise PipelineDefinitionError(
            "missing required key 'shape' (type 'array' needs one)", operator, where
        )
    if not isinstance(value, list) or not value:
        raise PipelineDefinitionError(
            f"must be a non-empty list of dimensions, got {type_name(value)}", operator, where
        )
    for index, size in enumerate(value):
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise PipelineDefinitionError(
                f"a dimension must be a positive whole number or -1 (dynamic), got {echo(size)}",
                operator,
                f"{where}[{index}]",
            )
    return tuple(value)


def _parse_path(entry: Mapping[Any, Any], operator: str, field: str, kind: str | None) -> str:
    field = f"{field}.path"
    path = entry.get("path")
    if kind in SHARED_MEMORY_TYPES:
        if path is not None:
            raise PipelineDefinitionError(
                f"must be omitted for type {kind!r}: shared memory is not mounted at a path",
                operator,
                field,
            )
        return ""
    if path is None:
        raise PipelineDefinitionError("missing required key 'path'", operator, field)
    if not isinstance(path, str):
        raise PipelineDefinitionError(f"must be a string, got {type_name(path)}", operator, field)
    if not path.startswith("/"):
        raise PipelineDefinitionError(
            f"must be an absolute path, got {echo(path)}", operator, field
        )
    if ".." in path.split("/"):
        raise PipelineDefinitionError(
            f"must not contain '..' components, got {echo(path)}", operator, field
        )
    if "\0" in path:
        raise PipelineDefinitionError("must not contain NUL characters", operator, field)
    return path
