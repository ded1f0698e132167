"""The stage context: who the stage is, how long it may run, and where its data lives."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

from clara._payload import PayloadEntry

__all__ = ["StageContext"]


@dataclass(frozen=True, slots=True)
class StageContext:
    """Everything the driver learns about its stage before running it.

    Attributes:
        job_id: The job's identifier.
        job_name: The job's human-readable name.
        pipeline_id: The identifier of the pipeline the job runs, if known.
        stage_name: The stage's name within the pipeline.
        stage_timeout: How long ``execute`` may run once the inputs are ready.
        inputs: The stage's input entries.
        outputs: The stage's output entries.
        variables: The pipeline definition's variables for this stage.
    """

    job_id: uuid.UUID
    job_name: str
    pipeline_id: str
    stage_name: str
    stage_timeout: timedelta
    inputs: tuple[PayloadEntry, ...]
    outputs: tuple[PayloadEntry, ...]
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
