"""Validate a loaded definition document and build its :class:`PipelineDefinition`.

Every refusal is a :class:`PipelineDefinitionError` naming the operator and the field.
"""

from __future__ import annotations

import datetime
import math
import posixpath
import shlex
from typing import Any, Final

from clara.contract import MAX_STAGE_TIMEOUT, NAME_PATTERN
from server_mock._definition._errors import PipelineDefinitionError
from server_mock._definition._graph import cycle_error, kahn
from server_mock._definition._model import (
    _EMPTY_REQUESTS,
    _EMPTY_VARIABLES,
    ContainerSpec,
    FrozenMapping,
    FrozenValue,
    InputSpec,
    OperatorSpec,
    OutputSpec,
    PipelineDefinition,
    freeze,
)
from server_mock._definition._yaml import load_yaml

__all__ = ["OPERATOR_KEYS", "SUPPORTED_API_VERSIONS", "parse_pipeline_definition"]

SUPPORTED_API_VERSIONS: Final = ("0.3.0", "0.4.0")
"""The ``api-version`` values this parser accepts."""

OPERATOR_KEYS: Final = frozenset(
    {
        "name",
        "description",
        "container",
        "input",
        "output",
        "variables",
        "requests",
        "models",
        "services",
        "timeout",
    }
)
"""Keys an operator entry may contain; any other key is rejected."""

_TOP_LEVEL_KEYS: Final = frozenset(
    {"api-version", "name", "description", "parameters", "operators"}
)
_CONTAINER_KEYS: Final = frozenset({"image", "tag", "command"})
_INPUT_KEYS: Final = frozenset({"from", "name", "path"})
_OUTPUT_KEYS: Final = frozenset({"name", "path"})
_MAX_ECHO: Final = 60


def parse_pipeline_definition(text: str | bytes) -> PipelineDefinition:
    """Parse and validate a Clara pipeline definition.

    Args:
        text: The YAML document; ``bytes`` may be UTF-8 or UTF-16 (with BOM).

    Returns:
        The validated definition.

    Raises:
        PipelineDefinitionError: The text is too large, is not valid YAML, or is not a valid
            pipeline definition. The error's ``operator`` and ``field`` locate the problem.
        TypeError: ``text`` is neither ``str`` nor ``bytes``.
    """
    document = load_yaml(text)
    if not isinstance(document, dict):
        raise PipelineDefinitionError(
            f"the definition must be a YAML mapping, got {_type_name(document)}"
        )
    _check_keys(document, _TOP_LEVEL_KEYS, None, "")
    api_version = _parse_api_version(document)
    name = _parse_name(document, "name", None, "name", "pipeline name")
    description = _parse_description(document, None, "description")
    parameters = document.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(parameters)}", None, "parameters"
        )
    operators = _parse_operators(document)
    _check_references(operators)
    order = kahn(operators)
    if len(order) != len(operators):
        raise cycle_error(operators, order)
    return PipelineDefinition(api_version, name, operators, description)


# --- document level -------------------------------------------------------------------------


def _parse_api_version(document: dict[Any, Any]) -> str:
    if "api-version" not in document:
        raise PipelineDefinitionError("missing required key 'api-version'", None, "api-version")
    value = document["api-version"]
    if not isinstance(value, str) or value not in SUPPORTED_API_VERSIONS:
        supported = ", ".join(SUPPORTED_API_VERSIONS)
        hint = " (write it as a quoted string)" if isinstance(value, int | float) else ""
        raise PipelineDefinitionError(
            f"unsupported api-version {_echo(value)}{hint}; supported: {supported}",
            None,
            "api-version",
        )
    return value


def _parse_operators(document: dict[Any, Any]) -> tuple[OperatorSpec, ...]:
    if "operators" not in document:
        raise PipelineDefinitionError("missing required key 'operators'", None, "operators")
    raw = document["operators"]
    if not isinstance(raw, list):
        raise PipelineDefinitionError(
            f"must be a list of operators, got {_type_name(raw)}", None, "operators"
        )
    if not raw:
        raise PipelineDefinitionError("the pipeline defines no operators", None, "operators")
    seen: dict[str, tuple[int, str]] = {}
    operators = []
    for index, entry in enumerate(raw):
        operators.append(_parse_operator(entry, index, seen))
    return tuple(operators)


