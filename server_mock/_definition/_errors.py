"""The one error a pipeline definition can raise, naming the operator and field at fault."""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineDefinitionError", "format_location"]


class PipelineDefinitionError(ValueError):
    """A pipeline definition is malformed or inconsistent.

    ``str(error)`` names the operator and field when known, e.g.
    ``operator 'segment', field 'input[1].from': unknown operator 'lod-volume' (did you mean
    'load-volume'?)``.

    Args:
        detail: What is wrong, without the operator/field prefix.
        operator: The offending operator's name; ``None`` for pipeline-level problems and for
            operators whose name is itself invalid.
        field: The offending field's path, relative to the operator when ``operator`` is set
            (``input[1].from``, ``container.image``), else from the document root
            (``api-version``, ``operators[2].name``); ``None`` for document-level problems.

    Attributes:
        detail: What is wrong, without the operator/field prefix.
        operator: The offending operator's name, or ``None``.
        field: The offending field's path, or ``None``.
    """

    def __init__(self, detail: str, operator: str | None = None, field: str | None = None) -> None:
        self.detail = detail
        self.operator = operator
        self.field = field
        super().__init__(format_location(detail, operator, field))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.detail, self.operator, self.field))


def format_location(detail: str, operator: str | None, field: str | None) -> str:
    """Prefix ``detail`` with the operator and field it concerns (as errors and warnings do)."""
    where = []
    if operator is not None:
        where.append(f"operator {operator!r}")
    if field is not None:
        where.append(f"field {field!r}")
    return f"{', '.join(where)}: {detail}" if where else detail
