"""What an operator runs and needs: container, variables, requests, models, services.

Services come with their ``connections``: the environment variables they give the operator.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any, Final

from server_mock._definition._errors import PipelineDefinitionError
from server_mock._definition._frozen import FrozenMapping
from server_mock._definition._language import (
    CONNECTION_FILE_KEYS,
    CONNECTION_HTTP_KEYS,
    CONNECTIONS_KEYS,
    CONTAINER_KEYS,
    MODEL_KEYS,
    REQUESTS_KEYS,
    SERVICE_KEYS,
    Version,
)
from server_mock._definition._model import (
    ContainerSpec,
    FileConnection,
    HttpConnection,
    ModelSpec,
    ResourceRequests,
    ServiceSpec,
)
from server_mock._definition._reader import (
    ParseContext,
    check_name,
    echo,
    mapping_or_none,
    parse_description,
    scalar_text,
    type_name,
)

__all__ = [
    "parse_container",
    "parse_models",
    "parse_requests",
    "parse_services",
    "parse_variables",
]

_EMPTY: Final[FrozenMapping[str, str]] = FrozenMapping()
_MIN_PORT: Final = 1024
_MAX_PORT: Final = 65535
_REQUEST_MINIMUMS: Final = (("cpu", 1), ("gpu", 0), ("memory", 1))


def parse_container(
    context: ParseContext, owner: Mapping[Any, Any], operator: str, field: str
) -> ContainerSpec:
    """Parse the required ``container`` of an operator or service (``field`` is its path)."""
    if owner.get("container") is None:
        raise PipelineDefinitionError("missing required key 'container'", operator, field)
    container = owner["container"]
    if not isinstance(container, dict):
        raise PipelineDefinitionError(
            f"must be a mapping, got {type_name(container)}", operator, field
        )
    context.check_keys(container, CONTAINER_KEYS, operator, field)
    if "image" not in container:
        raise PipelineDefinitionError("missing required key 'image'", operator, f"{field}.image")
    image = _image_word(container["image"], operator, f"{field}.image")
    tag = "latest"
    raw_tag = container.get("tag")
    if raw_tag is not None:
        tag = _image_word(raw_tag, operator, f"{field}.tag")
    command = _parse_command(container.get("command"), operator, f"{field}.command")
    return ContainerSpec(image, tag, command)


def parse_variables(owner: Mapping[Any, Any], operator: str, field: str) -> FrozenMapping[str, str]:
    """Parse ``variables``: names to scalar values, every value converted to a string."""
    value = owner.get("variables")
    if value is None:
        return _EMPTY
    if not isinstance(value, dict):
        raise PipelineDefinitionError(
            f"must be a mapping of names to values, got {type_name(value)}", operator, field
        )
    variables: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            hint = (
                " (YAML reads unquoted yes/no/on/off as booleans)" if isinstance(key, bool) else ""
            )
            raise PipelineDefinitionError(
                f"invalid variable name {echo(key)}: must be a non-empty string"
                f" without '=' or NUL{hint}",
                operator,
                f"{field}.{key}",
            )
        variables[key] = scalar_text(item, operator, f"{field}.{key}")
    return FrozenMapping(variables)


def parse_requests(
    context: ParseContext, owner: Mapping[Any, Any], operator: str, field: str
) -> ResourceRequests:
    """Parse ``requests``: whole numbers of CPUs, GPUs and megabytes of memory."""
    value = mapping_or_none(owner, "requests", operator, field)
    if value is None:
        return ResourceRequests()
    context.check_keys(value, REQUESTS_KEYS, operator, field)
    amounts: dict[str, int | None] = {}
    for key, minimum in _REQUEST_MINIMUMS:
        amount = value.get(key)
        if amount is not None:
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise PipelineDefinitionError(
                    f"must be a whole number, got {type_name(amount)} {echo(amount)}",
                    operator,
                    f"{field}.{key}",
                )
            if amount < minimum:
                raise PipelineDefinitionError(
                    f"must be at least {minimum}, got {amount}", operator, f"{field}.{key}"
                )
        amounts[key] = amount
    return ResourceRequests(**amounts)


def parse_models(
    context: ParseContext, owner: Mapping[Any, Any], operator: str
) -> tuple[ModelSpec, ...]:
    """Parse ``models``: a list of ``{name: ...}``, each model listed once."""
    seen: dict[str, int] = {}
    models: list[ModelSpec] = []
    for index, entry in enumerate(_list(owner, "models", operator, "models")):
        field = f"models[{index}]"
        if not isinstance(entry, dict):
            raise PipelineDefinitionError(
                f"must be a mapping with a 'name', got {type_name(entry)} {echo(entry)}",
                operator,
                field,
            )
        context.check_keys(entry, MODEL_KEYS, operator, field)
        name = _required_name(entry, operator, field, "model name")
        _unique(seen, name, index, operator=operator, field=f"{field}.name", kind="model")
        models.append(ModelSpec(name))
    return tuple(models)


def parse_services(
    context: ParseContext, owner: Mapping[Any, Any], operator: str
) -> tuple[ServiceSpec, ...]:
    """Parse ``services``; names, and the variables their connections export, are unique."""
    seen: dict[str, int] = {}
    exported: dict[str, str] = {}
    services: list[ServiceSpec] = []
    for index, entry in enumerate(_list(owner, "services", operator, "services")):
        field = f"services[{index}]"
        if not isinstance(entry, dict):
            raise PipelineDefinitionError(
                f"must be a mapping, got {type_name(entry)}", operator, field
            )
        context.check_keys(entry, SERVICE_KEYS, operator, field)
        name = _required_name(entry, operator, field, "service name")
        _unique(seen, name, index, operator=operator, field=f"{field}.name", kind="service")
        imported = entry.get("import")
        if imported is not None and (not isinstance(imported, str) or not imported):
            raise PipelineDefinitionError(
                f"must be a document reference, got {type_name(imported)} {echo(imported)}",
                operator,
                f"{field}.import",
            )
        container = (
            None
            if imported is not None and entry.get("container") is None
            else parse_container(context, entry, operator, f"{field}.container")
        )
        http, files = _parse_connections(context, entry, operator, field)
        named: list[tuple[str, int, HttpConnection | FileConnection]] = [
            ("http", i, c) for i, c in enumerate(http)
        ]
        named += [("file", i, c) for i, c in enumerate(files)]
        for kind, position, connection in named:
            folded = connection.name.lower()
            if folded in exported:
                raise PipelineDefinitionError(
                    f"connection {connection.name!r} is already exported by service "
                    f"{exported[folded]!r}: each names the environment variable it sets",
                    operator,
                    f"{field}.connections.{kind}[{position}].name",
                )
            exported[folded] = name
        services.append(
            ServiceSpec(
                name=name,
                container=container,
                description=parse_description(entry, operator, f"{field}.description"),
                http_connections=http,
                file_connections=files,
                requests=parse_requests(context, entry, operator, f"{field}.requests"),
                variables=parse_variables(entry, operator, f"{field}.variables"),
                imported_from=imported,
            )
        )
    return tuple(services)


def _parse_connections(
    context: ParseContext, service: Mapping[Any, Any], operator: str, field: str
) -> tuple[tuple[HttpConnection, ...], tuple[FileConnection, ...]]:
    field = f"{field}.connections"
    connections = mapping_or_none(service, "connections", operator, field)
    if connections is None:
        return (), ()
    context.check_keys(connections, CONNECTIONS_KEYS, operator, field)
    http: list[HttpConnection] = []
    for index, entry in enumerate(_list(connections, "http", operator, f"{field}.http")):
        where = f"{field}.http[{index}]"
        http_entry = _connection(context, entry, CONNECTION_HTTP_KEYS, operator, where)
        name = _required_name(http_entry, operator, where, "connection name")
        port = http_entry.get("port")
        if port is not None and (
            isinstance(port, bool)
            or not isinstance(port, int)
            or not _MIN_PORT <= port <= _MAX_PORT
        ):
            raise PipelineDefinitionError(
                f"must be a port number from {_MIN_PORT} to {_MAX_PORT}, got {echo(port)}",
                operator,
                f"{where}.port",
            )
        http.append(HttpConnection(name, port))
    files: list[FileConnection] = []
    for index, entry in enumerate(_list(connections, "file", operator, f"{field}.file")):
        where = f"{field}.file[{index}]"
        file_entry = _connection(context, entry, CONNECTION_FILE_KEYS, operator, where)
        name = _required_name(file_entry, operator, where, "connection name")
        path = file_entry.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise PipelineDefinitionError(
                f"must be an absolute path, got {echo(path)}", operator, f"{where}.path"
            )
        files.append(FileConnection(name, path))
    return tuple(http), tuple(files)


def _connection(
    context: ParseContext,
    entry: object,
    known: Mapping[str, Version],
    operator: str,
    field: str,
) -> Mapping[Any, Any]:
    if not isinstance(entry, dict):
        raise PipelineDefinitionError(
            f"must be a mapping with a 'name', got {type_name(entry)}", operator, field
        )
    context.check_keys(entry, known, operator, field)
    return entry


def _list(owner: Mapping[Any, Any], key: str, operator: str, field: str) -> list[Any]:
    value = owner.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PipelineDefinitionError(f"must be a list, got {type_name(value)}", operator, field)
    return value


def _required_name(entry: Mapping[Any, Any], operator: str, field: str, what: str) -> str:
    if entry.get("name") is None:
        raise PipelineDefinitionError("missing required key 'name'", operator, f"{field}.name")
    return check_name(entry["name"], operator, f"{field}.name", what)


def _unique(
    seen: dict[str, int], name: str, index: int, *, operator: str, field: str, kind: str
) -> None:
    folded = name.lower()
    if folded in seen:
        raise PipelineDefinitionError(
            f"duplicate {kind} name {name!r} (also used by {kind}s[{seen[folded]}]; names are "
            "case-insensitive)",
            operator,
            field,
        )
    seen[folded] = index


def _image_word(value: object, operator: str, field: str) -> str:
    if not isinstance(value, str):
        raise PipelineDefinitionError(
            f"must be a string, got {type_name(value)} {echo(value)}", operator, field
        )
    if not value.strip():
        raise PipelineDefinitionError("must not be empty", operator, field)
    if any(c.isspace() for c in value):
        raise PipelineDefinitionError(
            f"must not contain whitespace: {echo(value)}", operator, field
        )
    return value


def _parse_command(value: object, operator: str, field: str) -> tuple[str, ...]:
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
            f"must be a list of strings or a command line, got {type_name(value)}",
            operator,
            field,
        )
    for index, word in enumerate(value):
        if not isinstance(word, str):
            raise PipelineDefinitionError(
                f"must be a string, got {type_name(word)} {echo(word)}",
                operator,
                f"{field}[{index}]",
            )
    return tuple(value)