def _check_references(operators: tuple[OperatorSpec, ...]) -> None:
    by_name = {spec.name: spec for spec in operators}
    by_folded = {spec.name.lower(): spec.name for spec in operators}
    for spec in operators:
        for index, entry in enumerate(spec.inputs):
            source = entry.from_operator
            if source is None:
                continue
            field = f"input[{index}]"
            if source == spec.name:
                raise PipelineDefinitionError(
                    "an operator cannot take input from itself", spec.name, f"{field}.from"
                )
            upstream = by_name.get(source)
            if upstream is None:
                similar = by_folded.get(source.lower())
                hint = f" (did you mean {similar!r}?)" if similar is not None else ""
                raise PipelineDefinitionError(
                    f"unknown operator {_echo(source)}{hint}", spec.name, f"{field}.from"
                )
            declared = [output.name for output in upstream.outputs]
            if entry.name not in declared:
                listed = ", ".join("(unnamed)" if n is None else repr(n) for n in declared)
                outputs = f"its outputs: {listed}" if listed else "it declares no outputs"
                wanted = "unnamed output" if entry.name is None else f"output {entry.name!r}"
                raise PipelineDefinitionError(
                    f"operator {source!r} declares no {wanted} ({outputs})",
                    spec.name,
                    f"{field}.name",
                )


def _parse_operator(raw: object, index: int, seen: dict[str, tuple[int, str]]) -> OperatorSpec:
    where = f"operators[{index}]"
    if not isinstance(raw, dict):
        raise PipelineDefinitionError(
            f"an operator must be a mapping, got {_type_name(raw)}", None, where
        )
    name = _parse_name(raw, "name", None, f"{where}.name", "operator name")
    folded = name.lower()
    if folded in seen:
        other_index, other = seen[folded]
        raise PipelineDefinitionError(
            f"duplicate operator name: operators[{other_index}] is already named {other!r}"
            " (names are case-insensitive)",
            name,
            "name",
        )
    seen[folded] = (index, name)
    _check_keys(raw, OPERATOR_KEYS, name, "")
    description = _parse_description(raw, name, "description")
    container = _parse_container(raw, name)
    inputs = _parse_inputs(raw, name)
    outputs = _parse_outputs(raw, name)
    _check_mount_paths(name, inputs, outputs)
    return OperatorSpec(
        name=name,
        description=description,
        container=container,
        inputs=inputs,
        outputs=outputs,
        variables=_parse_variables(raw, name),
        timeout=_parse_timeout(raw, name),
        requests=_parse_requests(raw, name),
        models=_parse_list_verbatim(raw, name, "models"),
        services=_parse_list_verbatim(raw, name, "services"),
    )


def _parse_container(raw: dict[Any, Any], operator: str) -> ContainerSpec:
    if "container" not in raw:
        raise PipelineDefinitionError("missing required key 'container'", operator, "container")
    container = raw["container"]
    if not isinstance(container, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(container)}", operator, "container"
        )
    _check_keys(container, _CONTAINER_KEYS, operator, "container")
    if "image" not in container:
        raise PipelineDefinitionError("missing required key 'image'", operator, "container.image")
    image = _image_word(container["image"], operator, "container.image")
    tag = "latest"
    raw_tag = container.get("tag")
    if raw_tag is not None:
        if isinstance(raw_tag, float | bool) or not isinstance(raw_tag, str | int):
            raise PipelineDefinitionError(
                f"must be a string, got {_type_name(raw_tag)} {_echo(raw_tag)}"
                ' (quote numeric tags, e.g. tag: "0.1")',
                operator,
                "container.tag",
            )
        tag = _image_word(str(raw_tag), operator, "container.tag")
    return ContainerSpec(image, tag, _parse_command(container.get("command"), operator))


def _image_word(value: object, operator: str, field: str) -> str:
    if not isinstance(value, str):
        raise PipelineDefinitionError(f"must be a string, got {_type_name(value)}", operator, field)
    if not value.strip():
        raise PipelineDefinitionError("must not be empty", operator, field)
    if any(c.isspace() for c in value):
        raise PipelineDefinitionError(
            f"must not contain whitespace: {_echo(value)}", operator, field
        )
    return value


def _parse_command(value: object, operator: str) -> tuple[str, ...]:
    field = "container.command"
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise PipelineDefinitionError(
                f"cannot split the command line: {exc}", operator, field
            ) from exc
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            f"must be a list of strings or a command line, got {_type_name(value)}",
            operator,
            field,
        )
    for index, word in enumerate(value):
        if not isinstance(word, str):
            raise PipelineDefinitionError(
                f"must be a string, got {_type_name(word)} {_echo(word)}",
                operator,
                f"{field}[{index}]",
            )
    return tuple(value)


