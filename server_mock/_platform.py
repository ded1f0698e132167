"""The mock platform: a ``grpc.aio`` server on its own event-loop thread, plus a sync API.

All platform state lives on the loop thread; the synchronous methods here (used by tests, the
CLI and the process runner) hand work to that thread with ``run_coroutine_threadsafe`` and wait
for the answer with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clara.contract import DRIVER_KEEPALIVE_INTERVAL
from clara.stage_api import stage_service_pb2 as stage_pb
from clara.stage_api import stage_service_pb2_grpc as stage_grpc
from server_mock._auth import StageTokens
from server_mock._capacity import Capacity
from server_mock._health import HealthService
from server_mock._jobs import Job, JobState, StageSpec, StageState
from server_mock._persistence import StateStore, default_workspace
from server_mock._pipelines import DEFAULT_DEFINITION_PATH
from server_mock._platform_api import DEFAULT_MAX_UPLOAD_BYTES, add_platform_api_to_server
from server_mock._platform_state import InProcessLauncher, PlatformState, StageLauncher
from server_mock._request_guard import RequestGuard
from server_mock._stage_service import StageService
from server_mock._tls import ServerTls
from server_mock._workspace import JobLayout

__all__ = ["JobSnapshot", "MockPlatform", "PipelineJob", "StageSnapshot"]

_log = logging.getLogger("server_mock")

T = TypeVar("T")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Drivers ping every DRIVER_KEEPALIVE_INTERVAL, with or without calls in flight, and a
    # waiting stage's stream carries no data for minutes: accept pings twice as often (gRPC
    # core's GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; its default of 5 minutes
    # would answer them with GOAWAY too_many_pings after two strikes).
    (
        "grpc.http2.min_ping_interval_without_data_ms",
        int(DRIVER_KEEPALIVE_INTERVAL.total_seconds() * 1000) // 2,
    ),
    ("grpc.keepalive_permit_without_calls", 1),
    # Off, so a second server on a port in use fails to bind instead of silently sharing it.
    ("grpc.so_reuseport", 0),
]
DEFAULT_CALL_TIMEOUT = 30.0
_TASK_CANCEL_WAIT = 5.0  # seconds cancelled tasks get to end when the platform stops


@dataclass(frozen=True, slots=True)
class StageSnapshot:
    """A stage's state at one moment, for tests and displays."""

    name: str
    state: StageState
    message: str
    reports_applied: int
    events: tuple[str, ...]
    ready_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A job's state at one moment, for tests and displays."""

    job_id: uuid.UUID
    name: str
    state: JobState
    message: str
    stages: dict[str, StageSnapshot]


@dataclass(frozen=True, slots=True)
class PipelineJob:
    """A job created from a registered pipeline (:meth:`MockPlatform.create_pipeline_job`).

    Attributes:
        job_id: The job's id.
        name: The job's name.
        payload_id: The job's own payload.
        layout: The folders of that payload: ``input/``, ``operators/<operator>/<output>/``,
            ``logs/<operator>.log``.
        input_files: The files copied into ``input/``, relative to it, in order.
    """

    job_id: uuid.UUID
    name: str
    payload_id: uuid.UUID
    layout: JobLayout
    input_files: tuple[str, ...]


def snapshot(job: Job) -> JobSnapshot:
    """Copy a job's state out of the loop thread's objects."""
    return JobSnapshot(
        job_id=job.job_id,
        name=job.name,
        state=job.state,
        message=job.message,
        stages={
            name: StageSnapshot(
                name=name,
                state=stage.state,
                message=stage.message,
                reports_applied=stage.reports_applied,
                events=tuple(e.kind for e in stage.events),
                ready_at=stage.ready_at,
                ended_at=stage.ended_at,
            )
            for name, stage in job.stages.items()
        },
    )


