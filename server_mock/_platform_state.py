"""The platform's state, shared by every service the mock serves (on the loop thread).

Besides the stores, :class:`PlatformState` carries the job operations of the platform API
(:meth:`~PlatformState.create_job`, :meth:`~PlatformState.start_job`) so that other front
ends (the CLI, tests) get the same semantics as the gRPC API. They raise
:class:`~server_mock._errors.ApiError` for refused requests and change nothing then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from server_mock._capacity import Capacity, CapacityExceededError, JobDemand
from server_mock._definition import (
    PipelineDefinition,
    PipelineDefinitionError,
    resolve_template,
)
from server_mock._errors import ApiError, ErrorCode
from server_mock._failpoints import failpoint
from server_mock._jobs import Job, JobState, JobStore, StageState, UnknownJobError
from server_mock._launches import LaunchStore
from server_mock._models import ModelRepository
from server_mock._payloads import PayloadRecord, PayloadStore, PayloadType, copy_files
from server_mock._pipelines import PipelineStore
from server_mock._saved_metadata import replace_metadata
from server_mock._scheduler import CapacityScheduler
from server_mock._workspace import JobLayout, build_job

__all__ = [
    "InProcessLauncher",
    "JobRecord",
    "PlatformState",
    "ResumingLauncher",
    "StageLauncher",
]


class StageLauncher(Protocol):
    """Starts a job's operators (the cluster's containers, in the real platform)."""

    async def start(self, job: Job, definition: PipelineDefinition, layout: JobLayout) -> None:
        """Start ``job`` and launch its operators; return once they are launched."""


@runtime_checkable
class ResumingLauncher(StageLauncher, Protocol):
    """A launcher that takes a running job's operators over again after a restart."""

    async def resume(
        self,
        job: Job,
        definition: PipelineDefinition,
        layout: JobLayout,
        *,
        models: Mapping[str, Path] | None,
        problem: str = "",
        service_ports: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """Restart the job's services on ``service_ports``, then adopt, launch or fail its stages.

        See the runner's :meth:`~server_mock._runner.LocalProcessLauncher.resume`.
        """


class InProcessLauncher:
    """Launches nothing: the job's drivers are run by the caller (tests, in-process runs)."""

    async def start(self, job: Job, definition: PipelineDefinition, layout: JobLayout) -> None:
        """Start the job; its stages wait for drivers that someone else runs."""
        job.start()


@dataclass(slots=True)
class JobRecord:
    """What the platform API knows of a job beyond its stages (owned by the loop thread).

    Jobs created through the Jobs API have one; jobs made directly from stages
    (``MockPlatform.create_job``) do not.

    Attributes:
        job_id: The job's id.
        pipeline_id: The pipeline the job was created from.
        payload_id: The job's (pipeline) payload.
        definition: The pipeline definition the job runs (a later pipeline update does not
            change it).
        layout: The folders of the job's payload.
        priority: The legacy ``JobPriority`` value (1 lower ... 4 immediate).
        input_payload_ids: Reusable payloads copied into the job's input folder on start.
        metadata: The job's metadata.
        variables: The values given on start (empty until then).
        definition_text: The YAML text of ``definition`` (what persistence saves).
        starting: True while a start request is copying inputs and launching operators.
        queued: While the job waits for capacity after its start (``serve`` counts
            capacity; see :mod:`server_mock._scheduler`), its place in the queue.
        gpu_ids: The GPU ids each operator was given when the job was admitted.
        service_ports: The ports of the services started for the job, by service (its name
            in the job) then connection: a restart starts them again on the same ports,
            which the job's operators were given (:meth:`PlatformState.record_service_ports`).
    """

    job_id: uuid.UUID
    pipeline_id: uuid.UUID
    payload_id: uuid.UUID
    definition: PipelineDefinition
    layout: JobLayout
    priority: int = 2
    input_payload_ids: tuple[uuid.UUID, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    definition_text: str = ""
    starting: bool = False
    queued: int | None = None
    gpu_ids: dict[str, tuple[str, ...]] = field(default_factory=dict)
    service_ports: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def start_requested(self) -> bool:
        """True once a start request took the job, until its operators are launched."""
        return self.starting or self.queued is not None


@dataclass
class PlatformState:
    """Everything the mock platform knows.

    Attributes:
        workspace: The folder holding payloads and job payloads.
        launcher: Starts the operators of a job.
        jobs: Every job and its stages.
        pipelines: The registered pipelines.
        payloads: The payloads, in ``workspace / "payloads"``.
        models: The model repository, in ``workspace / "models"``; the platform resolves an
            operator's ``models:`` with :meth:`ModelRepository.find` (name -> folder).
        job_records: The platform API's records of the jobs it created, by job id.
        transaction: Groups the persistence writes of one request into one transaction (a
            no-op without a state file; see :mod:`server_mock._persistence`).
        capacity: What the platform can run at once; ``None``: every job starts at once,
            and no capacity is counted.
        scheduler: Starts jobs as ``capacity`` allows (see :mod:`server_mock._scheduler`);
            made from ``capacity``.
        launches: Which stages were launched, as which process (a launcher attached with
            it records there; saved with a state file, read by :meth:`resume_jobs`'s launcher).
    """

    workspace: Path
    launcher: StageLauncher
    jobs: JobStore = field(default_factory=JobStore)
    pipelines: PipelineStore = field(default_factory=PipelineStore)
    payloads: PayloadStore = field(init=False)
    models: ModelRepository = field(init=False)
    job_records: dict[uuid.UUID, JobRecord] = field(default_factory=dict)
    transaction: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    capacity: Capacity | None = None
    scheduler: CapacityScheduler | None = field(init=False, default=None)
    launches: LaunchStore = field(default_factory=LaunchStore)

    def __post_init__(self) -> None:
        if self.capacity is not None:
            self.scheduler = CapacityScheduler(self.capacity, self._launch_job)
        self.payloads = PayloadStore(self.workspace / "payloads")
        self.models = ModelRepository(self.workspace / "models")

    # -- jobs of the platform API -----------------------------------------------------------

    def get_job(self, job_id: uuid.UUID) -> Job:
        """Return the job with this id.

        Raises:
            ApiError: No such job (``JOB_NOT_FOUND``).
        """
        try:
            return self.jobs.get(job_id)
        except UnknownJobError:
            raise ApiError(ErrorCode.JOB_NOT_FOUND, f"job {job_id.hex} not found") from None

    def create_job(
        self,
        pipeline_id: uuid.UUID,
        name: str,
        *,
        priority: int = 2,
        input_payload_ids: Iterable[uuid.UUID] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> JobRecord:
        """Create a job of a registered pipeline, with its own (pipeline) payload.

        The job is not started; upload into its payload, then call :meth:`start_job`.

        Raises:
            ApiError: Unknown pipeline, or an input payload is unknown, listed twice or not
                reusable. Nothing is created then.
        """
        pipeline = self.pipelines.get(pipeline_id)
        inputs = tuple(input_payload_ids)
        for index, payload_id in enumerate(inputs):
            if payload_id in inputs[:index]:
                raise ApiError(
                    ErrorCode.INVALID_JOB_INPUTS,
                    f"input payload {payload_id.hex} is listed more than once",
                )
            if self.payloads.get(payload_id).type is not PayloadType.REUSABLE:
                raise ApiError(
                    ErrorCode.INVALID_JOB_INPUTS,
                    f"input payload {payload_id.hex} belongs to a job; "
                    "only reusable payloads can be job inputs",
                )
        job_id = uuid.uuid4()
        with self.transaction():  # the payload, the job and its record: saved together
            payload = self.payloads.create(PayloadType.PIPELINE, job_id=job_id)
            layout = JobLayout(payload.root)
            record = JobRecord(
                job_id=job_id,
                pipeline_id=pipeline_id,
                payload_id=payload.payload_id,
                definition=pipeline.definition,
                layout=layout,
                priority=priority,
                input_payload_ids=inputs,
                metadata=dict(metadata or {}),
                definition_text=pipeline.text,
            )
            try:
                job = build_job(job_id, name, pipeline_id.hex, pipeline.definition, layout)
                self.job_records[job_id] = record  # before add: saving the job saves its record
                self.jobs.add(job)
            except BaseException:
                self.job_records.pop(job_id, None)
                self.payloads.delete(payload.payload_id)
                raise
        return record

    async def start_job(self, job_id: uuid.UUID, variables: Mapping[str, str] | None = None) -> Job:
        """Copy the job's input payloads into its input folder, then launch it.

        ``variables`` are the job's named values: for a definition that declares template
        ``parameters`` they fill its ``${{ name }}`` placeholders (the Template page); for one
        that declares none they are added to every operator's variables (overriding the
        definition's), as before. A definition the mock cannot run (shared-memory inputs or
        outputs, imported services) is refused here, naming the operator and the field.

        With a :attr:`scheduler`, a job that does not fit in the free capacity now is queued
        (it stays created: ``JOB_STATE_PENDING``) and launched when it does; one that could
        never fit is refused, and nothing changes.

        Raises:
            ApiError: Unknown job; the job is not in the created state (or is being started,
                or queued); an input payload is gone or collides with another; the job asks
                for more than the whole capacity (``JOB_EXCEEDS_CAPACITY``); the launcher
                failed.
        """
        job = self.get_job(job_id)
        record = self.job_records.get(job_id)
        if job.state is not JobState.CREATED or (record is not None and record.start_requested):
            state = job.state.value
            if job.state is JobState.CREATED:
                state = "being started" if record is None or record.queued is None else "queued"
            raise ApiError(
                ErrorCode.JOB_NOT_STARTABLE,
                f"job {job_id.hex} is {state}; only a created job can be started",
            )
        if record is None:  # made from stages, not from a pipeline: nothing to copy or launch
            job.start()
            return job
        record.starting = True
        try:
            definition = _definition_for_start(job, record, variables or {})
            self._model_dirs(definition)  # refuse a missing model before anything is copied
            demand: JobDemand | None = None
            if self.scheduler is not None:
                try:
                    demand = self.scheduler.check(definition)
                except CapacityExceededError as error:
                    raise ApiError(
                        ErrorCode.JOB_EXCEEDS_CAPACITY,
                        f"job {job_id.hex} can never run here: {error}",
                    ) from None
            sources = [self.payloads.get(p) for p in record.input_payload_ids]
            plan = self.payloads.copy_plan(sources, record.layout.input_dir)
            try:
                await asyncio.to_thread(_copy_or_undo, plan)
            except OSError as error:
                raise ApiError(
                    ErrorCode.INTERNAL, f"copying the input payloads failed: {error}"
                ) from error
            failpoint("start.inputs_copied")
            if _state_of(job) is not JobState.CREATED:  # cancelled during the copy
                raise ApiError(
                    ErrorCode.JOB_NOT_STARTABLE,
                    f"job {job_id.hex} was {job.state.value} while its inputs were copied",
                )
            record.variables = dict(variables or {})  # what launching resolves the job with
            if self.scheduler is None or demand is None:
                await self._launch_job(job)
            else:
                await self.scheduler.submit(job, record, demand)
            return job
        finally:
            record.starting = False

    async def _launch_job(self, job: Job) -> None:
        """Launch the operators of a job of the Jobs API (at its start, or when admitted).

        Its definition is made again from the record (template arguments, models), so a job
        queued before a restart launches the same way.

        Raises:
            ApiError: The definition or a model no longer resolves, or the launcher failed.
        """
        record = self.job_records[job.job_id]
        record.starting = True
        try:
            definition = _definition_for_start(job, record, record.variables)
            model_dirs = self._model_dirs(definition)
            for operator in definition.operators:
                if operator.models:
                    stage = job.stage(operator.name)
                    stage.spec = dataclasses.replace(
                        stage.spec,
                        models=MappingProxyType(
                            {m.name: str(model_dirs[m.name]) for m in operator.models}
                        ),
                    )
            try:
                await self.launcher.start(job, definition, record.layout)
            except Exception as error:
                if _state_of(job) is JobState.RUNNING:
                    for name, stage in job.stages.items():
                        if not stage.state.terminal:
                            job.fail_stage(name, StageState.FAILED, f"launch failed: {error}")
                raise ApiError(
                    ErrorCode.JOB_LAUNCH_FAILED, f"could not launch job {job.job_id.hex}: {error}"
                ) from error
            failpoint("start.launched")
        finally:
            record.starting = False

    def record_service_ports(
        self, job_id: uuid.UUID, ports: Mapping[str, Mapping[str, int]]
    ) -> None:
        """Keep the ports of the services started for a job, in its record.

        The launcher calls it (see :meth:`server_mock._runner.LocalProcessLauncher.attach`)
        once the services are ready and before it starts the job, whose start saves them with
        the record. A job made from stages has no record and no services: nothing is kept.
        """
        record = self.job_records.get(job_id)
        if record is not None:
            record.service_ports = {
                name: dict(by_connection) for name, by_connection in ports.items()
            }

    def waiting_messages(self, job_id: uuid.UUID) -> list[str]:
        """Why the job waits for capacity, as messages: none unless it is queued."""
        message = None if self.scheduler is None else self.scheduler.waiting_message(job_id)
        return [] if message is None else [message]

    def restore_schedule(self) -> None:
        """After loading a state file: running jobs hold their share again, queued ones wait.

        Call on the loop thread, once, after the stores were loaded (a no-op without a
        :attr:`scheduler`).
        """
        if self.scheduler is None:
            return
        self.scheduler.restore(
            (job, record, _demand_of(record))
            for job in self.jobs.all()
            if (record := self.job_records.get(job.job_id)) is not None
        )

    async def resume_jobs(self) -> None:
        """After a restart: let the launcher take over every running job's operators again.

        Each RUNNING job of a pipeline goes to :meth:`ResumingLauncher.resume` with the
        definition it runs; a launcher that cannot resume (the in-process one: the caller
        runs the drivers) is left alone.
        """
        launcher = self.launcher
        if not isinstance(launcher, ResumingLauncher):
            return
        for job in self.jobs.all():
            record = self.job_records.get(job.job_id)
            if record is None or job.state is not JobState.RUNNING:
                continue
            definition, models, problem = record.definition, None, ""
            try:
                definition = _definition_for_start(job, record, record.variables)
                models = self._model_dirs(definition)
            except ApiError as error:
                problem = str(error)
            await launcher.resume(
                job,
                definition,
                record.layout,
                models=models,
                problem=problem,
                service_ports=record.service_ports,
            )

    def _model_dirs(self, definition: PipelineDefinition) -> dict[str, Path]:
        """The folder of every model the definition's operators declare.

        Raises:
            ApiError: ``MODEL_NOT_FOUND``, naming the operator and the model, when a declared
                model is not in the model repository (nothing is launched then).
        """
        folders: dict[str, Path] = {}
        missing: list[str] = []
        for operator in definition.operators:
            for index, model in enumerate(operator.models):
                folder = self.models.find(model.name)
                if folder is None:
                    missing.append(
                        f"operator {operator.name!r}, field models[{index}].name: model "
                        f"{model.name!r} is not in the model repository (upload it with "
                        "Models.CreateModel first)"
                    )
                else:
                    folders[model.name] = folder
        if missing:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, "; ".join(missing))
        return folders

    def set_job_metadata(self, job: Job, metadata: dict[str, str]) -> None:
        """Replace the metadata of a job made through the Jobs API, saved before the ack.

        Raises:
            ApiError: The job was made from stages, not through the Jobs API: it has no
                record to hold metadata.
        """
        record = self.job_records.get(job.job_id)
        if record is None:
            raise ApiError(
                ErrorCode.INVALID_JOB_REQUEST,
                f"job {job.job_id.hex} was not created through the Jobs API: it has no metadata",
            )
        replace_metadata(record, metadata, job.on_change, job)

    def payload_job(self, payload: PayloadRecord) -> Job | None:
        """The job owning a pipeline payload, if it is known."""
        if payload.job_id is None:
            return None
        try:
            return self.jobs.get(payload.job_id)
        except UnknownJobError:
            return None

    def check_payload_writable(self, payload: PayloadRecord) -> None:
        """Refuse changes to a job's payload once the job is starting or started.

        Raises:
            ApiError: ``PAYLOAD_READ_ONLY``.
        """
        job = self.payload_job(payload)
        if job is None:
            return
        record = self.job_records.get(job.job_id)
        if job.state is not JobState.CREATED or (record is not None and record.start_requested):
            raise ApiError(
                ErrorCode.PAYLOAD_READ_ONLY,
                f"payload {payload.payload_id.hex} belongs to job {job.job_id.hex}, which has "
                "started: a job's payload is read-only once the job starts",
            )

    def check_payload_deletable(self, payload: PayloadRecord) -> None:
        """Refuse deleting a job's payload until the job has ended.

        Raises:
            ApiError: ``PAYLOAD_IN_USE``.
        """
        job = self.payload_job(payload)
        if job is not None and not job.state.terminal:
            raise ApiError(
                ErrorCode.PAYLOAD_IN_USE,
                f"payload {payload.payload_id.hex} belongs to job {job.job_id.hex}, which is "
                f"{job.state.value}: cancel the job or let it end first",
            )


def _state_of(job: Job) -> JobState:
    """The job's state now (a call, so type narrowing from before an ``await`` does not stick)."""
    return job.state


def _copy_or_undo(plan: list[tuple[Path, Path]]) -> None:
    """Copy the files of ``plan``; on failure remove the ones already copied."""
    done: list[Path] = []
    try:
        for source, destination in plan:
            copy_files([(source, destination)])
            done.append(destination)
    except BaseException:
        for path in done:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def _definition_for_start(
    job: Job, record: JobRecord, variables: Mapping[str, str]
) -> PipelineDefinition:
    """The definition the job runs: template arguments resolved, and one the mock can run.

    Raises:
        ApiError: An argument or placeholder is wrong, the arguments change the pipeline's
            operators or their inputs and outputs (the job's stages were laid out at
            creation), or the definition needs what the mock does not serve.
    """
    definition = record.definition
    if definition.parameters:
        try:
            resolved = resolve_template(record.definition_text, variables)
        except PipelineDefinitionError as error:
            raise ApiError(ErrorCode.INVALID_JOB_REQUEST, f"variables: {error}") from error
        if _shape(resolved) != _shape(definition):
            raise ApiError(
                ErrorCode.INVALID_JOB_REQUEST,
                "variables: the template arguments change the pipeline's operators, inputs or "
                "outputs; the mock lays a job's stages out when the job is created, so only "
                "values within an operator (image, command, variables, ...) may depend on them",
            )
        for stage in job.stages.values():
            stage.spec = dataclasses.replace(
                stage.spec,
                variables=MappingProxyType(dict(resolved.operator(stage.spec.name).variables)),
            )
        definition = resolved
    elif variables:
        definition = _with_variables(job, definition, variables)
    problems = definition.unsupported_for_start()
    if problems:
        raise ApiError(ErrorCode.JOB_LAUNCH_FAILED, "; ".join(problems))
    return definition


def _demand_of(record: JobRecord) -> JobDemand:
    """What a job asks of the capacity: its definition's requests, template resolved."""
    definition = record.definition
    if definition.parameters:
        # Start resolved it before; if it no longer does, launching will say so.
        with contextlib.suppress(PipelineDefinitionError):
            definition = resolve_template(record.definition_text, record.variables)
    return JobDemand.of(definition)


def _shape(definition: PipelineDefinition) -> list[tuple[str, list[str], list[str]]]:
    return [
        (
            op.name.lower(),
            [f"{i.from_operator}:{i.from_output}:{i.path}" for i in op.inputs],
            [f"{o.name}:{o.path}" for o in op.outputs],
        )
        for op in definition.operators
    ]


def _with_variables(
    job: Job, definition: PipelineDefinition, variables: Mapping[str, str]
) -> PipelineDefinition:
    """Add ``variables`` to every stage of ``job`` and operator of ``definition``."""
    for stage in job.stages.values():
        merged = {**stage.spec.variables, **variables}
        stage.spec = dataclasses.replace(stage.spec, variables=MappingProxyType(merged))
    return dataclasses.replace(
        definition,
        operators=tuple(
            dataclasses.replace(op, variables={**op.variables, **variables})
            for op in definition.operators
        ),
    )
