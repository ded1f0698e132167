"""Parse and validate Clara pipeline definitions (Clara Deploy SDK api-version 0.3.0 / 0.4.0).

A pipeline definition is a YAML document naming the pipeline and listing its operators: each
operator runs one container, reads inputs (the job's input payload or another operator's
outputs) and writes outputs. :func:`parse_pipeline_definition` turns the text into an immutable
:class:`PipelineDefinition` or raises :class:`PipelineDefinitionError` naming the offending
operator and field.

The package's rooms: ``_yaml`` loads the text within its safety limits, ``_parse`` validates
the document and builds the model, ``_model`` holds the immutable types, ``_graph`` orders
the operators (and reports a cycle), ``_errors`` holds the one error type.

Example:
    >>> definition = parse_pipeline_definition('''
    ... api-version: 0.4.0
    ... name: demo
    ... operators:
    ... - name: a
    ...   container: {image: example/a}
    ...   output: [{path: /out}]
    ... - name: b
    ...   container: {image: example/b}
    ...   input: [{from: a, path: /in}]
    ... ''')
    >>> definition.topological_order()
    ('a', 'b')
"""

from __future__ import annotations

from clara.contract import DEFAULT_STAGE_TIMEOUT, MAX_STAGE_TIMEOUT, NAME_PATTERN
from server_mock._definition._errors import PipelineDefinitionError
from server_mock._definition._model import (
    ContainerSpec,
    FrozenMapping,
    FrozenValue,
    InputSpec,
    OperatorSpec,
    OutputSpec,
    PipelineDefinition,
)
from server_mock._definition._parse import (
    OPERATOR_KEYS,
    SUPPORTED_API_VERSIONS,
    parse_pipeline_definition,
)
from server_mock._definition._yaml import (
    MAX_DEFINITION_BYTES,
    MAX_DOCUMENT_DEPTH,
    MAX_DOCUMENT_NODES,
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
    "FrozenValue",
    "InputSpec",
    "OperatorSpec",
    "OutputSpec",
    "PipelineDefinition",
    "PipelineDefinitionError",
    "parse_pipeline_definition",
]