async def _cancel_pending_tasks() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    if pending:
        _, still = await asyncio.wait(pending, timeout=_TASK_CANCEL_WAIT)
        if still:
            _log.warning(
                "%d task(s) did not end within %s s of being cancelled",
                len(still),
                _TASK_CANCEL_WAIT,
            )


class MockPlatform:
    """An in-process Clara platform serving the stage API on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with MockPlatform() as platform:
            job_id = platform.create_job([StageSpec("only")])
            ...  # run drivers against platform.address

    Args:
        host: The interface to bind; loopback by default.
        port: The port to bind; 0 picks a free one.
        workspace: The folder for payloads and job data; by default a temporary folder that
            is removed on :meth:`stop` (with ``state_path``: ``<state_path>.workspace``).
        launcher: Starts a job's operators; by default nothing is launched and the caller
            runs the drivers (in-process tests).
        tls: Serve over TLS with this certificate (mutual TLS when it has a client CA);
            by default plaintext, for loopback only.
        require_stage_tokens: Refuse stage API calls that do not carry the token of the stage
            they name (``UNAUTHENTICATED``/``PERMISSION_DENIED``). Off by default for
            in-process tests; ``clara-mock serve``/``run`` turn it on, and their launcher
            hands each operator its token. Tests get a token with :meth:`stage_token`.
        max_upload_bytes: The largest file ``Payloads.Upload`` accepts.
        state_path: Keep the platform's state in this SQLite file (see
            :mod:`server_mock._persistence`): loaded by :meth:`start`, every change committed
            before it is acknowledged; then the launcher resumes the running jobs (adopts their
            operators, see :meth:`PlatformState.resume_jobs
            <server_mock._platform_state.PlatformState.resume_jobs>`). By default the state lives
            in memory only.
        unix_socket: Also serve on this Unix socket (with the same TLS), e.g. in a private
            folder, for sandboxed operators without a network; removed on :meth:`stop`.
        capacity: What the platform can run at once: a started job waits (pending) until its
            operators' ``requests`` fit, in priority order (see :mod:`server_mock._scheduler`).
            By default no capacity is counted and every job starts at once.

    Raises:
        TlsFileError: A file of ``tls`` is missing, unreadable or not PEM.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workspace: Path | None = None,
        launcher: StageLauncher | None = None,
        tls: ServerTls | None = None,
        require_stage_tokens: bool = False,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        state_path: Path | None = None,
        unix_socket: Path | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        if max_upload_bytes <= 0:
            raise ValueError(f"max_upload_bytes {max_upload_bytes}: expected a size > 0")
        self.tls = tls
        self._server_credentials = tls.credentials() if tls is not None else None
        self.require_stage_tokens = require_stage_tokens
        self.stage_tokens = StageTokens()
        self._max_upload_bytes = max_upload_bytes
        self._host = host
        self._requested_port = port
        self.unix_socket = unix_socket
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Event | None = None
        self._temp_workspace: tempfile.TemporaryDirectory[str] | None = None
        self._state_path = state_path
        self._state_store: StateStore | None = None
        self._state_loaded = False
        if workspace is None and state_path is not None:
            workspace = default_workspace(state_path)
        if workspace is None:
            self._temp_workspace = tempfile.TemporaryDirectory(prefix="clara-mock-")
            workspace = Path(self._temp_workspace.name)
        self.state = PlatformState(
            workspace=workspace, launcher=launcher or InProcessLauncher(), capacity=capacity
        )
        self.jobs = self.state.jobs

    # -- life-cycle -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of the running server.

        Raises:
            RuntimeError: The platform is not running.
        """
        if self._port is None:
            raise RuntimeError("the mock platform is not running; call start() first")
        host = (
            f"[{self._host}]"
            if ":" in self._host and not self._host.startswith("[")
            else self._host
        )
        return f"{host}:{self._port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._port is not None

    def start(self) -> str:
        """Start serving; return the address (``host:port``).

        Raises:
            RuntimeError: Already started, or the port could not be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the mock platform is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run_loop, name="clara-mock-loop", daemon=True)
        self._thread.start()
        ready.wait(10)
        try:
            self.call(self.state.payloads.remove_partial_uploads)  # a crash's leftovers
            resuming = self._state_path is not None and not self._state_loaded
            self.call(self._open_state)
            self.call(self.state.models.recover_uploads)  # after the load: the records decide
            self._port = self.call_async(lambda: self._start_server(resuming))
        except BaseException:
            self._port = None
            self._close_state()
            self._shutdown_loop()
            raise
        _log.info("mock platform listening on %s", self.address)
        return self.address

    async def _start_server(self, resuming: bool = False) -> int:
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RequestGuard()])
        tokens = self.stage_tokens if self.require_stage_tokens else None
        stage_grpc.add_StageServiceServicer_to_server(StageService(self.jobs, tokens), server)
        self._stopping = asyncio.Event()
        platform_services = add_platform_api_to_server(
            server, self.state, max_upload_bytes=self._max_upload_bytes, stopping=self._stopping
        )
        health_servicer = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        served = [
            stage_pb.DESCRIPTOR.services_by_name["StageService"].full_name,
            *platform_services,
        ]
        services = [*served, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, server)
        bind = f"{self._host}:{self._requested_port}"
        if self._server_credentials is not None:
            port = server.add_secure_port(bind, self._server_credentials)
        else:
            port = server.add_insecure_port(bind)
        if port == 0:
            raise RuntimeError(f"could not bind {self._host}:{self._requested_port}")
        if self.unix_socket is not None:
            unix = f"unix:{self.unix_socket}"
            bound = (
                server.add_secure_port(unix, self._server_credentials)
                if self._server_credentials is not None
                else server.add_insecure_port(unix)
            )
            if bound == 0:
                raise RuntimeError(f"could not bind {unix}")
        if resuming:
            # Bound, not serving yet: the running jobs are resumed before any call is answered
            # (operators launched now are given the address).
            self._port = port
            await self.state.resume_jobs()
            # Then the capacity: running jobs hold their share again, queued ones wait (and
            # one admitted now is launched with the address). It saves what it changes.
            self.state.restore_schedule()
        await server.start()
        for name in ("", *served):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        return port

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (open streams get ``grace`` seconds) and end the loop thread."""
        if self._loop is None:
            return
        if self._server is not None:
            server = self._server
            self._server = None
            if self._stopping is not None:
                self.call(self._stopping.set)  # watch streams end now, not after the grace
            self.call_async(lambda: server.stop(grace), timeout=grace + 10)
        self._close_state()
        self._shutdown_loop()
        self._port = None
        if self.unix_socket is not None:
            self.unix_socket.unlink(missing_ok=True)
        if self._temp_workspace is not None:
            self._temp_workspace.cleanup()

    def _open_state(self) -> None:
        """On the loop thread: load the state file (on the first start) and save changes."""
        if self._state_path is None:
            return
        store = StateStore(self._state_path)
        try:
            if not self._state_loaded:
                store.load_into(self.state)
                for job_id, stage, token in store.stage_tokens():
                    self.stage_tokens.restore(job_id, stage, token)
                self._state_loaded = True
            store.attach(self.state)
        except BaseException:
            store.close()
            raise
        self._state_store = store
        self.stage_tokens.on_issue = self._save_stage_token

    def _save_stage_token(self, job_id: uuid.UUID, stage: str, token: str) -> None:
        """Persist a new stage token before it is handed out (from any thread)."""
        store = self._state_store
        if store is None:
            return
        if threading.current_thread() is self._thread:
            store.save_stage_token(job_id, stage, token)
        else:
            self.call(lambda: store.save_stage_token(job_id, stage, token))

    def _close_state(self) -> None:
        """Stop saving and close the state file (everything is committed already)."""
        store = self._state_store
        if store is None or self._loop is None:
            return
        self._state_store = None

        def close() -> None:
            self.stage_tokens.on_issue = None
            store.detach(self.state)
            store.close()

        self.call(close)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop, self._thread = None, None
        if loop is None:
            return
        if loop.is_running():
            # As asyncio.run does: cancel what is still pending (a handler the server did not
            # end, a waiter), so no task is destroyed pending when the loop closes.
            ended = asyncio.run_coroutine_threadsafe(_cancel_pending_tasks(), loop)
            try:
                ended.result(_TASK_CANCEL_WAIT + 5)
            except (concurrent.futures.TimeoutError, RuntimeError) as error:
                _log.warning("tasks still pending when the platform stopped: %r", error)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        loop.close()

    def __enter__(self) -> MockPlatform:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- running code on the loop -----------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float = DEFAULT_CALL_TIMEOUT) -> T:
        """Run the plain function ``fn`` on the loop thread and return its result.

        Raises:
            RuntimeError: The platform is not running.
            TimeoutError: No answer within ``timeout`` seconds.
        """

        async def run() -> T:
            return fn()

        return self.call_async(run, timeout)

    def call_async(
        self, fn: Callable[[], Awaitable[T]], timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> T:
        """Await ``fn()`` on the loop thread and return its result.

        Raises:
            RuntimeError: The platform is not running.
            TimeoutError: No answer within ``timeout`` seconds.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock platform is not running; call start() first")

        async def run() -> T:
            return await fn()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the mock platform did not answer within {timeout} s") from None

    # -- jobs -----------------------------------------------------------------------------

    def create_job(
        self,
        stages: Iterable[StageSpec],
        *,
        name: str = "job",
        pipeline_id: str = "",
        start: bool = True,
        job_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Create a job from its stages and (by default) start it; return its id.

        Raises:
            ValueError: The stages do not form a valid DAG (unknown upstream, duplicate name).
        """
        specs = list(stages)

        def create() -> uuid.UUID:
            job = self.jobs.add(Job(job_id or uuid.uuid4(), name, pipeline_id, specs))
            if start:
                job.start()
            return job.job_id

        return self.call(create)

    def start_job(self, job_id: uuid.UUID, timeout: float = DEFAULT_CALL_TIMEOUT) -> None:
        """Start a created job, as ``Jobs.Start`` does.

        A job of a pipeline (:meth:`create_pipeline_job`) gets its input payloads copied and
        its operators launched by the platform's launcher; a job made from stages starts at
        once.

        Raises:
            server_mock._errors.ApiError: No such job, the job is not in the created state, or
                its operators could not be launched (the message says which and why).
        """
        self.call_async(lambda: self.state.start_job(job_id), timeout)

    # -- pipelines --------------------------------------------------------------------------

    def create_pipeline(self, definition: str, *, path: str = DEFAULT_DEFINITION_PATH) -> uuid.UUID:
        """Register a pipeline definition (its YAML text), as ``Pipelines.Create`` does.

        Raises:
            server_mock._errors.ApiError: The definition is invalid (the message names the
                operator and the field); nothing is registered.
        """
        return self.call(lambda: self.state.pipelines.create(definition, path=path).pipeline_id)

    def create_pipeline_job(
        self, pipeline_id: uuid.UUID, name: str | None = None, *, input_dir: Path | None = None
    ) -> PipelineJob:
        """Create a job of a registered pipeline, as ``Jobs.Create`` does; it is not started.

        The files under ``input_dir`` (empty ones too) are copied into the job's input folder,
        as an upload into its payload would put them; start the job with :meth:`start_job`.

        Args:
            pipeline_id: A pipeline of :meth:`create_pipeline`.
            name: The job's name; by default the pipeline's name.
            input_dir: A folder whose files become the job's input.

        Raises:
            server_mock._errors.ApiError: Unknown pipeline; nothing is created.
            OSError: An input file could not be copied (the job stays created, not started).
        """

        def create() -> tuple[uuid.UUID, str, uuid.UUID, JobLayout]:
            pipeline_name = self.state.pipelines.get(pipeline_id).name
            record = self.state.create_job(pipeline_id, name or pipeline_name)
            return record.job_id, name or pipeline_name, record.payload_id, record.layout

        job_id, job_name, payload_id, layout = self.call(create)
        copied: list[str] = []
        if input_dir is not None:
            # The job is created, not started: nothing else touches its input folder yet.
            for source in sorted(p for p in input_dir.rglob("*") if p.is_file()):
                relative = source.relative_to(input_dir)
                target = layout.input_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                copied.append(relative.as_posix())
        return PipelineJob(job_id, job_name, payload_id, layout, tuple(copied))

    def cancel_job(self, job_id: uuid.UUID, message: str = "cancelled by request") -> bool:
        """Cancel a job; return False if it had already ended."""
        return self.call(lambda: self.jobs.get(job_id).cancel(message))

    def fail_stage(self, job_id: uuid.UUID, stage: str, state: StageState, message: str) -> bool:
        """End a stage from the platform's side; return False if it had already ended."""
        return self.call(lambda: self.jobs.get(job_id).fail_stage(stage, state, message))

    def job(self, job_id: uuid.UUID) -> JobSnapshot:
        """Return a snapshot of the job."""
        return self.call(lambda: snapshot(self.jobs.get(job_id)))

    def wait_for_job(self, job_id: uuid.UUID, timeout: float) -> JobSnapshot:
        """Wait until the job is terminal and return its snapshot.

        Raises:
            TimeoutError: The job is still running after ``timeout`` seconds.
        """

        async def wait() -> JobSnapshot:
            job = self.jobs.get(job_id)
            while not job.state.terminal:
                await job.changed().wait()
            return snapshot(job)

        return self.call_async(lambda: asyncio.wait_for(wait(), timeout), timeout=timeout + 5)

    def wait_for_change(
        self, job_id: uuid.UUID, after_version: int, timeout: float
    ) -> tuple[int, JobSnapshot]:
        """Wait until the job changed since ``after_version``; return its version and snapshot.

        Returns at once when the job is already past that version; after ``timeout`` seconds
        it returns the unchanged job (callers loop with their own deadline).
        """

        async def wait() -> tuple[int, JobSnapshot]:
            job = self.jobs.get(job_id)
            if job.version <= after_version:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(job.changed().wait(), timeout)
            return job.version, snapshot(job)

        return self.call_async(wait, timeout=timeout + 5)

    def wait_for_stage(
        self,
        job_id: uuid.UUID,
        stage: str,
        predicate: Callable[[StageSnapshot], bool],
        timeout: float,
    ) -> StageSnapshot:
        """Wait until ``predicate`` holds for the stage and return its snapshot.

        Raises:
            TimeoutError: The predicate still fails after ``timeout`` seconds.
        """

        async def wait() -> StageSnapshot:
            job = self.jobs.get(job_id)
            while True:
                changed = job.changed()
                current = snapshot(job).stages[stage]
                if predicate(current):
                    return current
                await changed.wait()

        return self.call_async(lambda: asyncio.wait_for(wait(), timeout), timeout=timeout + 5)

    # -- credentials ------------------------------------------------------------------------

    def stage_token(self, job_id: uuid.UUID, stage: str) -> str:
        """Return the secret token of ``stage`` of the job (issued on first use).

        Pass it to an in-process driver (``clara.Driver(stage_token=...)``) when the
        platform requires stage tokens. Never log it.

        Raises:
            KeyError: No such job or stage.
        """

        def check() -> None:
            self.jobs.get(job_id).stage(stage)

        try:
            self.call(check)
        except LookupError as error:
            raise KeyError(str(error)) from None
        return self.stage_tokens.issue(job_id, stage)
