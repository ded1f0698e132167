"""A job's ``services``: started before its operators, ready once their ports answer, stopped after.

Clara ensures that a service "declared as required by a pipeline's operator(s) is running
before starting the execution of any of a pipeline's operator(s)" (the Service page); the mock
does that per job, running each service the way it runs operators (:class:`ServiceRunner`:
the operator map first, then the container's ``command``, in the same runner and under the
same command rules):

* plan (:meth:`ServiceLauncher.plan`, before anything starts): a service the mock cannot run
  (no mapped image and no ``command``, a command the process runner refuses, network
  isolation) is refused naming the operator, ``services[i]``, the service and its image, and
  what to map or set. Equal declarations of several operators share one instance per job
  (the Service page: "a long running container application which can support multiple
  operators in parallel").
* ports: every ``connections.http`` entry gets a free ephemeral port of its own, never one a
  running service of another job holds (a declared port is not used: two jobs may run at
  once). The service gets it as ``CLARA_MOCK_SERVICE_PORT_<connection name>``
  (:data:`SERVICE_PORT_PREFIX`), as ``PORT`` when it has a single http connection, and in the
  connection's own variable (``localhost:<port>``); the operators that declare it get the
  connection's variable. ``$(VAR)`` in its command expands from that environment.
* ready: once every port accepts a TCP connection, within ``ready_timeout``. A service that
  exits first, or does not open its ports in time, is stopped with the others and fails
  Jobs.Start (:class:`ServiceStartError`) naming the operator, the service, why, and its log;
  the job stays created, as for any refusal at Start. Readiness is polled (with backoff,
  racing the process's exit and the job's cancellation): nothing signals another process's
  ``listen``.
* stopped once every operator process of the job has exited, however the job ended, and on
  the server's shutdown: SIGTERM, then SIGKILL after ``kill_grace``. A service that ends while
  the job runs is logged (its operators' calls to it fail). A service is never taken over by
  a restarted server, so it ends with the mock's process (bwrap's ``--die-with-parent``;
  ``setpriv --pdeathsig`` for the process runner).
* after a restart (:meth:`ServiceLauncher.start_again`): each service of a running job is
  started again on the ports it had (:meth:`JobServices.ports`, saved with the job), which
  its adopted operators were given, and must be ready before they are adopted; one that
  cannot be (port taken, exits, never listens, cannot run, ports unknown) fails the stages
  whose operators the runner adopts or would launch, naming it and why.
* its output goes to the job's ``logs/services/<name>.log`` (:func:`service_log_path`).
* the common volume (:mod:`server_mock._service_data`): ``NVIDIA_CLARA_SERVICE_DATA_PATH``
  names it, read-only in the sandbox; ``$(NVIDIA_CLARA_SERVICE_DATA_PATH)`` expands to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shlex
import shutil
import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server_mock._command_policy import check_definition_command, check_definition_variables
from server_mock._container_commands import PYTHON_NAMES, ContainerCommands
from server_mock._definition import (
    OperatorSpec,
    PipelineDefinition,
    ServiceSpec,
    expand_command,
)
from server_mock._jobs import Job, JobState
from server_mock._operator_env import PLATFORM_VARIABLES, image_environment
from server_mock._operator_process import OperatorProcess, start_operator_process
from server_mock._sandbox import SandboxSettings, program_dirs, sandbox_command
from server_mock._service_data import SERVICE_DATA_VARIABLE, service_data_mounts, service_data_path
from server_mock._workspace import JobLayout

__all__ = [
    "SERVICE_PORT_PREFIX",
    "JobServices",
    "ServiceLauncher",
    "ServicePlan",
    "ServiceRunner",
    "ServiceStartError",
    "runs_outside",
    "service_log_path",
]

SERVICE_PORT_PREFIX = "CLARA_MOCK_SERVICE_PORT_"
"""``CLARA_MOCK_SERVICE_PORT_<connection name>``: the port a service must listen on."""

_log = logging.getLogger("server_mock.runner")

_POLL_FIRST = 0.02  # seconds between readiness probes, doubling up to _POLL_MAX
_POLL_MAX = 0.25
_PROBE_TIMEOUT = 1.0
_EXIT_WAIT = 10.0  # after SIGKILL
_TAIL_CHARS = 300


class ServiceStartError(ValueError):
    """A service did not become ready; the message names it, why, and its log."""


@dataclass(frozen=True, slots=True)
class ServiceRunner:
    """How the launcher runs processes, which its services share with its operators.

    Attributes:
        command_dir: The working folder of commands (``--operators-dir``).
        sandbox: The sandbox settings; ``None`` for the process runner.
        allow_definition_commands: Let the process runner run any command a definition gives.
        commands: Each container's command (the operator map first) and image root.
    """

    command_dir: Path
    sandbox: SandboxSettings | None
    allow_definition_commands: bool
    commands: ContainerCommands


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """How one service of a job is run, settled before anything starts.

    Attributes:
        service: The declaration; operators declaring an equal one share this instance.
        where: Where the definition declares it first (``operator 'infer', field
            services[0]``), for messages.
        operators: The operators that declare it.
        argv: The argv that runs it (its sandbox, if any, around its command).
        command_words: How many of the last words of ``argv`` are the service's own command
            (where ``$(VAR)`` is expanded).
        sandboxed: Whether ``argv`` runs it in a bubblewrap sandbox.
        image_root: Whether that sandbox's root is an unpacked image (``--operator-rootfs``).
        log_name: Its log's name (:func:`service_log_path`): the service's name, with a
            number when another operator declares a different service of the same name.
    """

    service: ServiceSpec
    where: str
    operators: tuple[str, ...]
    argv: tuple[str, ...]
    command_words: int
    sandboxed: bool
    image_root: bool = False
    log_name: str = ""

    @property
    def key(self) -> str:
        """The service's name in its job (its log's name): unique among the job's services."""
        return self.log_name or self.service.name

    def argv_for(self, env: Mapping[str, str]) -> list[str]:
        """``argv`` with the ``$(VAR)`` references of the service's command expanded."""
        split = len(self.argv) - self.command_words
        return [*self.argv[:split], *expand_command(self.argv[split:], env)]


