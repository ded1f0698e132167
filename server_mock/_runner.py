"""Runs a job's operators as local processes: the mock's stand-in for the cluster's containers.

An operator's container maps to a local command (an operator map, else its own
``command``; see :mod:`server_mock._container_commands`).

Every operator of a job is launched when the job starts (as on the platform, ``prepare`` runs
while upstream stages are still working). Each process gets the environment a Clara cluster
gives an operator, built by :func:`server_mock._operator_env.operator_environment`. Its stdout
and stderr go to the job's ``logs/<operator>.log`` (served by Jobs.ReadLogs).

Each process is supervised (:mod:`server_mock._supervisor`: timeouts, exits, outboxes,
stops). Each launch is recorded before and after the spawn (:mod:`server_mock._launches`), so
that a restarted platform adopts the processes still running, launches what never was, and
fails what is gone (:meth:`LocalProcessLauncher.resume`).

Two runners (``runner=``): ``"sandbox"`` runs each operator in a bubblewrap sandbox (see
:mod:`server_mock._sandbox`): it sees its inputs and outputs at the paths its definition
declares (the stage context gives those paths too), its inputs read-only, its own ``/tmp``,
none of the host's other files, and nothing it starts outlives it; its declared ``models``
read-only at ``/models/<name>``. ``"process"`` runs it as a
plain process in its own session, and stops its whole process group and session. The default
is the sandbox wherever bwrap works, else the process runner with a warning. With the process
runner, a definition's command runs only when it runs a file of the command folder (see
:mod:`server_mock._command_policy`) unless ``allow_definition_commands``. Each operator's
``requests`` become limits (see :mod:`server_mock._resources`).

The services the operators declare (``services``) run the same way (operator map first, then
the container's command, in the same runner), each started before the job's operators and
stopped after them, and after a restart started again on its ports before they are adopted
(see :mod:`server_mock._services`); one the mock cannot run is refused before anything starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shlex
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from clara import contract
from server_mock._adopted_process import adopt
from server_mock._command_policy import check_definition_command, check_definition_variables
from server_mock._container_commands import (
    PYTHON_NAMES,
    ContainerCommands,
    OperatorMapError,
    load_operator_map,
)
from server_mock._definition import OperatorSpec, PipelineDefinition, expand_command
from server_mock._failpoints import failpoint
from server_mock._jobs import Job, Stage, StageState
from server_mock._launches import LaunchStatus, LaunchStore, identity_of
from server_mock._operator_env import (
    image_environment,
    operator_environment,
    service_connections,
)
from server_mock._operator_process import start_operator_process
from server_mock._resources import ResourceAllocator, ResourceLimits, parse_requests
from server_mock._sandbox import (
    SANDBOX_STAGE_SOCKET,
    RunnerKind,
    SandboxSettings,
    StageMount,
    choose_runner,
    program_dirs,
    sandbox_command,
)
from server_mock._services import JobServices, ServiceLauncher, ServiceRunner
from server_mock._supervisor import RunnerTimeouts, Supervised, ended_while_down, supervise
from server_mock._workspace import JobLayout, stage_spec_for

__all__ = [
    "LocalProcessLauncher",
    "OperatorMapError",
    "RunnerKind",
    "RunnerTimeouts",
    "choose_runner",
    "load_operator_map",
]


_log = logging.getLogger("server_mock.runner")

# Where the sandbox shows an operator its declared models, read-only: /models/<name>.
SANDBOX_MODELS_DIR = "/models"

# The launcher decides these; an inherited value (e.g. from a developer's shell) must not leak.
_DRIVER_VARIABLES = (
    contract.ENV_STAGE_SERVICE,
    contract.ENV_JOB_ID,
    contract.ENV_STAGE_NAME,
    contract.ENV_NOSYNCLOCK,
    contract.ENV_INPUT,
    contract.ENV_OUTPUT,
    contract.ENV_LOGS,
    contract.ENV_STAGE_TOKEN,
    contract.ENV_TLS_CA,
    contract.ENV_TLS_CERT,
    contract.ENV_TLS_KEY,
    contract.ENV_TLS_SERVER_NAME,
)
_TLS_FILE_VARIABLES = (contract.ENV_TLS_CA, contract.ENV_TLS_CERT, contract.ENV_TLS_KEY)
_NOT_RELAUNCHED = (
    "never launched before the platform stopped, and cannot be launched after its restart"
)
_NO_SERVICE = "a service of its job could not be started again after a restart of the platform"


@dataclass(frozen=True, slots=True)
class _LaunchPlan:
    """How one operator is launched, settled before the job starts."""

    argv: list[str]
    limits: ResourceLimits
    gpus: list[str]
    rootfs: Path | None
    command_words: int  # the last words of argv: the operator's own command

    def argv_for(self, env: Mapping[str, str]) -> list[str]:
        """``argv`` with the ``$(VAR)`` references of the operator's command expanded."""
        split = len(self.argv) - self.command_words
        return [*self.argv[:split], *expand_command(self.argv[split:], env)]


