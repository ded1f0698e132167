"""Where a job's data lives on disk, and how a pipeline definition becomes a job's stages.

A job's payload folder (its "job payload") holds::

    input/                         the job's input payloads, copied in
    operators/<operator>/          an operator's unnamed output
    operators/<operator>/<name>/   an operator's output called <name>
    logs/<operator>.log            each operator process's stdout and stderr
    publish/<operator>/            what each operator publishes (NVIDIA_CLARA_PUBLISHING)
    outbox/<operator>/             each operator's outcome record (NVIDIA_CLARA_OUTBOX): an
                                   outcome its driver could not report over gRPC

An input without ``from`` reads ``input/``; an input ``from: op`` reads op's unnamed output
``operators/op/``, and with ``name: out`` op's output ``operators/op/out/``. The Clara docs do
not say how a job payload is laid out beyond ``operators/<operator>/``; this is the layout of
NVIDIA's own local emulator of the platform (the Clara pipeline operator sizing tool mounts
``<operator>/`` for an unnamed output and ``<operator>/<name>/`` for a named one). See
docs/platform-api.md.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import MappingProxyType

from server_mock._definition import OperatorSpec, OutputSpec, PipelineDefinition
from server_mock._jobs import InputRef, Job, OutputRef, StageSpec

__all__ = ["JobLayout", "build_job"]


class JobLayout:
    """The folders of one job's payload."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def input_dir(self) -> Path:
        """The job's input payload, copied in before the job starts."""
        return self.root / "input"

    @property
    def logs_dir(self) -> Path:
        """One ``<operator>.log`` per operator process."""
        return self.root / "logs"

    def log_path(self, operator: str) -> Path:
        """The log file of ``operator``'s process."""
        return self.logs_dir / f"{operator}.log"

    def operator_dir(self, operator: str) -> Path:
        """The folder holding ``operator``'s outputs."""
        return self.root / "operators" / operator

    def output_dir(self, operator: str, output: OutputSpec) -> Path:
        """The folder ``operator`` writes ``output`` to (its name's sub-folder, if named)."""
        folder = self.operator_dir(operator)
        return folder / output.name if output.name else folder

    def publishing_dir(self, operator: str) -> Path:
        """The folder ``operator`` publishes to (for Clara's Render Server, on a cluster)."""
        return self.root / "publish" / operator

    def outbox_dir(self, operator: str) -> Path:
        """The folder ``operator``'s driver writes its outcome record to (its outbox).

        The operator must be able to write it (a sandbox binds it writable); the platform
        reads it when the operator's process ends (see :mod:`server_mock._outbox`).
        """
        return self.root / "outbox" / operator

    def create(self, definition: PipelineDefinition) -> None:
        """Create every folder the job's stages read or write."""
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for operator in definition.operators:
            self.publishing_dir(operator.name).mkdir(parents=True, exist_ok=True)
            self.outbox_dir(operator.name).mkdir(parents=True, exist_ok=True)
            for output in operator.outputs:
                self.output_dir(operator.name, output).mkdir(parents=True, exist_ok=True)


def stage_spec_for(
    operator: OperatorSpec, definition: PipelineDefinition, layout: JobLayout
) -> StageSpec:
    """Translate one operator of a definition into the stage the platform schedules."""
    inputs: list[InputRef] = []
    for entry in operator.inputs:
        if entry.from_operator is None:
            path = layout.input_dir
        else:
            output = definition.upstream_output(entry)
            path = layout.output_dir(entry.from_operator, output)
        inputs.append(
            InputRef(
                path=str(path),
                from_stage=entry.from_operator or "",
                from_output=entry.from_output or "",
                name=entry.name or "",
                declared_path=entry.path,
            )
        )
    outputs = tuple(
        OutputRef(
            path=str(layout.output_dir(operator.name, o)),
            name=o.name or "",
            declared_path=o.path,
        )
        for o in operator.outputs
    )
    return StageSpec(
        name=operator.name,
        inputs=tuple(inputs),
        outputs=outputs,
        timeout=operator.effective_timeout,
        variables=MappingProxyType(dict(operator.variables)),
    )


def build_job(
    job_id: uuid.UUID,
    name: str,
    pipeline_id: str,
    definition: PipelineDefinition,
    layout: JobLayout,
) -> Job:
    """Create the job's folders and its (not yet started) :class:`Job`."""
    layout.create(definition)
    stages = [stage_spec_for(op, definition, layout) for op in definition.operators]
    return Job(job_id, name, pipeline_id, stages)