def runs_outside(operator: OperatorSpec, service: ServiceSpec) -> bool:
    """Whether the operator's ``variables`` give every connection of ``service`` itself.

    Such a service is taken as run outside the mock, which starts nothing for it.
    """
    names = [c.name for c in service.http_connections]
    names += [c.name for c in service.file_connections]
    return bool(names) and all(name in operator.variables for name in names)


def service_log_path(layout: JobLayout, name: str) -> Path:
    """The log of the job's service ``name`` (``logs/services/<name>.log``)."""
    return layout.logs_dir / "services" / f"{name}.log"


@dataclass(eq=False, slots=True)
class _Running:
    """A started service."""

    plan: ServicePlan
    process: OperatorProcess
    log_path: Path
    ports: dict[str, int]  # connection name -> port
    exited: asyncio.Future[int]

    @property
    def name(self) -> str:
        return self.plan.service.name

    def describe_ports(self) -> str:
        return ", ".join(f"{port} ({name})" for name, port in self.ports.items())


class ServiceLauncher:
    """Plans and starts the services of jobs; knows the ports its running services hold.

    Args:
        runner: How processes run (the launcher's runner, sandbox and command rules).
        inherited: The environment services start from (the mock's own; the variables the
            platform decides for operators are dropped).
        ready_timeout: How long a service has to accept connections on all its ports.
        kill_grace: After SIGTERM, how long before SIGKILL.
        service_data: The common volume (:mod:`server_mock._service_data`), created when a
            service starts; ``None``: services get no ``NVIDIA_CLARA_SERVICE_DATA_PATH``.

    Used on the platform's event loop only.
    """

    def __init__(
        self,
        runner: ServiceRunner,
        inherited: Mapping[str, str],
        *,
        ready_timeout: float,
        kill_grace: float,
        service_data: Path | None = None,
    ) -> None:
        self.service_data = service_data
        self._runner = runner
        self._inherited = inherited
        self._ready_timeout = ready_timeout
        self._kill_grace = kill_grace
        self._ports_held: set[int] = set()
        self._running: set[_Running] = set()

    # -- planning -----------------------------------------------------------------------

    def plan(self, definition: PipelineDefinition, layout: JobLayout) -> list[ServicePlan]:
        """The services the definition's operators need, each settled once; nothing starts.

        Imported services (refused by the definition's ``unsupported_for_start``) and
        services run outside the mock (:func:`runs_outside`) get no plan.

        Raises:
            ValueError: A service the mock cannot run, naming the operator, the field, the
                service and its image, and what to map or set.
        """
        plans: dict[ServiceSpec, ServicePlan] = {}
        log_names: set[str] = set()
        for operator in definition.operators:
            for index, service in enumerate(operator.services):
                if service.container is None or runs_outside(operator, service):
                    continue
                if service in plans:
                    shared = plans[service]
                    operators = (*shared.operators, operator.name)
                    plans[service] = dataclasses.replace(shared, operators=operators)
                    continue
                where = f"operator {operator.name!r}, field services[{index}]"
                log_name, number = service.name, 1
                while log_name.lower() in log_names:  # a different service of the same name
                    number += 1
                    log_name = f"{service.name}-{number}"
                log_names.add(log_name.lower())
                plans[service] = self._plan(where, operator.name, service, layout, log_name)
        return list(plans.values())

    def _plan(
        self, where: str, operator: str, service: ServiceSpec, layout: JobLayout, log_name: str
    ) -> ServicePlan:
        runner = self._runner
        container = service.container
        assert container is not None
        if runner.sandbox is not None and runner.sandbox.isolate_network:
            raise _refusal(
                where,
                service,
                "with network isolation every operator has a network of its own and cannot "
                "reach a service's port",
            )
        command, from_definition = runner.commands.command_of(container)
        if not command:
            raise _refusal(
                where, service, "the image is not mapped and its container has no command"
            )
        if runner.sandbox is None and not runner.allow_definition_commands:
            try:
                if from_definition:
                    check_definition_command(
                        operator, container.command, runner.command_dir, PYTHON_NAMES
                    )
                check_definition_variables(operator, service.variables)
            except ValueError as error:
                raise _refusal(where, service, str(error)) from None
        rootfs = runner.commands.image_root_of(container)
        if runner.sandbox is None:
            argv = _ended_with_the_mock(command)
        else:
            settings = dataclasses.replace(
                runner.sandbox,
                die_with_server=True,  # a restarted server starts it again instead
                hidden_paths=(*runner.sandbox.hidden_paths, layout.root.parent),
            )
            try:
                argv = sandbox_command(
                    command,
                    settings=settings,
                    stage_mounts=service_data_mounts(self.service_data),
                    shared_dirs=[] if from_definition or rootfs else program_dirs(command),
                    command_dir=runner.command_dir,
                    rootfs=rootfs,
                    home=self._inherited.get("HOME"),
                )
            except ValueError as error:
                raise _refusal(where, service, str(error)) from None
        return ServicePlan(
            service,
            where,
            (operator,),
            tuple(argv),
            len(command),
            sandboxed=runner.sandbox is not None,
            image_root=rootfs is not None,
            log_name=log_name,
        )

    # -- starting -----------------------------------------------------------------------

    async def start(
        self,
        job: Job,
        plans: Sequence[ServicePlan],
        layout: JobLayout,
        ports: Mapping[str, Mapping[str, int]] | None = None,
    ) -> JobServices:
        """Start every planned service of ``job`` and wait until each is ready.

        Args:
            job: The job (still created; running after a restart); a change of its state
                stops the wait.
            plans: The services to run.
            layout: The job's folders (the logs go to its log folder).
            ports: After a restart of the platform: the ports each service had
                (:meth:`JobServices.ports`), which it gets again; ``None``: free ones.

        Raises:
            ServiceStartError: A service could not start (or get its ports again), exited,
                or did not open its ports in time, or the job changed state meanwhile;
                every started service is stopped first.
        """
        services = JobServices(job, self)
        state = job.state
        try:
            for plan in plans:
                own = None if ports is None else self._ports_again(plan, ports)
                services.running.append(self._launch(job, plan, layout, own))
            await self._wait_ready(job, services.running, state)
        except BaseException:
            await services.stop()  # also when Jobs.Start's caller went away (cancelled)
            raise
        return services

    async def start_again(
        self,
        job: Job,
        definition: PipelineDefinition,
        layout: JobLayout,
        ports: Mapping[str, Mapping[str, int]],
    ) -> JobServices:
        """After a restart of the platform: start the running job's services on their ports.

        The operators adopted still call the addresses they were given, so each service gets
        the ports it had (``ports``, saved with the job), and is ready before they are
        adopted. When this raises, the caller fails the stages it adopts or would launch.

        Returns:
            The services started (none when the job declares none).

        Raises:
            ValueError: A service can no longer be run here, or (``ServiceStartError``) its
                ports were not saved or are taken, or it exited or did not become ready; the
                message names the operator, ``services[i]``, the service and why. Every
                service started is stopped first.
        """
        try:
            return await self.start(job, self.plan(definition, layout), layout, ports)
        except ValueError as error:  # a refusal, or ServiceStartError
            _log.error("job %s: %s", job.job_id, error)
            raise

    def _ports_again(
        self, plan: ServicePlan, saved: Mapping[str, Mapping[str, int]]
    ) -> dict[str, int]:
        """The ports ``plan``'s service had before the restart, if they are free again."""
        name = plan.service.name
        wanted = {c.name for c in plan.service.http_connections}
        ports = dict(saved.get(plan.key, {}))
        if set(ports) != wanted:
            raise ServiceStartError(
                f"{plan.where}: service {name!r}: the ports it had before the restart were not "
                f"saved (connections {', '.join(sorted(wanted))}; saved: "
                f"{', '.join(sorted(ports)) or 'none'}), so its operators' addresses are unknown"
            )
        for connection, port in ports.items():
            problem = (
                "another service holds it" if port in self._ports_held else _bind_problem(port)
            )
            if problem:
                raise ServiceStartError(
                    f"{plan.where}: service {name!r} cannot get its port {port} ({connection}) "
                    f"again, which its operators call: {problem}"
                )
        self._ports_held.update(ports.values())
        return ports

    def _launch(
        self, job: Job, plan: ServicePlan, layout: JobLayout, ports: dict[str, int] | None
    ) -> _Running:
        service = plan.service
        if ports is None:
            ports = {c.name: self._free_port() for c in service.http_connections}
        env = {k: v for k, v in self._inherited.items() if k not in PLATFORM_VARIABLES}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(service.variables)
        # After the service's variables: it must listen where the mock looks for it.
        for connection, port in ports.items():
            env[connection] = f"localhost:{port}"
            env[f"{SERVICE_PORT_PREFIX}{connection}"] = str(port)
        if len(ports) == 1:
            env["PORT"] = str(*ports.values())
        if self.service_data is not None:  # where the mock mounts it, whatever variables say
            env[SERVICE_DATA_VARIABLE] = service_data_path(
                self.service_data, sandboxed=plan.sandboxed
            )
        if plan.sandboxed:
            image_environment(env, image_root=plan.image_root)
        argv = plan.argv_for(env)
        log_path = service_log_path(layout, plan.key)
        try:
            if self.service_data is not None:
                self.service_data.mkdir(parents=True, exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log:
                process = start_operator_process(
                    argv, cwd=self._runner.command_dir, env=env, log=log, sandboxed=plan.sandboxed
                )
        except OSError as error:
            self._ports_held.difference_update(ports.values())
            raise ServiceStartError(
                f"{plan.where}: service {service.name!r} could not be started: {error}"
            ) from error
        _log.info(
            "job %s: started service %s (pid %d, ports %s): %s",
            job.job_id,
            service.name,
            process.pid,
            ",".join(map(str, ports.values())) or "none",
            shlex.join(argv),
        )
        running = _Running(plan, process, log_path, ports, asyncio.ensure_future(process.wait()))
        self._running.add(running)
        return running

    def _free_port(self) -> int:
        """An ephemeral loopback port that is free now and held by no running service."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port: int = probe.getsockname()[1]
            if port not in self._ports_held:
                self._ports_held.add(port)
                return port

    async def _wait_ready(self, job: Job, running: Sequence[_Running], state: JobState) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        pending = {(r.name, port): r for r in running for port in r.ports.values()}
        delay = _POLL_FIRST
        while True:
            changed = job.changed()  # taken before the state is read
            for service in running:
                if service.exited.done():
                    raise ServiceStartError(_exited_message(service))
            if job.state is not state:
                raise ServiceStartError(
                    f"job {job.job_id} was {job.state.value} while its services started"
                )
            for key in sorted(pending):
                if await _accepts(key[1]):
                    del pending[key]
            if not pending:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                late = next(iter(pending.values()))
                raise ServiceStartError(_late_message(late, self._ready_timeout))
            waiter = asyncio.ensure_future(changed.wait())
            wakers: set[asyncio.Future[Any]] = {waiter, *(r.exited for r in running)}
            await asyncio.wait(
                wakers, timeout=min(delay, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            delay = min(delay * 2, _POLL_MAX)

    # -- stopping -----------------------------------------------------------------------

    async def stop(self, service: _Running) -> None:
        """SIGTERM the service, SIGKILL it after the grace (or at once if cancelled meanwhile)."""
        if service not in self._running:
            return  # stopped already (the job's stopper and the server's shutdown both stop)
        try:
            if not service.exited.done():
                service.process.terminate()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(service.exited), self._kill_grace)
            if not service.exited.done():
                _log.warning(
                    "service %s did not end %g s after SIGTERM; killing it",
                    service.name,
                    self._kill_grace,
                )
                service.process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(service.exited), _EXIT_WAIT)
        except asyncio.CancelledError:
            service.process.kill()
            raise
        finally:
            service.process.end_leftovers()
            self._ports_held.difference_update(service.ports.values())
            self._running.discard(service)
            await _unwatch(service)
        if service.exited.done():
            _log.info("service %s stopped (code %d)", service.name, service.exited.result())
        else:
            _log.error(
                "service %s (pid %d) still runs %g s after SIGKILL",
                service.name,
                service.process.pid,
                _EXIT_WAIT,
            )

    async def stop_all(self) -> None:
        """Stop every service still running (the server shuts down)."""
        await asyncio.gather(*(self.stop(r) for r in list(self._running)), return_exceptions=True)


class JobServices:
    """The running services of one job.

    Args:
        job: The job they serve.
        launcher: The launcher that started them (it stops them and frees their ports).
    """

    def __init__(self, job: Job, launcher: ServiceLauncher) -> None:
        self.job = job
        self.running: list[_Running] = []
        self._launcher = launcher

    def ports(self) -> dict[str, dict[str, int]]:
        """Each service's ports (connection name to port), by :attr:`ServicePlan.key`.

        What a restarted platform gives them again (:meth:`ServiceLauncher.start_again`).
        """
        return {r.plan.key: dict(r.ports) for r in self.running}

    def addresses_for(self, operator: str) -> dict[str, str]:
        """The connection variables of the services ``operator`` declares (``localhost:<port>``)."""
        return {
            name: f"localhost:{port}"
            for r in self.running
            if operator in r.plan.operators
            for name, port in r.ports.items()
        }

    async def stop(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL after the grace), all at once."""
        results = await asyncio.gather(
            *(self._launcher.stop(r) for r in self.running), return_exceptions=True
        )
        for service, result in zip(self.running, results, strict=True):
            if isinstance(result, Exception):
                _log.error(
                    "job %s: stopping service %s failed: %r", self.job.job_id, service.name, result
                )

    async def stop_after(self, operators: Collection[asyncio.Task[None]]) -> None:
        """Keep the services until every operator task ended, then stop them.

        A service that ends meanwhile is logged. Cancelled (the server shuts down), it stops
        the services before it ends.
        """
        if not self.running:
            return
        try:
            watched = {r.exited: r for r in self.running}
            while any(not task.done() for task in operators):
                wakers: set[asyncio.Future[Any]] = {t for t in operators if not t.done()}
                wakers |= {f for f in watched if not f.done()}
                await asyncio.wait(wakers, return_when=asyncio.FIRST_COMPLETED)
                for future in [f for f in watched if f.done()]:
                    self._ended_early(watched.pop(future))
        finally:
            await self.stop()

    def _ended_early(self, service: _Running) -> None:
        message = (
            f"service {service.name!r} exited with code {service.exited.result()} while the "
            f"job ran; its operators' calls to it fail (see {service.log_path})"
        )
        _log.warning("job %s: %s", self.job.job_id, message)
        with contextlib.suppress(OSError), service.log_path.open("a", encoding="utf-8") as log:
            log.write(f"clara-mock: {message}\n")


def _refusal(where: str, service: ServiceSpec, reason: str) -> ValueError:
    """The error refusing a service the mock cannot run: why, and what to map or set."""
    assert service.container is not None
    image = f"{service.container.image}:{service.container.tag}"
    names = [c.name for c in service.http_connections]
    names += [c.name for c in service.file_connections]
    todo = (
        f"map the image {image!r} in an operator map (--operator-map) to a local command "
        "that serves it"
    )
    if names:
        todo += f", or run it yourself and set {', '.join(names)} in the operator's variables"
    return ValueError(
        f"{where}: service {service.name!r} (container {image}) cannot run here: {reason}; {todo}"
    )


def _ended_with_the_mock(command: list[str]) -> list[str]:
    """``command`` run so that the kernel kills it when the mock's process ends.

    ``setpriv --pdeathsig`` (util-linux); without it the command is returned as it is.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def _bind_problem(port: int) -> str:
    """Why a service could not listen on ``localhost:port`` now (``""``: it could).

    ``SO_REUSEADDR``, as servers set it: connections of the service's previous process
    that linger in TIME_WAIT do not count.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return f"another process uses it ({error.strerror or error})"
    return ""


async def _unwatch(service: _Running) -> None:
    """Stop waiting for the service's exit, then close its pidfd (unwatched before closed)."""
    if not service.exited.done():
        service.exited.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await service.exited
    service.process.close()


async def _accepts(port: int) -> bool:
    """Whether something accepts TCP connections on ``localhost:port``."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("localhost", port), _PROBE_TIMEOUT
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _log_tail(path: Path) -> str:
    """``; it said: <its last line>`` from the log, or ``""``."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - 4096))
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    last = lines[-1].strip() if lines else ""
    return f"; it said: {last[-_TAIL_CHARS:]}" if last else ""


def _exited_message(service: _Running) -> str:
    code = service.exited.result()
    reason = f"signal {-code}" if code < 0 else f"code {code}"
    listening = (
        f" before it accepted connections on port {service.describe_ports()}"
        if service.ports
        else ""
    )
    return (
        f"{service.plan.where}: service {service.name!r} exited with {reason}{listening} "
        f"(see its log {service.log_path}{_log_tail(service.log_path)})"
    )


def _late_message(service: _Running, timeout: float) -> str:
    return (
        f"{service.plan.where}: service {service.name!r} did not accept connections on port "
        f"{service.describe_ports()} within {timeout:g} s; it must listen on the port the mock "
        f"gives it in {SERVICE_PORT_PREFIX}<connection name> or PORT (see its log "
        f"{service.log_path}{_log_tail(service.log_path)})"
    )