def _parse_inputs(raw: dict[Any, Any], operator: str) -> tuple[InputSpec, ...]:
    entries = _entries(raw, operator, "input")
    inputs: list[InputSpec] = []
    names: dict[str | None, int] = {}
    for index, entry in enumerate(entries):
        field = f"input[{index}]"
        _check_entry(entry, _INPUT_KEYS, operator, field)
        path = _parse_path(entry, operator, field)
        source = entry.get("from")
        if source is not None and (not isinstance(source, str) or not source):
            raise PipelineDefinitionError(
                f"must be an operator name, got {_type_name(source)} {_echo(source)}",
                operator,
                f"{field}.from",
            )
        name = _parse_entry_name(entry, operator, field)
        _check_entry_name_unique(names, name, index, operator, "input")
        inputs.append(InputSpec(path, source, name))
    return tuple(inputs)


def _parse_outputs(raw: dict[Any, Any], operator: str) -> tuple[OutputSpec, ...]:
    entries = _entries(raw, operator, "output")
    outputs: list[OutputSpec] = []
    names: dict[str | None, int] = {}
    for index, entry in enumerate(entries):
        field = f"output[{index}]"
        _check_entry(entry, _OUTPUT_KEYS, operator, field)
        path = _parse_path(entry, operator, field)
        name = _parse_entry_name(entry, operator, field)
        _check_entry_name_unique(names, name, index, operator, "output")
        outputs.append(OutputSpec(path, name))
    return tuple(outputs)


def _entries(raw: dict[Any, Any], operator: str, key: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            f"must be a list of {key}s, got {_type_name(value)}", operator, key
        )
    return value


def _check_entry(entry: object, allowed: frozenset[str], operator: str, field: str) -> None:
    if not isinstance(entry, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(entry)}", operator, field
        )
    _check_keys(entry, allowed, operator, field)


def _parse_entry_name(entry: dict[Any, Any], operator: str, field: str) -> str | None:
    name = entry.get("name")
    if name is None:
        return None
    return _check_name(name, operator, f"{field}.name", "name")


def _check_entry_name_unique(
    names: dict[str | None, int], name: str | None, index: int, operator: str, kind: str
) -> None:
    if name in names:
        other = f"{kind}[{names[name]}]"
        detail = (
            f"more than one unnamed {kind} ({other} is unnamed too); name all but one"
            if name is None
            else f"duplicate {kind} name {name!r} (also used by {other})"
        )
        raise PipelineDefinitionError(detail, operator, f"{kind}[{index}].name")
    names[name] = index


def _parse_path(entry: dict[Any, Any], operator: str, field: str) -> str:
    field = f"{field}.path"
    if "path" not in entry or entry["path"] is None:
        raise PipelineDefinitionError("missing required key 'path'", operator, field)
    path = entry["path"]
    if not isinstance(path, str):
        raise PipelineDefinitionError(f"must be a string, got {_type_name(path)}", operator, field)
    if not path.startswith("/"):
        raise PipelineDefinitionError(
            f"must be an absolute path, got {_echo(path)}", operator, field
        )
    if ".." in path.split("/"):
        raise PipelineDefinitionError(
            f"must not contain '..' components, got {_echo(path)}", operator, field
        )
    if "\0" in path:
        raise PipelineDefinitionError("must not contain NUL characters", operator, field)
    return path


def _check_mount_paths(
    operator: str, inputs: tuple[InputSpec, ...], outputs: tuple[OutputSpec, ...]
) -> None:
    used: dict[str, str] = {}
    mounts = [(f"input[{i}]", e.path) for i, e in enumerate(inputs)]
    mounts += [(f"output[{i}]", e.path) for i, e in enumerate(outputs)]
    for field, path in mounts:
        normalized = posixpath.normpath(path)
        if normalized in used:
            raise PipelineDefinitionError(
                f"path {_echo(path)} is already mounted by {used[normalized]}",
                operator,
                f"{field}.path",
            )
        used[normalized] = field


