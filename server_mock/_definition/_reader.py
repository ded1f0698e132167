"""Helpers every part of the parser shares: the warnings it collects, key and name checks.

A problem the Clara platform would refuse is a :class:`PipelineDefinitionError`; a key the
language does not define (or one newer than the definition's ``api-version``) is a warning:
the definition is accepted and the warning is returned with it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final

from clara.contract import NAME_PATTERN, NAME_RULE
from server_mock._definition._errors import PipelineDefinitionError, format_location
from server_mock._definition._language import Version, version_text

__all__ = [
    "ParseContext",
    "check_name",
    "echo",
    "mapping_or_none",
    "parse_description",
    "scalar_text",
    "type_name",
]

_MAX_ECHO: Final = 60


class ParseContext:
    """The state of one parse: the definition's ``api-version`` and the warnings so far.

    Args:
        api_version: The definition's declared version.

    Attributes:
        api_version: The definition's declared version.
        warnings: The warnings so far, each naming the operator and field.
    """

    def __init__(self, api_version: Version) -> None:
        self.api_version = api_version
        self.warnings: list[str] = []

    @property
    def typed(self) -> bool:
        """Whether the definition's version has typed inputs and outputs (0.5.0 and later)."""
        return self.api_version >= (0, 5, 0)

    def warn(self, detail: str, operator: str | None, field: str | None) -> None:
        """Record a warning about ``field`` of ``operator``."""
        self.warnings.append(format_location(detail, operator, field))

    def check_keys(
        self,
        mapping: Mapping[Any, Any],
        known: Mapping[str, Version],
        operator: str | None,
        prefix: str,
    ) -> None:
        """Warn about keys of ``mapping`` the language does not define, or defines later.

        Args:
            mapping: The YAML mapping to check.
            known: The keys the language defines there, with the version introducing each.
            operator: The operator the mapping belongs to, if any.
            prefix: The mapping's field path (``""`` for the operator or document itself).
        """
        for key in mapping:
            field = f"{prefix}.{key}" if prefix else str(key)
            since = known.get(key) if isinstance(key, str) else None
            if since is None:
                self.warn(
                    f"unknown key {echo(key)}: the Clara pipeline definition language does "
                    f"not define it here (known: {', '.join(sorted(known))}); ignored",
                    operator,
                    field,
                )
            elif since > self.api_version:
                self.warn(
                    f"{key!r} is defined from api-version {version_text(since)}, but this "
                    f"definition declares {version_text(self.api_version)}; read anyway",
                    operator,
                    field,
                )


def check_name(value: object, operator: str | None, field: str, what: str) -> str:
    """Return ``value`` if it is a valid Clara name, else raise naming ``field``."""
    if not isinstance(value, str):
        raise PipelineDefinitionError(
            f"{what} must be a string, got {type_name(value)} {echo(value)}", operator, field
        )
    if not NAME_PATTERN.match(value):
        raise PipelineDefinitionError(
            f"invalid {what} {echo(value)}: use {NAME_RULE}", operator, field
        )
    return value


def mapping_or_none(
    mapping: Mapping[Any, Any], key: str, operator: str | None, field: str
) -> Mapping[Any, Any] | None:
    """Return ``mapping[key]`` if it is a mapping, ``None`` if absent or null, else raise."""
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PipelineDefinitionError(f"must be a mapping, got {type_name(value)}", operator, field)
    return value


def parse_description(mapping: Mapping[Any, Any], operator: str | None, field: str) -> str:
    """Return the mapping's ``description`` (``""`` when absent), which must be a string."""
    value = mapping.get("description")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PipelineDefinitionError(f"must be a string, got {type_name(value)}", operator, field)
    return value


def scalar_text(value: object, operator: str | None, field: str) -> str:
    """Return a YAML scalar as the string an environment variable would hold.

    ``null`` becomes ``""``, booleans ``true``/``false``, dates ISO 8601, numbers as written
    by Python. Lists and mappings are refused.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):  # includes datetime.datetime
        return value.isoformat()
    if isinstance(value, str | int | float):
        return str(value)
    raise PipelineDefinitionError(
        f"must be a scalar (string, number or boolean), got {type_name(value)}",
        operator,
        field,
    )


def type_name(value: object) -> str:
    """Return the YAML name of ``value``'s type, for error messages."""
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


def echo(value: object) -> str:
    """Return ``repr(value)``, shortened so error messages stay readable."""
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else f"{text[: _MAX_ECHO - 3]}..."
