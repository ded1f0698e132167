"""Registered pipelines: their definition text, the parsed definition and their metadata.

Everything here runs on the mock platform's event-loop thread, so it needs no locks. Every
method validates before it changes anything: a refused request leaves the store as it was.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from server_mock._definition import (
    PipelineDefinition,
    PipelineDefinitionError,
    parse_pipeline_definition,
)
from server_mock._errors import ApiError, ErrorCode
from server_mock._saved_metadata import replace_metadata

__all__ = ["DEFAULT_DEFINITION_PATH", "PipelineRecord", "PipelineStore"]

DEFAULT_DEFINITION_PATH = "pipeline.yaml"
"""The file name a definition gets when the client names none."""


@dataclass(slots=True)
class PipelineRecord:
    """One registered pipeline (mutable; owned by the loop thread).

    Attributes:
        pipeline_id: The pipeline's id.
        path: The definition file's name, as the client gave it.
        text: The definition's YAML text.
        definition: The parsed definition.
        metadata: The pipeline's metadata.
        created_at: When the pipeline was registered (Unix time).
        updated_at: When the definition was last replaced (Unix time).
    """

    pipeline_id: uuid.UUID
    path: str
    text: str
    definition: PipelineDefinition
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        """The pipeline's name, from its definition."""
        return self.definition.name


def _parse(text: str) -> PipelineDefinition:
    try:
        return parse_pipeline_definition(text)
    except PipelineDefinitionError as error:
        raise ApiError(
            ErrorCode.PIPELINE_LOAD_ERROR, f"invalid pipeline definition: {error}"
        ) from error


class PipelineStore:
    """All registered pipelines, by id.

    ``on_saved`` (a record was created or its definition replaced) and ``on_removed`` (by id),
    when set, are called after each change, before the caller gets control back: the
    persistence hooks. If one raises, the change is undone and the error propagates.
    """

    def __init__(self) -> None:
        self._pipelines: dict[uuid.UUID, PipelineRecord] = {}
        self.on_saved: Callable[[PipelineRecord], None] | None = None
        self.on_removed: Callable[[uuid.UUID], None] | None = None

    def restore(self, record: PipelineRecord) -> None:
        """Put back a pipeline loaded from saved state (no hook is called)."""
        self._pipelines[record.pipeline_id] = record

    def create(
        self,
        text: str,
        *,
        path: str = DEFAULT_DEFINITION_PATH,
        metadata: Mapping[str, str] | None = None,
        pipeline_id: uuid.UUID | None = None,
    ) -> PipelineRecord:
        """Parse ``text`` and register it as a new pipeline.

        Raises:
            ApiError: The definition is invalid (``PIPELINE_LOAD_ERROR``; nothing is stored)
                or ``pipeline_id`` is taken (``PIPELINE_EXISTS``).
        """
        if pipeline_id is not None and pipeline_id in self._pipelines:
            raise ApiError(ErrorCode.PIPELINE_EXISTS, f"pipeline {pipeline_id.hex} already exists")
        definition = _parse(text)
        record = PipelineRecord(
            pipeline_id=pipeline_id or uuid.uuid4(),
            path=path or DEFAULT_DEFINITION_PATH,
            text=text,
            definition=definition,
            metadata=dict(metadata or {}),
        )
        self._pipelines[record.pipeline_id] = record
        if self.on_saved is not None:
            try:
                self.on_saved(record)
            except BaseException:
                del self._pipelines[record.pipeline_id]
                raise
        return record

    def get(self, pipeline_id: uuid.UUID) -> PipelineRecord:
        """Return the pipeline with this id.

        Raises:
            ApiError: No such pipeline (``PIPELINE_NOT_FOUND``).
        """
        try:
            return self._pipelines[pipeline_id]
        except KeyError:
            raise ApiError(
                ErrorCode.PIPELINE_NOT_FOUND, f"pipeline {pipeline_id.hex} not found"
            ) from None

    def all(self) -> list[PipelineRecord]:
        """Every pipeline, oldest first."""
        return list(self._pipelines.values())

    def set_metadata(self, record: PipelineRecord, metadata: dict[str, str]) -> None:
        """Replace a pipeline's metadata and save it before the caller acknowledges.

        If saving fails, the old metadata is put back and the error propagates.
        """
        replace_metadata(record, metadata, self.on_saved, record)

    def update(self, pipeline_id: uuid.UUID, text: str, path: str = "") -> PipelineRecord:
        """Replace a pipeline's definition (jobs already created keep theirs).

        Raises:
            ApiError: No such pipeline, or the new definition is invalid (nothing changes).
        """
        record = self.get(pipeline_id)
        definition = _parse(text)
        before = (record.text, record.definition, record.path, record.updated_at)
        record.text = text
        record.definition = definition
        record.path = path or record.path
        record.updated_at = time.time()
        if self.on_saved is not None:
            try:
                self.on_saved(record)
            except BaseException:
                record.text, record.definition, record.path, record.updated_at = before
                raise
        return record

    def remove(self, pipeline_id: uuid.UUID) -> PipelineRecord:
        """Unregister a pipeline (jobs already created keep running their definition).

        Raises:
            ApiError: No such pipeline.
        """
        record = self.get(pipeline_id)
        if self.on_removed is not None:
            self.on_removed(pipeline_id)
        del self._pipelines[pipeline_id]
        return record
