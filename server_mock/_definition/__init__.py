"""Parse and validate Clara pipeline definitions (Clara Deploy SDK api-version 0.3.0 to 0.7.0).

A pipeline definition is a YAML document naming the pipeline and listing its operators: each
operator runs one container, reads inputs (the job's input payload or another operator's
outputs) and writes outputs. :func:`parse_pipeline_definition` turns the text into an immutable
:class:`PipelineDefinition` or raises :class:`PipelineDefinitionError` naming the offending
operator and field.

The package's rooms: ``_yaml`` loads the text within its safety limits; ``_template`` fills
``${{ name }}`` placeholders; ``_parse`` validates the document (with ``_entries`` for inputs
and outputs, ``_resources`` for containers, requests, models and services, ``_reader`` for
the shared checks and warnings) and builds the model; ``_language`` lists what the language
defines, by ``api-version``; ``_model`` and ``_frozen`` hold the immutable types; ``_graph``
orders the operators; ``_expand`` expands ``$(VAR)`` in commands; ``_errors`` holds the one
error type. ``docs/pipeline-definitions.md`` gives the rules and their sources.

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
from server_mock._definition._expand import expand_command
from server_mock._definition._frozen import FrozenMapping
from server_mock._definition._language import OPERATOR_KEYS, SUPPORTED_API_VERSIONS
from server_mock._definition._model import (
    ContainerSpec,
    FileConnection,
    HttpConnection,
    InputSpec,
    ModelSpec,
    OperatorSpec,
    OutputSpec,
    PipelineDefinition,
    ResourceRequests,
    ServiceSpec,
)
from server_mock._definition._parse import parse_pipeline_definition, resolve_template
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
    "FileConnection",
    "FrozenMapping",
    "HttpConnection",
    "InputSpec",
    "ModelSpec",
    "OperatorSpec",
    "OutputSpec",
    "PipelineDefinition",
    "PipelineDefinitionError",
    "ResourceRequests",
    "ServiceSpec",
    "expand_command",
    "parse_pipeline_definition",
    "resolve_template",
]
