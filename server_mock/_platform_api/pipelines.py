"""``nvidia.clara.platform.Pipelines`` over :attr:`PlatformState.pipelines`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

from server_mock._definition import MAX_DEFINITION_BYTES, PipelineDefinition
from server_mock._errors import ApiError, ErrorCode
from server_mock._pipelines import DEFAULT_DEFINITION_PATH
from server_mock._platform_api.convert import identifier, parse_identifier, show
from server_mock._platform_api.limits import (
    DEFINITION_PIECE_CHARS,
    MAX_DAG_DEPTH,
    MAX_DEFINITION_MESSAGES,
    MAX_PATH_CHARS,
)
from server_mock._platform_api.metadata import edit_metadata
from server_mock._platform_api.responses import Context, ok, streaming_rpc, unary_rpc
from server_mock._platform_state import PlatformState
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    pipelines_pb2,
    pipelines_pb2_grpc,
)

__all__ = ["PipelinesService", "parse_pipeline_id", "pipeline_dag"]

_log = logging.getLogger("server_mock.api")

_DagNode = pipelines_pb2.PipelinesDetailsResponse.PipelineDagNode


def parse_pipeline_id(value: common_pb2.Identifier) -> uuid.UUID:
    """The UUID of a required pipeline id.

    Raises:
        ApiError: ``INVALID_PIPELINE_ID``.
    """
    return parse_identifier(value, "pipeline id", ErrorCode.INVALID_PIPELINE_ID)


def pipeline_dag(definition: PipelineDefinition) -> list[_DagNode]:
    """Root operators, each nesting its successors.

    An operator reached a second time (a diamond) is listed by name only, so the graph costs
    one node per edge. Nesting stops at :data:`MAX_DAG_DEPTH`; an operator cut there is
    listed again at the top level with its successors.
    """
    expanded: set[str] = set()
    pending = [op.name for op in definition.operators if not op.upstream]
    result = []

    def build(name: str, depth: int) -> _DagNode:
        node = _DagNode(name=name)
        if name in expanded:
            return node
        if depth >= MAX_DAG_DEPTH:
            pending.append(name)
            return node
        expanded.add(name)
        node.next.extend(build(child, depth + 1) for child in definition.downstream(name))
        return node

    while pending:
        name = pending.pop(0)
        if name not in expanded:
            result.append(build(name, 1))
    return result


class _DefinitionRequest:
    """The fields of a streamed Create/Update request, gathered from all its messages."""

    def __init__(self) -> None:
        self.files: dict[str, list[str]] = {}
        self.size = 0
        self.count = 0
        self.pipeline_id = ""
        self.metadata: dict[str, str] = {}

    def add(
        self, definition: pipelines_pb2.PipelineDefinitionFile, pipeline_id: common_pb2.Identifier
    ) -> None:
        code = ErrorCode.PIPELINE_DEFINITION_ERROR
        self.count += 1
        if self.count > MAX_DEFINITION_MESSAGES:
            raise ApiError(
                code, f"the definition is split into more than {MAX_DEFINITION_MESSAGES} messages"
            )
        if pipeline_id.value:
            if self.pipeline_id and pipeline_id.value != self.pipeline_id:
                raise ApiError(
                    ErrorCode.INVALID_PIPELINE_ID,
                    "the messages of one request name different pipeline ids",
                )
            self.pipeline_id = pipeline_id.value
        if len(definition.path) > MAX_PATH_CHARS or "\x00" in definition.path:
            raise ApiError(
                code, f"field definition.path: file name {show(definition.path)} is invalid"
            )
        self.size += len(definition.content)
        if self.size > MAX_DEFINITION_BYTES:
            raise ApiError(
                code,
                "field definition.content: the pipeline definition is larger than the limit of "
                f"{MAX_DEFINITION_BYTES} bytes",
            )
        self.files.setdefault(definition.path, []).append(definition.content)

    def single_file(self) -> tuple[str, str]:
        code = ErrorCode.PIPELINE_DEFINITION_ERROR
        if not self.files:
            raise ApiError(code, "field definition: the request carried no pipeline definition")
        if len(self.files) > 1:
            names = ", ".join(repr(p) for p in self.files)
            raise ApiError(
                code,
                "field definition.path: the mock supports single-file pipeline definitions; "
                f"the request has {names}",
            )
        [(path, pieces)] = self.files.items()
        return path or DEFAULT_DEFINITION_PATH, "".join(pieces)


def _warnings(definition: PipelineDefinition) -> list[str]:
    """What the parser accepted with a warning (extra keys the language does not define)."""
    return list(definition.warnings)


class PipelinesService(pipelines_pb2_grpc.PipelinesServicer):
    """``nvidia.clara.platform.Pipelines`` over :attr:`PlatformState.pipelines`.

    Create and Update answer the definition's warnings in the header's ``messages`` (code 0).
    """

    store_error: ClassVar[ErrorCode] = ErrorCode.PIPELINE_STORE_ERROR

    def __init__(self, state: PlatformState) -> None:
        self._state = state

    @unary_rpc(pipelines_pb2.PipelinesCreateResponse)
    async def Create(
        self,
        request_iterator: AsyncIterator[pipelines_pb2.PipelinesCreateRequest],
        context: Context,
    ) -> pipelines_pb2.PipelinesCreateResponse:
        """Register a pipeline; its definition is validated and nothing is stored on error."""
        gathered = _DefinitionRequest()
        async for request in request_iterator:
            gathered.add(request.definition, request.pipeline_id)
            # Checked per message, so a stream of distinct keys cannot grow without bound.
            gathered.metadata = edit_metadata(
                gathered.metadata,
                ErrorCode.INVALID_PIPELINE_METADATA,
                "the new pipeline",
                add=request.metadata,
            )
        path, text = gathered.single_file()
        pipeline_id = (
            parse_pipeline_id(common_pb2.Identifier(value=gathered.pipeline_id))
            if gathered.pipeline_id
            else None
        )
        record = self._state.pipelines.create(
            text, path=path, metadata=gathered.metadata, pipeline_id=pipeline_id
        )
        _log.info("pipeline %s (%s) created", record.pipeline_id.hex, record.name)
        return pipelines_pb2.PipelinesCreateResponse(
            header=ok(_warnings(record.definition)), pipeline_id=identifier(record.pipeline_id)
        )

    @streaming_rpc(pipelines_pb2.PipelinesDetailsResponse)
    async def Details(
        self, request: pipelines_pb2.PipelinesDetailsRequest, context: Context
    ) -> AsyncIterator[pipelines_pb2.PipelinesDetailsResponse]:
        """Stream the definition in pieces; the first message has the graph and metadata."""
        record = self._state.pipelines.get(parse_pipeline_id(request.pipeline_id))
        text = record.text
        pieces = [
            text[i : i + DEFINITION_PIECE_CHARS]
            for i in range(0, len(text), DEFINITION_PIECE_CHARS)
        ]
        for index, piece in enumerate(pieces or [""]):
            response = pipelines_pb2.PipelinesDetailsResponse(
                header=ok(),
                pipeline_id=identifier(record.pipeline_id),
                name=record.name,
                definition=pipelines_pb2.PipelineDefinitionFile(path=record.path, content=piece),
            )
            if index == 0:
                response.dag.extend(pipeline_dag(record.definition))
                response.metadata.update(record.metadata)
            yield response

    @streaming_rpc(pipelines_pb2.PipelinesListResponse)
    async def List(
        self, request: pipelines_pb2.PipelinesListRequest, context: Context
    ) -> AsyncIterator[pipelines_pb2.PipelinesListResponse]:
        """One message per pipeline; a lone header message when there are none."""
        records = self._state.pipelines.all()
        if not records:
            yield pipelines_pb2.PipelinesListResponse(header=ok())
        for record in records:
            yield pipelines_pb2.PipelinesListResponse(
                header=ok(),
                details=pipelines_pb2.PipelinesListResponse.PipelineDetails(
                    pipeline_id=identifier(record.pipeline_id),
                    name=record.name,
                    metadata=record.metadata,
                ),
            )

    @unary_rpc(pipelines_pb2.PipelinesRemoveResponse)
    async def Remove(
        self, request: pipelines_pb2.PipelinesRemoveRequest, context: Context
    ) -> pipelines_pb2.PipelinesRemoveResponse:
        """Unregister a pipeline; its jobs keep running their definition."""
        record = self._state.pipelines.remove(parse_pipeline_id(request.pipeline_id))
        _log.info("pipeline %s (%s) removed", record.pipeline_id.hex, record.name)
        return pipelines_pb2.PipelinesRemoveResponse(header=ok())

    @unary_rpc(pipelines_pb2.PipelinesUpdateResponse, store_error=ErrorCode.PIPELINE_UPDATE_ERROR)
    async def Update(
        self,
        request_iterator: AsyncIterator[pipelines_pb2.PipelinesUpdateRequest],
        context: Context,
    ) -> pipelines_pb2.PipelinesUpdateResponse:
        """Replace a pipeline's definition; nothing changes if the new one is invalid."""
        gathered = _DefinitionRequest()
        async for request in request_iterator:
            gathered.add(request.definition, request.pipeline_id)
        path, text = gathered.single_file()
        pipeline_id = parse_pipeline_id(common_pb2.Identifier(value=gathered.pipeline_id))
        record = self._state.pipelines.update(pipeline_id, text, path)
        return pipelines_pb2.PipelinesUpdateResponse(header=ok(_warnings(record.definition)))

    @unary_rpc(pipelines_pb2.PipelinesAddMetadataResponse)
    async def AddMetadata(
        self, request: pipelines_pb2.PipelinesAddMetadataRequest, context: Context
    ) -> pipelines_pb2.PipelinesAddMetadataResponse:
        """Merge key/value pairs into the pipeline's metadata."""
        record = self._state.pipelines.get(parse_pipeline_id(request.pipeline_id))
        metadata = edit_metadata(
            record.metadata,
            ErrorCode.INVALID_PIPELINE_METADATA,
            f"pipeline {record.pipeline_id.hex}",
            add=request.metadata,
        )
        self._state.pipelines.set_metadata(record, metadata)
        return pipelines_pb2.PipelinesAddMetadataResponse(
            header=ok(), pipeline_id=identifier(record.pipeline_id), metadata=record.metadata
        )

    @unary_rpc(pipelines_pb2.PipelinesRemoveMetadataResponse)
    async def RemoveMetadata(
        self, request: pipelines_pb2.PipelinesRemoveMetadataRequest, context: Context
    ) -> pipelines_pb2.PipelinesRemoveMetadataResponse:
        """Delete keys from the pipeline's metadata (absent keys are ignored)."""
        record = self._state.pipelines.get(parse_pipeline_id(request.pipeline_id))
        metadata = edit_metadata(
            record.metadata,
            ErrorCode.INVALID_PIPELINE_METADATA,
            f"pipeline {record.pipeline_id.hex}",
            remove=request.keys,
        )
        self._state.pipelines.set_metadata(record, metadata)
        return pipelines_pb2.PipelinesRemoveMetadataResponse(
            header=ok(), pipeline_id=identifier(record.pipeline_id), metadata=record.metadata
        )
