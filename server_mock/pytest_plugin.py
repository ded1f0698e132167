"""pytest plugin of the mock platform (registered through the ``pytest11`` entry point).

Installing ``clara-stage-driver`` makes these fixtures available to every test suite, with
no ``conftest.py`` needed.

Fixtures:
    clara_platform: A started :class:`~server_mock.MockPlatform` on an ephemeral loopback
        port, stopped when the test ends.
    clara_stage_runner: A :class:`StageRunner` bound to ``clara_platform``: runs an
        operator's callbacks as one stage of a job on it and returns a :class:`StageRun`.
    clara_pipeline_runner: A :class:`PipelineRunner`: runs a whole pipeline definition, its
        operators as local processes, on an embedded platform of its own and returns a
        :class:`PipelineRun` (stage states, logs, outputs).

The same helpers work without pytest: :func:`run_stage` and :func:`run_pipeline`.

Example::

    def execute(driver, payload):
        (Path(payload.output().path) / "n.txt").write_text("1")
        return True


    def test_execute(clara_stage_runner, tmp_path):
        run = clara_stage_runner(execute=execute, output_dir=tmp_path)
        assert run.result.succeeded
        assert (tmp_path / "n.txt").read_text() == "1"


    def test_pipeline(clara_pipeline_runner):
        run = clara_pipeline_runner("pipeline.yaml", "input")
        assert run.succeeded, run.describe()
        assert (run.output("report") / "report.md").is_file()
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import clara
from clara import contract
from server_mock._client import JobStatus, PlatformClient
from server_mock._jobs import InputRef, OutputRef, StageOutcome, StageSpec, StageState
from server_mock._platform import JobSnapshot, MockPlatform, StageSnapshot
from server_mock._runner import LocalProcessLauncher, RunnerTimeouts
from server_mock._service_data import default_service_data

__all__ = [
    "PipelineRun",
    "PipelineRunner",
    "StageRun",
    "StageRunner",
    "clara_pipeline_runner",
    "clara_platform",
    "clara_stage_runner",
    "run_pipeline",
    "run_stage",
]

DEFAULT_STAGE_WAIT = 60.0
DEFAULT_PIPELINE_WAIT = 600.0
_SHUTDOWN_WAIT = 60.0
_CONTEXT_WAIT = 10.0

PrepareCallback = Callable[["clara.Driver[Any]"], bool]
ExecuteCallback = Callable[["clara.Driver[Any]", clara.Payload], bool]
CleanupCallback = Callable[["clara.Driver[Any]"], bool]
NotifyCallback = Callable[["clara.Driver[Any]", clara.Notification], None]


# -- one stage, in-process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageRun:
    """What :func:`run_stage` observed.

    Attributes:
        job_id: The job created for the run.
        stage: The stage the callbacks ran as.
        result: What the driver's ``wait_for_completion()`` returned.
        job: The job as the platform saw it at the end (every stage's state and events).
        notifications: Every notification the driver delivered, in order.
    """

    job_id: uuid.UUID
    stage: str
    result: clara.StageResult
    job: JobSnapshot
    notifications: tuple[clara.Notification, ...]

    @property
    def snapshot(self) -> StageSnapshot:
        """The platform's view of the stage (its state, message and reported events)."""
        return self.job.stages[self.stage]

    @property
    def kinds(self) -> list[clara.NotificationKind]:
        """The kinds of :attr:`notifications`, in order."""
        return [n.kind for n in self.notifications]


def run_stage(
    platform: MockPlatform,
    execute: ExecuteCallback | None = None,
    prepare: PrepareCallback | None = None,
    cleanup: CleanupCallback | None = None,
    notify: NotifyCallback | None = None,
    *,
    stage: str | None = None,
    stages: Sequence[StageSpec] | None = None,
    upstream: Mapping[str, str] | None = None,
    input_dir: Path | str | None = None,
    output_dir: Path | str | None = None,
    stage_timeout: timedelta = contract.DEFAULT_STAGE_TIMEOUT,
    app_data: object = None,
    job_name: str = "test-job",
    wait: float = DEFAULT_STAGE_WAIT,
    driver_options: Mapping[str, Any] | None = None,
) -> StageRun:
    """Run an operator's callbacks as one stage of a new job on ``platform``.

    Without ``stages`` the job has the single stage ``stage`` (default ``"stage"``) reading
    ``input_dir`` and writing ``output_dir`` (each optional). With ``stages``, the callbacks
    run as ``stage`` (default: the last one) and the helper reports every other stage's
    outcome as its driver would, with the outcome in ``upstream`` (``"succeeded"``, the
    default, ``"failed"``, ``"timed_out"`` or ``"cancelled"``), in the order given: the
    stages ``stage`` does not depend on once the driver has its context (so ``prepare`` runs
    while upstream stages are still "working", and a failed upstream stage shows how the
    operator handles a cancellation), the stages that depend on ``stage`` once its driver
    completed (a stage cannot succeed before its inputs are ready). The platform's rules for
    outcome reports apply as they do to real drivers.

    Args:
        platform: A running mock platform (e.g. the ``clara_platform`` fixture).
        execute: ``execute(driver, payload) -> bool``.
        prepare: ``prepare(driver) -> bool``.
        cleanup: ``cleanup(driver) -> bool``.
        notify: ``notify(driver, notification)``; notifications are also collected in the
            returned :attr:`StageRun.notifications`.
        stage: The stage the callbacks run as.
        stages: The job's stages (a DAG); default one stage with the given folders.
        upstream: Outcome of each other stage of ``stages``, by name.
        input_dir: The single stage's input folder (ignored with ``stages``).
        output_dir: The single stage's output folder, created if missing (ignored with
            ``stages``).
        stage_timeout: The single stage's timeout (ignored with ``stages``).
        app_data: Passed to the driver as ``app_data``.
        job_name: The job's name.
        wait: How long the stage may take, in seconds, before the job is cancelled and
            :class:`TimeoutError` raised.
        driver_options: More keyword arguments for :class:`clara.Driver` (e.g. ``timeouts``).
            When the platform requires stage tokens, the stage's token is passed for you.

    Returns:
        The driver's result, the job's final snapshot and the notifications.

    Raises:
        ValueError: ``stage`` is not one of ``stages``, or ``upstream`` names an unknown
            stage or outcome.
        TimeoutError: The stage did not complete within ``wait`` seconds.
    """
    specs, name = _stage_specs(stage, stages, input_dir, output_dir, stage_timeout)
    others = _other_stages(specs, name, upstream)
    outcomes = {other: StageOutcome(value) for other, value in (upstream or {}).items()}
    downstream = _downstream_of(specs, name)
    before = [other for other in others if other not in downstream]
    after = [other for other in others if other in downstream]
    job_id = platform.create_job(specs, name=job_name)
    collected: list[clara.Notification] = []

    def on_notification(driver: clara.Driver[Any], notification: clara.Notification) -> None:
        collected.append(notification)
        if notify is not None:
            notify(driver, notification)

    options = dict(driver_options or {})
    if platform.require_stage_tokens and "stage_token" not in options:
        options["stage_token"] = platform.stage_token(job_id, name)
    driver: clara.Driver[Any] = clara.Driver(
        prepare=prepare,
        execute=execute,
        cleanup=cleanup,
        notify=on_notification,
        app_data=app_data,
        target=platform.address,
        job_id=job_id,
        stage_name=name,
        standalone=False,
        **options,
    )
    deadline = time.monotonic() + wait
    driver.start()
    if before:
        # Let the driver fetch its context first, so prepare overlaps the upstream work.
        with contextlib.suppress(TimeoutError):
            platform.wait_for_stage(
                job_id,
                name,
                lambda s: "context_received" in s.events or s.state.terminal,
                timeout=min(_CONTEXT_WAIT, wait),
            )
        platform.call(lambda: _end_other_stages(platform, job_id, before, outcomes))
    try:
        result = driver.wait_for_completion(max(deadline - time.monotonic(), 0.001))
    except clara.WaitTimeoutError:
        platform.cancel_job(job_id, f"run_stage: stage {name} still running after {wait} s")
        with contextlib.suppress(clara.WaitTimeoutError):
            driver.wait_for_completion(_SHUTDOWN_WAIT)
        raise TimeoutError(
            f"stage {name} of job {job_id} did not complete within {wait} s "
            f"(driver {driver.state.value}); the job was cancelled"
        ) from None
    if after:
        platform.call(lambda: _end_other_stages(platform, job_id, after, outcomes))
    return StageRun(
        job_id=job_id,
        stage=name,
        result=result,
        job=platform.job(job_id),
        notifications=tuple(collected),
    )


_OUTCOMES = tuple(outcome.value for outcome in StageOutcome)


def _other_stages(
    specs: Sequence[StageSpec], name: str, upstream: Mapping[str, str] | None
) -> list[str]:
    """The stages the helper ends itself, in order; checks ``upstream``."""
    known = [s.name for s in specs]
    for other, outcome in (upstream or {}).items():
        if other not in known or other == name:
            raise ValueError(
                f"upstream: {other!r} is not another stage of the job (stages: {', '.join(known)})"
            )
        if outcome not in _OUTCOMES:
            raise ValueError(
                f"upstream[{other!r}]: {outcome!r} is not an outcome ({', '.join(_OUTCOMES)})"
            )
    return [other for other in known if other != name]


def _downstream_of(specs: Sequence[StageSpec], name: str) -> set[str]:
    """The stages that depend on ``name``, directly or through others."""
    found: set[str] = set()
    frontier = {name}
    while frontier:
        frontier = {s.name for s in specs if s.upstream & frontier} - found
        found |= frontier
    return found


def _end_other_stages(
    platform: MockPlatform,
    job_id: uuid.UUID,
    others: list[str],
    outcomes: Mapping[str, StageOutcome],
) -> None:
    """On the loop thread: report each other stage's outcome as its driver would."""
    job = platform.jobs.get(job_id)
    for other in others:
        outcome = outcomes.get(other, StageOutcome.SUCCEEDED)
        job.complete_stage(other, uuid.uuid4().hex, outcome, f"{outcome.value} (set by run_stage)")


def _stage_specs(
    stage: str | None,
    stages: Sequence[StageSpec] | None,
    input_dir: Path | str | None,
    output_dir: Path | str | None,
    stage_timeout: timedelta,
) -> tuple[list[StageSpec], str]:
    if stages is None:
        name = stage or "stage"
        inputs = () if input_dir is None else (InputRef(str(input_dir)),)
        outputs: tuple[OutputRef, ...] = ()
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            outputs = (OutputRef(str(output_dir)),)
        return [StageSpec(name, inputs, outputs, stage_timeout)], name
    specs = list(stages)
    if not specs:
        raise ValueError("stages: a job needs at least one stage")
    name = stage or specs[-1].name
    if name not in {s.name for s in specs}:
        raise ValueError(
            f"stage {name!r} is not one of the stages ({', '.join(s.name for s in specs)})"
        )
    return specs, name


class StageRunner:
    """Runs operator callbacks as a stage on one platform: :func:`run_stage` bound to it.

    The ``clara_stage_runner`` fixture is one of these, bound to ``clara_platform``.
    """

    def __init__(self, platform: MockPlatform) -> None:
        self.platform = platform

    def __call__(
        self,
        execute: ExecuteCallback | None = None,
        prepare: PrepareCallback | None = None,
        cleanup: CleanupCallback | None = None,
        notify: NotifyCallback | None = None,
        **options: Any,
    ) -> StageRun:
        """Run the callbacks; ``options`` are those of :func:`run_stage`."""
        return run_stage(self.platform, execute, prepare, cleanup, notify, **options)


# -- a whole pipeline, as local processes ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """What :func:`run_pipeline` observed, after every operator process exited.

    Attributes:
        job_id: The job's id.
        job: The job as the platform saw it at the end.
        status: The job as the public API's ``Jobs.Status`` reports it.
        logs: Each operator's log lines (its stdout and stderr), by operator name.
        outputs: The folder the operators' outputs were downloaded to, laid out as in the
            job's payload: ``<operator>/`` for an unnamed output, ``<operator>/<name>/``
            for an output called ``name``.
        exit_codes: Each operator process's exit code, by operator name.
    """

    job_id: uuid.UUID
    job: JobSnapshot
    status: JobStatus
    logs: dict[str, list[str]]
    outputs: Path
    exit_codes: dict[str, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        """True when every stage succeeded."""
        return self.job.state.value == "succeeded"

    @property
    def stage_states(self) -> dict[str, StageState]:
        """Each stage's final state, by name."""
        return {name: stage.state for name, stage in self.job.stages.items()}

    def output(self, operator: str, name: str | None = None) -> Path:
        """The downloaded output folder of ``operator``.

        Args:
            operator: The operator's name.
            name: The output's name; ``None`` (the default) for the operator's unnamed output.
        """
        folder = self.outputs / operator
        return folder / name if name else folder

    def log(self, operator: str) -> str:
        """``operator``'s log as one string."""
        return "\n".join(self.logs.get(operator, []))

    def describe(self) -> str:
        """A readable summary (each stage's state and message, then each log): for asserts."""
        lines = [f"job {self.job.name} ({self.job_id}): {self.job.state.value}"]
        for name, stage in self.job.stages.items():
            code = self.exit_codes.get(name)
            lines.append(f"  {name}: {stage.state.value} (exit {code}) {stage.message}")
        for name, log in self.logs.items():
            lines.append(f"--- {name} log ---")
            lines.extend(log[-40:])
        return "\n".join(lines)


def run_pipeline(
    pipeline: Path | str,
    input_dir: Path | str,
    *,
    output_dir: Path | str | None = None,
    workspace: Path | str | None = None,
    operator_map: Mapping[str, list[str]] | None = None,
    job_name: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    runner_timeouts: RunnerTimeouts | None = None,
    wait: float = DEFAULT_PIPELINE_WAIT,
) -> PipelineRun:
    """Run a pipeline definition end to end, as ``clara-mock run`` does, and return the result.

    An embedded platform is started for the run and stopped at its end (every operator
    process is waited for, or stopped); like ``clara-mock run``, it requires stage tokens and
    hands each operator its own. The operators run as local processes: each
    container's ``command`` in the pipeline file's folder (a leading ``python`` is this
    interpreter), unless ``operator_map`` maps its image.

    Args:
        pipeline: The pipeline definition (YAML).
        input_dir: The folder uploaded as the job's input payload.
        output_dir: Where the operators' outputs are downloaded (default: a new temporary
            folder, left in place for inspection).
        workspace: The platform's folder for payloads and job data (default: temporary,
            removed at the end); its ``service-data`` is the services' common volume.
        operator_map: ``image[:tag]`` to argv, overriding containers' commands.
        job_name: The job's name (default: the pipeline's name).
        extra_env: Added to every operator's environment.
        runner_timeouts: Grace periods of the process supervisor.
        wait: How long the job may run, in seconds, before it is cancelled and
            :class:`TimeoutError` raised.

    Raises:
        FileNotFoundError: No pipeline file or no input folder.
        server_mock._client.PlatformApiError: The platform refused the definition or a
            request (the message names the field).
        TimeoutError: The job did not end within ``wait`` seconds.
    """
    pipeline_path = Path(pipeline)
    inputs = Path(input_dir)
    if not pipeline_path.is_file():
        raise FileNotFoundError(f"pipeline {pipeline_path}: no such file")
    if not inputs.is_dir():
        raise FileNotFoundError(f"input {inputs}: not a folder")
    outputs = (
        Path(tempfile.mkdtemp(prefix="clara-pipeline-outputs-"))
        if output_dir is None
        else Path(output_dir)
    )
    launcher = LocalProcessLauncher(
        None,  # attached below, once the platform it launches for exists
        pipeline_path.resolve().parent,
        operator_map=operator_map,
        timeouts=runner_timeouts,
        extra_env=extra_env,
    )
    with contextlib.ExitStack() as stack:
        root = (
            Path(workspace)
            if workspace is not None
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clara-pipeline-")))
        )
        platform = MockPlatform(workspace=root, launcher=launcher, require_stage_tokens=True)
        launcher.attach(
            lambda: platform.address,
            platform.stage_tokens.issue,
            service_data=default_service_data(root),
        )
        platform.start()
        stack.callback(platform.stop)
        stack.callback(lambda: platform.call_async(launcher.stop_all, timeout=_SHUTDOWN_WAIT))
        with PlatformClient(platform.address) as client:
            pipeline_id = client.create_pipeline(pipeline_path)
            payload_id = client.create_payload()
            client.upload_folder(payload_id, inputs)
            name = job_name or platform.call(
                lambda: platform.state.pipelines.get(pipeline_id).definition.name
            )
            job_id = client.create_job(pipeline_id, name, [payload_id])
            client.start_job(job_id)
            try:
                job = platform.wait_for_job(job_id, wait)
            except TimeoutError:
                client.cancel_job(job_id, f"run_pipeline: still running after {wait} s")
                platform.wait_for_job(job_id, _SHUTDOWN_WAIT)
                raise TimeoutError(
                    f"job {name} ({job_id}) did not end within {wait} s; it was cancelled"
                ) from None
            # Operators exit shortly after reporting: wait, so logs and exit codes are whole.
            platform.call_async(lambda: launcher.wait_idle(_SHUTDOWN_WAIT), _SHUTDOWN_WAIT + 5)
            status = client.job_status(job_id)
            logs = {stage: client.read_logs(job_id, stage) for stage in job.stages}
            for file in client.payload_files(status.payload_id):
                if file.startswith("operators/"):
                    client.download(
                        status.payload_id, file, outputs / file.removeprefix("operators/")
                    )
        codes = {
            stage: code
            for (job_key, stage), code in launcher.exit_codes.items()
            if job_key == str(job_id)
        }
    return PipelineRun(
        job_id=job_id, job=job, status=status, logs=logs, outputs=outputs, exit_codes=codes
    )


class PipelineRunner:
    """Runs pipelines with :func:`run_pipeline`, downloading outputs under ``root``.

    The ``clara_pipeline_runner`` fixture is one of these, with ``root`` in ``tmp_path``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs = 0

    def __call__(self, pipeline: Path | str, input_dir: Path | str, **options: Any) -> PipelineRun:
        """Run the pipeline; ``options`` are those of :func:`run_pipeline`."""
        self._runs += 1
        options.setdefault("output_dir", self.root / f"run-{self._runs}" / "outputs")
        options.setdefault("workspace", self.root / f"run-{self._runs}" / "workspace")
        return run_pipeline(pipeline, input_dir, **options)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def clara_platform() -> Iterator[MockPlatform]:
    """A running mock platform on ``127.0.0.1:<ephemeral>``, stopped after the test."""
    platform = MockPlatform()
    platform.start()
    try:
        yield platform
    finally:
        platform.stop()


@pytest.fixture
def clara_stage_runner(clara_platform: MockPlatform) -> StageRunner:
    """Run operator callbacks as a stage on ``clara_platform``; see :func:`run_stage`."""
    return StageRunner(clara_platform)


@pytest.fixture
def clara_pipeline_runner(tmp_path: Path) -> PipelineRunner:
    """Run a pipeline as local processes; see :func:`run_pipeline`. Files go in ``tmp_path``."""
    return PipelineRunner(tmp_path / "clara-pipelines")
