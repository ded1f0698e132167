"""The old home of the pipeline-definition parser, kept so existing imports keep working.

Everything now lives in :mod:`server_mock._definition` (one module per responsibility); new
code imports from there. This module only re-exports its names.
"""

from __future__ import annotations

from server_mock._definition import (
    DEFAULT_STAGE_TIMEOUT,
    MAX_DEFINITION_BYTES,
    MAX_DOCUMENT_DEPTH,
    MAX_DOCUMENT_NODES,
    MAX_STAGE_TIMEOUT,
    NAME_PATTERN,
    OPERATOR_KEYS,
    SUPPORTED_API_VERSIONS,
    ContainerSpec,
    FrozenMapping,
    InputSpec,
    OperatorSpec,
    OutputSpec,
    PipelineDefinition,
    PipelineDefinitionError,
    parse_pipeline_definition,
)

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "MAX_DEFINITION_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "MAX_STAGE_TIMEOUT",
    "NAME_PATTERN",
    "OPERATOR_KEYS",
    "SUPPORTED_API_VERSIONS",
    "ContainerSpec",
    "FrozenMapping",
    "InputSpec",
    "OperatorSpec",
    "OutputSpec",
    "PipelineDefinition",
    "PipelineDefinitionError",
    "parse_pipeline_definition",
]