def _parse_variables(raw: dict[Any, Any], operator: str) -> FrozenMapping[str, str]:
    value = raw.get("variables")
    if value is None:
        return _EMPTY_VARIABLES
    if not isinstance(value, dict):
        raise PipelineDefinitionError(
            f"must be a mapping of names to values, got {_type_name(value)}",
            operator,
            "variables",
        )
    variables: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            hint = (
                " (YAML reads unquoted yes/no/on/off as booleans)" if isinstance(key, bool) else ""
            )
            raise PipelineDefinitionError(
                f"invalid variable name {_echo(key)}: must be a non-empty string"
                f" without '=' or NUL{hint}",
                operator,
                f"variables.{key}",
            )
        variables[key] = _variable_value(item, operator, f"variables.{key}")
    return FrozenMapping(variables)


def _variable_value(value: object, operator: str, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):  # includes datetime.datetime
        return value.isoformat()
    if isinstance(value, str | int | float):
        return str(value)
    raise PipelineDefinitionError(
        f"must be a scalar (string, number or boolean), got {_type_name(value)}",
        operator,
        field,
    )


def _parse_timeout(raw: dict[Any, Any], operator: str) -> datetime.timedelta | None:
    value = raw.get("timeout")
    if value is None:
        return None
    limit = int(MAX_STAGE_TIMEOUT.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineDefinitionError(
            f"must be a number of seconds, got {_type_name(value)} {_echo(value)}",
            operator,
            "timeout",
        )
    if (isinstance(value, float) and math.isnan(value)) or value <= 0:
        raise PipelineDefinitionError(
            f"must be a positive number of seconds, got {_echo(value)}", operator, "timeout"
        )
    if value > limit:
        raise PipelineDefinitionError(
            f"must be at most {limit} seconds, got {_echo(value)}", operator, "timeout"
        )
    timeout = datetime.timedelta(seconds=value)
    if not timeout:  # rounds to zero microseconds
        raise PipelineDefinitionError(
            f"must be a positive number of seconds, got {_echo(value)}", operator, "timeout"
        )
    return timeout


def _parse_requests(raw: dict[Any, Any], operator: str) -> FrozenMapping[str, FrozenValue]:
    value = raw.get("requests")
    if value is None:
        return _EMPTY_REQUESTS
    if not isinstance(value, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {_type_name(value)}", operator, "requests"
        )
    for key in value:
        if not isinstance(key, str):
            raise PipelineDefinitionError(
                f"keys must be strings, got {_type_name(key)} {_echo(key)}",
                operator,
                f"requests.{key}",
            )
    return FrozenMapping((key, freeze(item)) for key, item in value.items())


def _parse_list_verbatim(raw: dict[Any, Any], operator: str, key: str) -> tuple[FrozenValue, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PipelineDefinitionError(f"must be a list, got {_type_name(value)}", operator, key)
    return tuple(freeze(item) for item in value)


# --- helpers --------------------------------------------------------------------------------


def _parse_name(
    mapping: dict[Any, Any], key: str, operator: str | None, field: str, what: str
) -> str:
    if key not in mapping:
        raise PipelineDefinitionError(f"missing required key {key!r}", operator, field)
    return _check_name(mapping[key], operator, field, what)


def _check_name(value: object, operator: str | None, field: str, what: str) -> str:
    if not isinstance(value, str):
        raise PipelineDefinitionError(
            f"{what} must be a string, got {_type_name(value)} {_echo(value)}", operator, field
        )
    if not NAME_PATTERN.match(value):
        raise PipelineDefinitionError(
            f"invalid {what} {_echo(value)}: use 1-255 letters, digits, '_' or '-'",
            operator,
            field,
        )
    return value


def _parse_description(mapping: dict[Any, Any], operator: str | None, field: str) -> str:
    value = mapping.get("description")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PipelineDefinitionError(f"must be a string, got {_type_name(value)}", operator, field)
    return value


def _check_keys(
    mapping: dict[Any, Any], allowed: frozenset[str], operator: str | None, prefix: str
) -> None:
    unknown = [key for key in mapping if not isinstance(key, str) or key not in allowed]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        names = ", ".join(_echo(key) for key in unknown)
        raise PipelineDefinitionError(
            f"unknown key{plural} {names} (allowed: {', '.join(sorted(allowed))})",
            operator,
            f"{prefix}.{unknown[0]}" if prefix else str(unknown[0]),
        )


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _echo(value: object) -> str:
    """Return ``repr(value)``, shortened so error messages stay readable."""
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else f"{text[: _MAX_ECHO - 3]}..."