class LocalProcessLauncher:
    """Launches each operator of a job as a local process and supervises it.

    The launcher needs its platform's address (known once the platform serves) and stage
    tokens, and the platform takes its launcher when it is constructed: give
    ``platform_address=None``, construct the platform with this launcher, then :meth:`attach`
    the platform's address and token issuer before it starts a job.

    Args:
        platform_address: Returns the stage service's ``host:port`` for the drivers; ``None``
            until :meth:`attach` gives it.
        command_dir: The working folder of operator commands.
        operator_map: ``image[:tag]`` to argv, overriding containers' commands.
        timeouts: Grace periods (see :class:`RunnerTimeouts`).
        extra_env: Added to every operator's environment (after the mock's own variables
            and before the operator's ``variables``), e.g. the ``NVIDIA_CLARA_TLS_*`` files.
        stage_token: Returns the secret token of (job id, stage name), handed to the
            operator as ``NVIDIA_CLARA_STAGE_TOKEN`` (e.g. ``platform.stage_tokens.issue``).
        runner: ``"sandbox"`` or ``"process"``; by default the sandbox where bwrap works
            (see :func:`choose_runner`).
        sandbox: What the sandbox isolates beyond the default (network, image roots, ...).
        allow_definition_commands: Let the process runner run any command a definition
            gives (by default only files of ``command_dir``; the sandbox runs any).

    Raises:
        SandboxUnavailableError: The sandbox is required and bwrap does not work here.
        ValueError: ``runner="process"`` with settings only the sandbox has.

    Attributes:
        runner: The runner in use.
        exit_codes: Each finished operator process's exit code (negative: killed by that
            signal), by (job id, operator name); none for a process adopted after a restart.
        launches: The launch record of each stage launched (see :meth:`attach`).
    """

    def __init__(
        self,
        platform_address: Callable[[], str] | None,
        command_dir: Path,
        *,
        operator_map: Mapping[str, list[str]] | None = None,
        timeouts: RunnerTimeouts | None = None,
        extra_env: Mapping[str, str] | None = None,
        stage_token: Callable[[uuid.UUID, str], str] | None = None,
        runner: RunnerKind | None = None,
        sandbox: SandboxSettings | None = None,
        allow_definition_commands: bool = False,
    ) -> None:
        self._stage_token = stage_token
        self._platform_address = platform_address
        self._command_dir = command_dir
        self._timeouts = timeouts or RunnerTimeouts()
        self._extra_env = dict(extra_env or {})
        self._sandbox = sandbox or SandboxSettings()
        if self._sandbox.isolate_network and self._sandbox.stage_socket is None:
            raise ValueError("network isolation needs the platform's stage_socket")
        self.runner: RunnerKind = choose_runner(runner, self._sandbox)
        self._allow_definition_commands = allow_definition_commands
        self._resources = ResourceAllocator()
        self._commands = ContainerCommands(operator_map or {}, self._sandbox.rootfs)
        self._services = ServiceLauncher(
            ServiceRunner(
                command_dir,
                self._sandbox if self.runner == "sandbox" else None,
                allow_definition_commands=allow_definition_commands,
                commands=self._commands,
            ),
            os.environ,
            ready_timeout=self._timeouts.service_ready,
            kill_grace=self._timeouts.kill_grace,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._released = False
        self.exit_codes: dict[tuple[str, str], int] = {}
        self.launches = LaunchStore()
        self._service_ports: Callable[[uuid.UUID, Mapping[str, Mapping[str, int]]], None] | None
        self._service_ports = None

    def attach(
        self,
        platform_address: Callable[[], str],
        stage_token: Callable[[uuid.UUID, str], str] | None = None,
        launches: LaunchStore | None = None,
        service_ports: Callable[[uuid.UUID, Mapping[str, Mapping[str, int]]], None] | None = None,
        service_data: Path | None = None,
    ) -> None:
        """Give the launcher its platform's address and token issuer, once the platform exists.

        Args:
            platform_address: Returns the stage service's ``host:port`` for the drivers.
            stage_token: Returns the secret token of (job id, stage name), e.g.
                ``platform.stage_tokens.issue``.
            launches: Where to record launches: the platform's (``platform.state.launches``,
                saved in its state file); by default the launcher's own, in memory.
            service_ports: Told the ports of a job's services before the job starts, to be
                saved with it (``platform.state.record_service_ports``) and given back to
                :meth:`resume`.
            service_data: The services' common volume (``server_mock._service_data``), e.g.
                ``default_service_data(platform.state.workspace)``; none by default.
        """
        self._services.service_data = service_data
        self._platform_address = platform_address
        self._stage_token = stage_token
        if launches is not None:
            self.launches = launches
        self._service_ports = service_ports

    def command_for(self, operator: OperatorSpec) -> list[str]:
        """The argv that runs ``operator`` locally (inside its image root, if it has one).

        Raises:
            ValueError: Neither the operator map nor the container gives a command.
        """
        return self._command(operator)[0]

    def _command(self, operator: OperatorSpec) -> tuple[list[str], bool]:
        """The operator's argv, and whether it comes from the definition (not the map)."""
        command, from_definition = self._commands.command_of(operator.container)
        if not command:
            container = operator.container
            raise ValueError(
                f"operator {operator.name!r}: no local command for container "
                f"{container.image}:{container.tag}; give the container a `command` or map the "
                "image in an operator map"
            )
        return command, from_definition

    def image_root_of(self, operator: OperatorSpec) -> Path | None:
        """The unpacked image root ``operator`` runs in (``--operator-rootfs``), if any."""
        return self._commands.image_root_of(operator.container)

    def environment_for(
        self,
        job: Job,
        operator: OperatorSpec,
        layout: JobLayout,
        service_addresses: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment of ``operator``'s process (see :mod:`server_mock._operator_env`).

        ``service_addresses``: the connection variables of the services started for it.
        """
        if self._platform_address is None:
            raise RuntimeError("the launcher is not attached to a platform; call attach() first")
        return operator_environment(
            job,
            job.stage(operator.name).spec,
            logs_dir=layout.logs_dir,
            publishing_dir=layout.publishing_dir(operator.name),
            outbox_dir=layout.outbox_dir(operator.name),
            stage_service=self._platform_address(),
            inherited=os.environ,
            extra={
                **service_connections(operator),
                **(service_addresses or {}),
                **self._extra_env,
            },
            stage_token=(
                None if self._stage_token is None else self._stage_token(job.job_id, operator.name)
            ),
        )

    async def start(self, job: Job, definition: PipelineDefinition, layout: JobLayout) -> None:
        """Start the job and launch one process per operator; return once all are launched.

        Its services are started first, and ready before it starts (see
        :mod:`server_mock._services`).

        Raises:
            ValueError: An operator has no local command, a command the process runner does
                not run, invalid ``requests``, a declared path the sandbox cannot mount, or a
                service the mock cannot run (all checked before anything starts; the job
                stays created); a service did not become ready (``ServiceStartError``: the
                job stays created, its services stopped).
            OSError: A process could not be started; already started ones are stopped by
                their supervisors when the job fails.
        """
        plans = {op.name: self._plan(job, op, definition, layout) for op in definition.operators}
        service_plans = self._services.plan(definition, layout)
        layout.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.runner == "sandbox":
            for operator in definition.operators:
                _declare_stage_paths(job.stage(operator.name), operator)
        services = await self._services.start(job, service_plans, layout)
        tasks: list[asyncio.Task[None]] = []
        try:
            if self._service_ports is not None and services.running:
                self._service_ports(job.job_id, services.ports())  # saved with the start
            job.start()
            failpoint("start.job_running")
            self._launch(job, definition.operators, plans, layout, services=services, tasks=tasks)
        finally:
            self._stop_services_after(services, tasks)

    def _stop_services_after(self, services: JobServices, tasks: list[asyncio.Task[None]]) -> None:
        """Keep the job's services until every one of ``tasks`` (its supervisors) ended."""
        stopper = asyncio.create_task(
            services.stop_after(tasks), name=f"services-{services.job.job_id}"
        )
        self._tasks.add(stopper)
        stopper.add_done_callback(self._tasks.discard)

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
        """After a restart of the platform: take the running job's operators over again.

        First its services are started again on the ports they had (``service_ports``), so
        the adopted operators' addresses reach them (:meth:`ServiceLauncher.start_again
        <server_mock._services.ServiceLauncher.start_again>`); one that cannot be fails the
        stages it adopts or would launch, naming it (a stage whose process ended meanwhile
        still gets its outbox). They are stopped once the operators adopted or launched now
        have all ended.

        By each stage's launch record (:mod:`server_mock._launches`): a process that is
        still the one launched is adopted and supervised as before; a stage never launched
        is launched now; a stage whose process is gone, or whose launch the platform did not
        live to record, gets the outcome its driver left in its outbox, else fails saying
        so. So no stage of the job is left without something that can end it.

        Args:
            job: A RUNNING job of a pipeline.
            definition: The definition it runs (template arguments resolved).
            layout: Its payload's folders.
            models: The folder of each model its operators declare; ``None`` when they
                cannot be found (``problem`` says why).
            problem: Why the stages never launched cannot be launched now (``""``: they can).
            service_ports: The ports of its services before the restart, by service
                (:meth:`JobServices.ports <server_mock._services.JobServices.ports>`).
        """
        layout.logs_dir.mkdir(parents=True, exist_ok=True)
        services, service_problem = JobServices(job, self._services), ""
        try:
            services = await self._services.start_again(
                job, definition, layout, service_ports or {}
            )
        except ValueError as error:
            service_problem = f"{_NO_SERVICE}: {error}"
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._take_over(
                job,
                definition,
                layout,
                models=models,
                problem=problem or service_problem,
                service_problem=service_problem,
                services=services,
                tasks=tasks,
            )
        finally:
            self._stop_services_after(services, tasks)

    async def _take_over(
        self,
        job: Job,
        definition: PipelineDefinition,
        layout: JobLayout,
        *,
        models: Mapping[str, Path] | None,
        problem: str,
        service_problem: str,
        services: JobServices,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        """Adopt, launch or fail each unfinished stage (see :meth:`resume`).

        ``service_problem``: why the job's services are not running again (``""``: they are);
        it fails the stages whose process is adopted (a gone one's outbox still counts).
        """
        never_launched: list[OperatorSpec] = []
        for operator in definition.operators:
            stage = job.stage(operator.name)
            record = self.launches.get(job.job_id, operator.name)
            if record is None:
                if not stage.state.terminal:
                    never_launched.append(operator)
                continue
            sandboxed = record.runner == "sandbox"
            process = (
                None if record.identity is None else adopt(record.identity, sandboxed=sandboxed)
            )
            if process is not None:
                if service_problem and not stage.state.terminal:
                    job.fail_stage(operator.name, StageState.FAILED, service_problem)
                _log.info(
                    "job %s: %s: adopted its process (pid %d) after a restart",
                    job.job_id,
                    operator.name,
                    process.pid,
                )
                tasks.append(
                    self._watch(Supervised.of(job, operator, layout, process, 0, adopted=True))
                )
            elif stage.state.terminal:
                continue
            elif record.identity is None and record.status is LaunchStatus.LAUNCHED:
                # From a state file of schema 2: launched as a process nobody recorded.
                _log.warning(
                    "job %s: %s was launched by an older mock that did not record its process: "
                    "it is not supervised (cancel the job if its operator is gone)",
                    job.job_id,
                    operator.name,
                )
            else:
                ended_while_down(
                    job,
                    operator.name,
                    layout.log_path(operator.name),
                    layout.outbox_dir(operator.name),
                    never_recorded=record.identity is None,
                )
        if not never_launched:
            return
        if models is None or problem:
            for operator in never_launched:
                job.fail_stage(operator.name, StageState.FAILED, f"{_NOT_RELAUNCHED}: {problem}")
            return
        await self._launch_after_restart(
            job, definition, layout, never_launched, models, services=services, tasks=tasks
        )

    async def _launch_after_restart(
        self,
        job: Job,
        definition: PipelineDefinition,
        layout: JobLayout,
        operators: list[OperatorSpec],
        models: Mapping[str, Path],
        *,
        services: JobServices,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        plans: dict[str, _LaunchPlan] = {}
        for operator in operators:
            stage = job.stage(operator.name)
            stage.spec = dataclasses.replace(
                stage.spec,
                models=MappingProxyType({m.name: str(models[m.name]) for m in operator.models}),
            )
            try:
                plans[operator.name] = self._plan(job, operator, definition, layout)
            except ValueError as error:
                job.fail_stage(operator.name, StageState.FAILED, f"{_NOT_RELAUNCHED}: {error}")
                continue
            if self.runner == "sandbox":
                _declare_stage_paths(stage, operator)
        launchable = [op for op in operators if op.name in plans]
        _log.info(
            "job %s: launching %s, never launched before the restart",
            job.job_id,
            ", ".join(op.name for op in launchable) or "nothing",
        )
        try:
            self._launch(job, launchable, plans, layout, services=services, tasks=tasks)
        except Exception as error:  # any failure ends the stages it strands
            for operator in launchable:
                job.fail_stage(
                    operator.name, StageState.FAILED, f"launch after a restart failed: {error}"
                )

    def _launch(
        self,
        job: Job,
        operators: Sequence[OperatorSpec],
        plans: Mapping[str, _LaunchPlan],
        layout: JobLayout,
        *,
        services: JobServices,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        """Spawn and supervise each operator, recording the launch before and after the spawn.

        Each supervisor is added to ``tasks``; ``services`` give the operators their addresses.
        """
        for operator in operators:
            name = operator.name
            plan = plans[name]
            env = self.environment_for(job, operator, layout, services.addresses_for(name))
            env = self._wrap_environment(env, plan)
            argv = plan.argv_for(env)
            log_path = layout.log_path(name)
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            failpoint("start.launch_recording")
            self.launches.launching(job.job_id, name, self.runner)
            failpoint("start.launch_recorded")
            with log_path.open("ab") as log:
                process = start_operator_process(
                    argv,
                    cwd=self._command_dir,
                    env=env,
                    log=log,
                    sandboxed=self.runner == "sandbox",
                )
            failpoint("start.spawned")
            _log.info(
                "job %s: launched %s (%s runner, pid %d): %s",
                job.job_id,
                name,
                self.runner,
                process.pid,
                shlex.join(argv),
            )
            # Supervised first: should recording it fail, the job's failure still stops it.
            tasks.append(
                self._watch(
                    Supervised.of(job, operator, layout, process, log_offset, limits=plan.limits)
                )
            )
            self.launches.launched(job.job_id, name, self.runner, identity_of(process.pid))
            failpoint("start.pid_recorded")

    def _watch(self, target: Supervised) -> asyncio.Task[None]:
        """Supervise ``target`` in a task of its own (see :mod:`server_mock._supervisor`)."""

        async def run() -> None:
            code = await supervise(target, self._timeouts, released=lambda: self._released)
            if code is not None:
                self.exit_codes[(str(target.job.job_id), target.stage.spec.name)] = code

        task = asyncio.create_task(run(), name=f"supervise-{target.stage.spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _plan(
        self, job: Job, operator: OperatorSpec, definition: PipelineDefinition, layout: JobLayout
    ) -> _LaunchPlan:
        """Settle the operator's argv and limits; refuse what cannot run, before any start."""
        command, from_definition = self._command(operator)
        rootfs = self.image_root_of(operator)
        if self.runner == "process" and not self._allow_definition_commands:
            if from_definition:
                check_definition_command(
                    operator.name, operator.container.command, self._command_dir, PYTHON_NAMES
                )
            check_definition_variables(operator.name, job.stage(operator.name).spec.variables)
        limits = parse_requests(operator)
        prefix = self._resources.prefix(limits)
        reserved = job.stage(operator.name).spec.gpus  # the platform's capacity chose them
        gpus = list(reserved) if reserved is not None else self._resources.gpu_devices(limits)
        if limits.gpus > len(gpus):
            _log.warning(
                "job %s: %s requests %d GPU(s); %d available here: %s",
                job.job_id,
                operator.name,
                limits.gpus,
                len(gpus),
                ",".join(gpus) or "none",
            )
        if self.runner == "process":
            return _LaunchPlan([*prefix, *command], limits, gpus, None, len(command))
        stage = job.stage(operator.name).spec
        # The host's folders (the stage's own paths are the declared ones once it ran here).
        host = stage_spec_for(operator, definition, layout)
        mounts = (
            [
                StageMount(Path(ref.path), declared.path, writable=False)
                for ref, declared in zip(host.inputs, operator.inputs, strict=True)
            ]
            + [
                StageMount(Path(ref.path), declared.path, writable=True)
                for ref, declared in zip(host.outputs, operator.outputs, strict=True)
            ]
            + [
                StageMount(Path(folder), f"{SANDBOX_MODELS_DIR}/{name}", writable=False)
                for name, folder in stage.models.items()
            ]
        )
        tls_files = [
            Path(self._extra_env[name]) for name in _TLS_FILE_VARIABLES if name in self._extra_env
        ]
        # The job's log folder and the operator's publishing and outbox folders, at their own
        # paths, as NVIDIA_CLARA_LOGS, NVIDIA_CLARA_PUBLISHING and NVIDIA_CLARA_OUTBOX give them.
        shown = [
            (layout.logs_dir, True),
            (layout.publishing_dir(operator.name), True),
            (layout.outbox_dir(operator.name), True),  # NVIDIA_CLARA_OUTBOX, its own only
        ]
        if not from_definition and rootfs is None:
            shown += program_dirs(command)  # the operator map is the mock operator's own
        try:
            sandboxed = sandbox_command(
                command,
                settings=dataclasses.replace(
                    self._sandbox,
                    hidden_paths=(*self._sandbox.hidden_paths, layout.root.parent),
                ),
                stage_mounts=mounts,
                shared_dirs=shown,
                shared_files=tls_files,
                command_dir=self._command_dir,
                rootfs=rootfs,
                gpu_devices=gpus,
                tmp_size=limits.memory_bytes,
                home=os.environ.get("HOME"),
            )
        except ValueError as error:
            raise ValueError(f"operator {operator.name!r}: {error}") from None
        return _LaunchPlan([*prefix, *sandboxed], limits, gpus, rootfs, len(command))

    def _wrap_environment(self, env: dict[str, str], plan: _LaunchPlan) -> dict[str, str]:
        """Adjust the operator's environment to where it runs (sandbox, image, GPUs)."""
        env["CUDA_VISIBLE_DEVICES"] = ",".join(plan.gpus)
        if self.runner == "process":
            return env
        image_environment(env, image_root=plan.rootfs is not None)
        if self._sandbox.isolate_network:
            host = env[contract.ENV_STAGE_SERVICE].rpartition(":")[0].strip("[]")
            env[contract.ENV_STAGE_SERVICE] = f"unix:{SANDBOX_STAGE_SOCKET}"
            if any(name in env for name in _TLS_FILE_VARIABLES):
                # gRPC checks a unix: target's certificate against the socket's path: check it
                # against the name TCP operators dial instead, which the certificate carries.
                env.setdefault(contract.ENV_TLS_SERVER_NAME, host)
        return env

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every launched process has exited; return False on timeout."""
        tasks = list(self._tasks)
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def stop_all(self) -> None:
        """Stop supervising (the supervisors kill their processes on the way out)."""
        await self._cancel_supervisors()

    async def release_all(self) -> None:
        """Stop supervising and leave every process running, for a restart to adopt.

        ``serve --state`` stopping: the launch records name the processes, and their drivers
        reconnect to the restarted platform.
        """
        self._released = True
        await self._cancel_supervisors()

    async def _cancel_supervisors(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._services.stop_all()  # also those whose stopper was cancelled before it ran


def _declare_stage_paths(stage: Stage, operator: OperatorSpec) -> None:
    """Give the stage the paths its definition declares: where its sandbox mounts them."""
    spec = stage.spec
    stage.spec = dataclasses.replace(
        spec,
        inputs=tuple(
            dataclasses.replace(ref, path=declared.path)
            for ref, declared in zip(spec.inputs, operator.inputs, strict=True)
        ),
        outputs=tuple(
            dataclasses.replace(ref, path=declared.path)
            for ref, declared in zip(spec.outputs, operator.outputs, strict=True)
        ),
        models={name: f"{SANDBOX_MODELS_DIR}/{name}" for name in spec.models},
    )
