"""Validate a definition document and build its :class:`PipelineDefinition`.

Every refusal is a :class:`PipelineDefinitionError` naming the operator and the field; every
warning (a key the language does not define, or a key newer than the definition's
``api-version``) is logged on the ``server_mock.definition`` logger and returned in
:attr:`PipelineDefinition.warnings`.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

from clara.contract import MAX_STAGE_TIMEOUT
from server_mock._definition._entries import check_mount_paths, parse_inputs, parse_outputs
from server_mock._definition._errors import PipelineDefinitionError
from server_mock._definition._graph import cycle_error, kahn
from server_mock._definition._language import (
    OPERATOR_KEYS,
    ORCHESTRATORS,
    SUPPORTED_API_VERSIONS,
    TOP_LEVEL_KEYS,
    parse_version,
)
from server_mock._definition._model import (
    InputSpec,
    OperatorSpec,
    OutputSpec,
    PipelineDefinition,
)
from server_mock._definition._reader import (
    ParseContext,
    check_name,
    echo,
    mapping_or_none,
    parse_description,
    type_name,
)
from server_mock._definition._resources import (
    parse_container,
    parse_models,
    parse_requests,
    parse_services,
    parse_variables,
)
from server_mock._definition._template import resolve_placeholders
from server_mock._definition._yaml import compose_yaml, construct_yaml

__all__ = ["parse_pipeline_definition", "resolve_template"]

_log = logging.getLogger("server_mock.definition")
_NO_ARGUMENTS: Final[Mapping[str, str]] = {}


def parse_pipeline_definition(text: str | bytes) -> PipelineDefinition:
    """Parse and validate a Clara pipeline definition.

    Template placeholders take their parameters' defaults (a job's own values fill them at
    start: :func:`resolve_template`).

    Args:
        text: The YAML document; ``bytes`` may be UTF-8 or UTF-16 (with BOM).

    Returns:
        The validated definition; its ``warnings`` list what was accepted but not defined
        by the language.

    Raises:
        PipelineDefinitionError: The text is too large, is not valid YAML, or is not a valid
            pipeline definition. The error's ``operator`` and ``field`` locate the problem.
        TypeError: ``text`` is neither ``str`` nor ``bytes``.
    """
    return resolve_template(text, _NO_ARGUMENTS)


def resolve_template(text: str | bytes, arguments: Mapping[str, str]) -> PipelineDefinition:
    """Fill the definition's template placeholders from ``arguments``, then parse it.

    Each ``${{ name }}`` takes the argument of that name (compared case-insensitively), else
    the default its ``parameters`` entry declares, as the Template page describes.

    Args:
        text: The definition's YAML text, as it was created.
        arguments: The job's named values (``Jobs.Start``'s variables).

    Returns:
        The definition as the job runs it.

    Raises:
        PipelineDefinitionError: An argument matches no declared parameter, a placeholder
            names no parameter or is malformed, or the resolved definition is invalid; the
            error names the placeholder's operator and field.
        TypeError: ``text`` is neither ``str`` nor ``bytes``.
    """
    resolution = resolve_placeholders(compose_yaml(text), arguments)
    document = construct_yaml(resolution.root)
    definition = _build(document, resolution.parameters, resolution.warnings)
    for warning in definition.warnings:
        _log.warning("pipeline %r: %s", definition.name, warning)
    return definition


# --- document level -------------------------------------------------------------------------


def _build(document: object, parameters: dict[str, str], warnings: list[str]) -> PipelineDefinition:
    if not isinstance(document, dict):
        raise PipelineDefinitionError(
            f"the definition must be a YAML mapping, got {type_name(document)}"
        )
    api_version = _parse_api_version(document)
    context = ParseContext(parse_version(api_version) or (0, 0, 0))
    context.warnings.extend(warnings)
    context.check_keys(document, TOP_LEVEL_KEYS, None, "")
    name = _parse_name(document, None, "name", "pipeline name")
    description = parse_description(document, None, "description")
    orchestrator = _parse_orchestrator(context, document)
    pull_secrets = _parse_pull_secrets(document)
    mapping_or_none(document, "parameters", None, "parameters")
    operators = _resolve_references(_parse_operators(context, document))
    order = kahn(operators)
    if len(order) != len(operators):
        raise cycle_error(operators, order)
    return PipelineDefinition(
        api_version=api_version,
        name=name,
        operators=operators,
        description=description,
        orchestrator=orchestrator,
        pull_secrets=pull_secrets,
        parameters=parameters,
        warnings=tuple(context.warnings),
    )


def _parse_api_version(document: Mapping[Any, Any]) -> str:
    if "api-version" not in document:
        raise PipelineDefinitionError("missing required key 'api-version'", None, "api-version")
    value = document["api-version"]
    if not isinstance(value, str) or parse_version(value) is None:
        supported = ", ".join(SUPPORTED_API_VERSIONS)
        hint = " (write it as a quoted string)" if isinstance(value, int | float) else ""
        raise PipelineDefinitionError(
            f"unsupported api-version {echo(value)}{hint}; supported: {supported}",
            None,
            "api-version",
        )
    return value


def _parse_orchestrator(context: ParseContext, document: Mapping[Any, Any]) -> str | None:
    value = document.get("orchestrator")
    if value is None:
        return None
    canonical = {engine.lower(): engine for engine in ORCHESTRATORS}
    engine = canonical.get(value.lower()) if isinstance(value, str) else None
    if engine is None:
        raise PipelineDefinitionError(
            f"must be {' or '.join(ORCHESTRATORS)}, got {type_name(value)} {echo(value)}",
            None,
            "orchestrator",
        )
    if engine == "Argo" and context.typed:
        raise PipelineDefinitionError(
            "typed pipelines (api-version 0.5.0 and above) run only on the Clara orchestrator",
            None,
            "orchestrator",
        )
    return engine


def _parse_pull_secrets(document: Mapping[Any, Any]) -> tuple[str, ...]:
    value = document.get("pull-secrets")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PipelineDefinitionError(
            f"must be a list of secret names, got {type_name(value)}", None, "pull-secrets"
        )
    for index, secret in enumerate(value):
        if not isinstance(secret, str) or not secret.strip():
            raise PipelineDefinitionError(
                f"must be a secret name, got {type_name(secret)} {echo(secret)}",
                None,
                f"pull-secrets[{index}]",
            )
    return tuple(value)


def _parse_operators(context: ParseContext, document: Mapping[Any, Any]) -> list[OperatorSpec]:
    if "operators" not in document:
        raise PipelineDefinitionError("missing required key 'operators'", None, "operators")
    raw = document["operators"]
    if not isinstance(raw, list):
        raise PipelineDefinitionError(
            f"must be a list of operators, got {type_name(raw)}", None, "operators"
        )
    if not raw:
        raise PipelineDefinitionError("the pipeline defines no operators", None, "operators")
    seen: dict[str, tuple[int, str]] = {}
    return [_parse_operator(context, entry, index, seen) for index, entry in enumerate(raw)]


# --- references between operators -----------------------------------------------------------


def _resolve_references(operators: list[OperatorSpec]) -> tuple[OperatorSpec, ...]:
    """Point every ``from`` input at its upstream operator and output (names fold case)."""
    by_folded = {spec.name.lower(): spec for spec in operators}
    resolved = []
    for spec in operators:
        inputs = tuple(
            _resolve_input(spec, index, entry, by_folded) for index, entry in enumerate(spec.inputs)
        )
        resolved.append(dataclasses.replace(spec, inputs=inputs))
    return tuple(resolved)


def _resolve_input(
    spec: OperatorSpec, index: int, entry: InputSpec, by_folded: Mapping[str, OperatorSpec]
) -> InputSpec:
    source = entry.from_operator
    if source is None:
        return entry
    field = f"input[{index}]"
    if source.lower() == spec.name.lower():
        raise PipelineDefinitionError(
            "an operator cannot take input from itself", spec.name, f"{field}.from"
        )
    upstream = by_folded.get(source.lower())
    if upstream is None:
        close = difflib.get_close_matches(source.lower(), list(by_folded), n=1)
        hint = f" (did you mean {by_folded[close[0]].name!r}?)" if close else ""
        raise PipelineDefinitionError(
            f"unknown operator {echo(source)}{hint}", spec.name, f"{field}.from"
        )
    output = _upstream_output(spec.name, field, entry.name, upstream)
    for key, mine, theirs in (
        ("type", entry.type, output.type),
        ("element-type", entry.element_type, output.element_type),
    ):
        if mine is not None and theirs is not None and mine != theirs:
            raise PipelineDefinitionError(
                f"{key} {mine!r} does not match the {key} of the output it reads "
                f"({upstream.name}:{output.name or '(unnamed)'} is {theirs!r})",
                spec.name,
                f"{field}.{key}",
            )
    return dataclasses.replace(
        entry,
        from_operator=upstream.name,
        name=None if entry.name is None else output.name,
        from_output=output.name,
    )


def _upstream_output(
    operator: str, field: str, wanted: str | None, upstream: OperatorSpec
) -> OutputSpec:
    declared = upstream.outputs
    listed = ", ".join("(unnamed)" if o.name is None else repr(o.name) for o in declared)
    if wanted is not None:
        for output in declared:
            if output.name is not None and output.name.lower() == wanted.lower():
                return output
        outputs = f"its outputs: {listed}" if listed else "it declares no outputs"
        raise PipelineDefinitionError(
            f"operator {upstream.name!r} declares no output {wanted!r} ({outputs})",
            operator,
            f"{field}.name",
        )
    if len(declared) == 1:
        return declared[0]  # the Input page: no name reads the upstream's only output
    for output in declared:
        if output.name is None:
            return output
    if not declared:
        raise PipelineDefinitionError(
            f"operator {upstream.name!r} declares no outputs to read", operator, f"{field}.from"
        )
    raise PipelineDefinitionError(
        f"operator {upstream.name!r} has several outputs ({listed}): name the one to read",
        operator,
        f"{field}.name",
    )


# --- operator level -------------------------------------------------------------------------


def _parse_operator(
    context: ParseContext, raw: object, index: int, seen: dict[str, tuple[int, str]]
) -> OperatorSpec:
    where = f"operators[{index}]"
    if not isinstance(raw, dict):
        raise PipelineDefinitionError(
            f"an operator must be a mapping, got {type_name(raw)}", None, where
        )
    name = _parse_name(raw, None, f"{where}.name", "operator name")
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
    context.check_keys(raw, OPERATOR_KEYS, name, "")
    mapping_or_none(raw, "parameters", name, "parameters")
    description = parse_description(raw, name, "description")
    container = parse_container(context, raw, name, "container")
    inputs = parse_inputs(context, raw, name)
    outputs = parse_outputs(context, raw, name)
    check_mount_paths(name, inputs, outputs)
    return OperatorSpec(
        name=name,
        description=description,
        container=container,
        inputs=inputs,
        outputs=outputs,
        variables=parse_variables(raw, name, "variables"),
        timeout=_parse_timeout(raw, name),
        requests=parse_requests(context, raw, name, "requests"),
        models=parse_models(context, raw, name),
        services=parse_services(context, raw, name),
    )


def _parse_timeout(raw: Mapping[Any, Any], operator: str) -> datetime.timedelta | None:
    value = raw.get("timeout")
    if value is None:
        return None
    limit = int(MAX_STAGE_TIMEOUT.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipelineDefinitionError(
            f"must be a number of seconds, got {type_name(value)} {echo(value)}",
            operator,
            "timeout",
        )
    if (isinstance(value, float) and math.isnan(value)) or value <= 0:
        raise PipelineDefinitionError(
            f"must be a positive number of seconds, got {echo(value)}", operator, "timeout"
        )
    if value > limit:
        raise PipelineDefinitionError(
            f"must be at most {limit} seconds, got {echo(value)}", operator, "timeout"
        )
    timeout = datetime.timedelta(seconds=value)
    if not timeout:  # rounds to zero microseconds
        raise PipelineDefinitionError(
            f"must be a positive number of seconds, got {echo(value)}", operator, "timeout"
        )
    return timeout


def _parse_name(mapping: Mapping[Any, Any], operator: str | None, field: str, what: str) -> str:
    if "name" not in mapping:
        raise PipelineDefinitionError("missing required key 'name'", operator, field)
    return check_name(mapping["name"], operator, field, what)
