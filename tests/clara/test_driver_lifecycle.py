"""Real drivers against the real mock platform, in one process, on an ephemeral port."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import grpc
import pytest

import clara
import clara._driver
from clara.stage_api import stage_service_pb2 as pb
from clara.stage_api import stage_service_pb2_grpc as pb_grpc
from server_mock import InputRef, JobState, MockPlatform, OutputRef, StageSpec, StageState

WAIT = 20.0  # a generous bound for state changes; tests never sleep


class Recorder:
    """Thread-safe record of callback calls and notifications, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[str] = []
        self.notifications: list[clara.Notification] = []

    def call(self, entry: str) -> None:
        with self._lock:
            self.calls.append(entry)

    def notify(self, driver: clara.Driver[Any], notification: clara.Notification) -> None:
        with self._lock:
            self.notifications.append(notification)

    def kinds(self) -> list[clara.NotificationKind]:
        with self._lock:
            return [n.kind for n in self.notifications]


def chain(*names: str) -> list[StageSpec]:
    specs = []
    for index, name in enumerate(names):
        inputs = (InputRef(f"/work/{names[index - 1]}", names[index - 1]),) if index else ()
        specs.append(StageSpec(name, inputs=inputs, outputs=(OutputRef(f"/work/{name}"),)))
    return specs


def make_driver(
    platform: MockPlatform,
    job_id: uuid.UUID,
    stage: str,
    recorder: Recorder,
    *,
    prepare: Callable[..., Any] | bool | None = True,
    execute: Callable[..., Any] | bool | None = True,
    cleanup: Callable[..., Any] | bool | None = True,
    **kwargs: Any,
) -> clara.Driver[Any]:
    def default(name: str) -> Callable[..., bool]:
        def callback(driver: clara.Driver[Any], *args: Any) -> bool:
            recorder.call(f"{stage}.{name}")
            return True

        return callback

    def pick(value: Callable[..., Any] | bool | None, name: str) -> Callable[..., Any] | None:
        if value is True:
            return default(name)
        if value is None or value is False:
            return None
        return value

    return clara.Driver(
        prepare=pick(prepare, "prepare"),
        execute=pick(execute, "execute"),
        cleanup=pick(cleanup, "cleanup"),
        notify=recorder.notify,
        target=platform.address,
        job_id=job_id,
        stage_name=stage,
        **kwargs,
    )


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def run_all(started: list[clara.Driver[Any]], *new: clara.Driver[Any]) -> list[clara.StageResult]:
    started.extend(new)
    for driver in new:
        driver.start()
    return [driver.wait_for_completion(WAIT) for driver in new]


def test_three_stage_chain_runs_in_order(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job(chain("a", "b", "c"), name="chain")
    # Started in reverse: order must come from the platform's signals, not start order.
    results = run_all(
        drivers, *(make_driver(clara_platform, job_id, s, recorder) for s in ("c", "b", "a"))
    )
    assert all(r.succeeded and r.reported for r in results)
    executes = [c for c in recorder.calls if c.endswith(".execute")]
    assert executes == ["a.execute", "b.execute", "c.execute"]
    for stage in "abc":
        calls = [c for c in recorder.calls if c.startswith(f"{stage}.")]
        assert calls == [f"{stage}.prepare", f"{stage}.execute", f"{stage}.cleanup"]
    job = clara_platform.wait_for_job(job_id, WAIT)
    assert job.state is JobState.SUCCEEDED
    assert {s.reports_applied for s in job.stages.values()} == {1}


def test_diamond_dag_runs_in_dependency_order(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    specs = [
        StageSpec("load", outputs=(OutputRef("/w/load"),)),
        StageSpec("left", inputs=(InputRef("/w/load", "load"),)),
        StageSpec("right", inputs=(InputRef("/w/load", "load"),)),
        StageSpec("join", inputs=(InputRef("/w/left", "left"), InputRef("/w/right", "right"))),
    ]
    job_id = clara_platform.create_job(specs, name="diamond")
    run_all(
        drivers,
        *(
            make_driver(clara_platform, job_id, s, recorder)
            for s in ("join", "right", "left", "load")
        ),
    )
    executes = [c.split(".")[0] for c in recorder.calls if c.endswith(".execute")]
    assert executes[0] == "load"
    assert executes[-1] == "join"
    assert set(executes[1:3]) == {"left", "right"}
    job = clara_platform.job(job_id)
    assert job.state is JobState.SUCCEEDED
    join_ready = job.stages["join"].ready_at
    assert join_ready is not None
    for upstream in ("left", "right"):
        ended = job.stages[upstream].ended_at
        assert ended is not None and ended <= join_ready


def test_payload_and_context_come_from_the_platform(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]]
) -> None:
    seen: dict[str, Any] = {}
    spec = StageSpec(
        "segment",
        inputs=(InputRef("/data/in", name="volume"),),
        outputs=(OutputRef("/data/out"), OutputRef("/data/stats", name="stats")),
        timeout=timedelta(seconds=42),
        variables={"THRESHOLD": "0.5"},
    )
    job_id = clara_platform.create_job([spec], name="context-job")

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        seen.update(
            job_id=driver.job_id,
            job_name=driver.job_name,
            stage=driver.stage_name,
            timeout=driver.stage_timeout,
            payload=payload,
            variables=dict(driver.context.variables),
            app_data=driver.app_data,
        )
        return True

    driver = clara.Driver(
        execute=execute,
        app_data={"model": "unet"},
        target=clara_platform.address,
        job_id=str(job_id),
        stage_name="segment",
    )
    assert run_all(drivers, driver)[0].succeeded
    assert seen["job_id"] == job_id and isinstance(seen["job_id"], uuid.UUID)
    assert seen["job_name"] == "context-job"
    assert seen["stage"] == "segment"
    assert seen["timeout"] == timedelta(seconds=42)
    assert seen["variables"] == {"THRESHOLD": "0.5"}
    assert seen["app_data"] == {"model": "unet"}
    payload: clara.Payload = seen["payload"]
    assert payload.input("volume") == clara.PayloadEntry("volume", "/data/in")
    assert payload.output().path == "/data/out"
    assert payload.output("stats").path == "/data/stats"
    with pytest.raises(KeyError, match="no output entry named 'nope'"):
        payload.output("nope")


def test_payload_entries_carry_the_path_the_definition_declares(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]]
) -> None:
    spec = StageSpec(
        "segment",
        inputs=(InputRef("/ws/in", name="volume", declared_path="/input/volume"),),
        outputs=(OutputRef("/ws/out", declared_path="/output"),),
    )
    job_id = clara_platform.create_job([spec])
    seen: list[clara.Payload] = []
    driver = clara.Driver(
        execute=lambda d, p: seen.append(p) is None,
        target=clara_platform.address,
        job_id=job_id,
        stage_name="segment",
    )
    assert run_all(drivers, driver)[0].succeeded
    (payload,) = seen
    assert payload.input("volume") == clara.PayloadEntry(
        "volume", "/ws/in", declared_path="/input/volume"
    )
    assert (payload.output().path, payload.output().declared_path) == ("/ws/out", "/output")


def _raise(message: str) -> Callable[..., bool]:
    def callback(driver: clara.Driver[Any], *args: Any) -> bool:
        raise RuntimeError(message)

    return callback


def _false(driver: clara.Driver[Any], *args: Any) -> bool:
    return False


@pytest.mark.parametrize(
    ("failing", "how", "expected_message"),
    [
        ("prepare", _false, "prepare returned False"),
        ("prepare", _raise("no model"), "prepare raised RuntimeError: no model"),
        ("execute", _false, "execute returned False"),
        ("execute", _raise("bad voxel"), "execute raised RuntimeError: bad voxel"),
        ("cleanup", _false, "cleanup returned False"),
        ("cleanup", _raise("disk full"), "cleanup raised RuntimeError: disk full"),
        ("execute", lambda d, p: 0, "execute returned 0; expected None or True (success) or"),
    ],
)
def test_callback_failure_fails_the_stage_and_cleanup_still_runs(
    clara_platform: MockPlatform,
    recorder: Recorder,
    drivers: list[clara.Driver[Any]],
    failing: str,
    how: Callable[..., Any],
    expected_message: str,
) -> None:
    job_id = clara_platform.create_job(chain("first", "second"))
    first = make_driver(clara_platform, job_id, "first", recorder, **{failing: how})
    second = make_driver(clara_platform, job_id, "second", recorder)
    result, downstream = run_all(drivers, first, second)

    assert result.outcome is clara.StageOutcome.FAILED
    assert expected_message in result.message
    assert result.reported
    if failing != "cleanup":
        assert "first.cleanup" in recorder.calls
    if failing == "prepare":
        assert "first.execute" not in recorder.calls
    # The dependant never executes; it is cancelled because its upstream failed.
    assert "second.execute" not in recorder.calls
    assert "second.cleanup" in recorder.calls
    assert downstream.outcome is clara.StageOutcome.CANCELLED
    assert "upstream" in downstream.message

    job = clara_platform.wait_for_job(job_id, WAIT)
    assert job.state is JobState.FAILED
    assert job.stages["first"].state is StageState.FAILED
    assert expected_message in job.stages["first"].message
    assert job.stages["first"].reports_applied == 1
    assert job.stages["second"].state is StageState.CANCELLED
    errors = [n for n in recorder.notifications if n.kind is clara.NotificationKind.ERROR]
    if "raised" in expected_message:
        assert any(isinstance(n.error, RuntimeError) for n in errors)


def test_prepare_failure_and_cleanup_failure_are_both_reported(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    driver = make_driver(
        clara_platform, job_id, "only", recorder, prepare=_false, cleanup=_raise("cleanup boom")
    )
    (result,) = run_all(drivers, driver)
    assert result.outcome is clara.StageOutcome.FAILED
    assert result.message == (
        "prepare returned False; cleanup also failed: cleanup raised RuntimeError: cleanup boom"
    )


def test_start_twice_raises(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    driver = make_driver(clara_platform, job_id, "only", recorder)
    run_all(drivers, driver)
    with pytest.raises(clara.DriverStateError, match="already called"):
        driver.start()


def test_wait_before_start_raises_without_blocking(
    clara_platform: MockPlatform, recorder: Recorder
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    driver = make_driver(clara_platform, job_id, "only", recorder)
    with pytest.raises(clara.DriverStateError, match="before start"):
        driver.wait_for_completion()


def test_wait_after_completion_returns_the_same_result_at_once(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    driver = make_driver(clara_platform, job_id, "only", recorder)
    (first,) = run_all(drivers, driver)
    # timeout=0: a second wait must not block at all.
    assert driver.wait_for_completion(timeout=0) is first
    assert driver.state is clara.DriverState.COMPLETED


def test_wait_with_timeout_raises_while_running(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job(chain("up", "down"))
    down = make_driver(clara_platform, job_id, "down", recorder)
    drivers.append(down)
    down.start()
    clara_platform.wait_for_stage(job_id, "down", lambda s: "context_received" in s.events, WAIT)
    with pytest.raises(clara.WaitTimeoutError):
        down.wait_for_completion(timeout=0)
    clara_platform.cancel_job(job_id)
    assert down.wait_for_completion(WAIT).outcome is clara.StageOutcome.CANCELLED


def test_context_properties_before_start_raise_but_ids_are_known(
    clara_platform: MockPlatform, recorder: Recorder
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    driver = make_driver(clara_platform, job_id, "only", recorder, app_data=7)
    assert driver.job_id == job_id
    assert driver.stage_name == "only"
    assert driver.app_data == 7
    with pytest.raises(clara.ContextUnavailableError, match="not known yet"):
        _ = driver.job_name
    with pytest.raises(clara.ContextUnavailableError):
        _ = driver.stage_timeout


def test_notifications_cover_the_life_cycle_in_order(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    run_all(drivers, make_driver(clara_platform, job_id, "only", recorder))
    kinds = recorder.kinds()
    K = clara.NotificationKind
    expected = [
        K.STARTED,
        K.CONNECTED,
        K.CONTEXT_RECEIVED,
        K.PREPARE_STARTED,
        K.PREPARE_FINISHED,
        K.WAITING_FOR_INPUTS,
        K.INPUTS_READY,
        K.EXECUTE_STARTED,
        K.EXECUTE_FINISHED,
        K.CLEANUP_STARTED,
        K.CLEANUP_FINISHED,
        K.OUTCOME_REPORTED,
        K.COMPLETED,
    ]
    assert kinds == expected
    # Progress events reached the platform too.
    stage = clara_platform.wait_for_stage(
        job_id, "only", lambda s: "cleanup_finished" in s.events, WAIT
    )
    assert "execute_started" in stage.events


def test_callbacks_run_on_the_drivers_pool_not_the_caller(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]]
) -> None:
    threads: list[str] = []
    job_id = clara_platform.create_job([StageSpec("only")])

    def record(driver: clara.Driver[Any], *args: Any) -> bool:
        threads.append(threading.current_thread().name)
        return True

    driver = clara.Driver(
        prepare=record,
        execute=record,
        cleanup=record,
        target=clara_platform.address,
        job_id=job_id,
        stage_name="only",
    )
    run_all(drivers, driver)
    assert len(threads) == 3
    assert all(name.startswith("clara-callback-only") for name in threads)


def test_given_executor_is_used_and_not_shut_down(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]]
) -> None:

    job_id = clara_platform.create_job([StageSpec("only")])
    with ThreadPoolExecutor(2, thread_name_prefix="mine") as pool:
        names: list[str] = []
        driver = clara.Driver(
            execute=lambda d, p: names.append(threading.current_thread().name) is None,
            executor=pool,
            target=clara_platform.address,
            job_id=job_id,
            stage_name="only",
        )
        run_all(drivers, driver)
        assert names and names[0].startswith("mine")
        assert pool.submit(lambda: 1).result(WAIT) == 1  # still usable


def test_job_cancelled_while_waiting_skips_execute(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job(chain("up", "down"))
    down = make_driver(clara_platform, job_id, "down", recorder)
    drivers.append(down)
    down.start()
    clara_platform.wait_for_stage(job_id, "down", lambda s: "prepare_finished" in s.events, WAIT)
    clara_platform.cancel_job(job_id, "operator asked")
    result = down.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.CANCELLED
    assert "operator asked" in result.message
    assert "down.execute" not in recorder.calls
    assert "down.cleanup" in recorder.calls
    assert clara.NotificationKind.CANCELLED in recorder.kinds()


def test_cancel_during_execute_interrupts_the_wait_and_cleans_up(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    release = threading.Event()
    started = threading.Event()

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        started.set()
        release.wait(WAIT)  # a cooperative operator would poll driver.cancel_requested
        return True

    driver = make_driver(clara_platform, job_id, "only", recorder, execute=execute)
    drivers.append(driver)
    try:
        driver.start()
        assert started.wait(WAIT)
        clara_platform.cancel_job(job_id)
        result = driver.wait_for_completion(WAIT)
        assert result.outcome is clara.StageOutcome.CANCELLED
        assert driver.cancel_requested
        assert "only.cleanup" in recorder.calls
    finally:
        release.set()


def test_execute_that_gives_up_on_a_cancel_is_cancelled_however_late_the_driver_looks(
    clara_platform: MockPlatform,
    recorder: Recorder,
    drivers: list[clara.Driver[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Returning False because ``cancel_requested`` is the binding's way to stop early.

    The life-cycle thread is made to wake up only after execute has returned (what a loaded
    machine does at random): the stage is still CANCELLED, not FAILED.
    """
    job_id = clara_platform.create_job([StageSpec("only")])
    started = threading.Event()
    cancel_sent = threading.Event()
    returned = threading.Event()
    original = clara._driver.wait_for_any

    def late_wait_for_any(waited: list[Any], timeout: float | None) -> bool:
        done = original(waited, timeout)
        if cancel_sent.is_set() and returned.wait(WAIT):
            futures.wait(waited, WAIT)  # every one of them is done by now
        return done

    monkeypatch.setattr(clara._driver, "wait_for_any", late_wait_for_any)

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        started.set()
        while not driver.cancel_requested:
            cancel_sent.wait(0.01)
        returned.set()
        return False

    driver = make_driver(clara_platform, job_id, "only", recorder, execute=execute)
    drivers.append(driver)
    driver.start()
    assert started.wait(WAIT)
    cancel_sent.set()
    clara_platform.cancel_job(job_id, "stop now")
    result = driver.wait_for_completion(WAIT)
    assert result.outcome is clara.StageOutcome.CANCELLED, result.message
    assert "stop now" in result.message
    assert "only.cleanup" in recorder.calls
    assert clara_platform.job(job_id).stages["only"].state is StageState.CANCELLED


def test_execute_past_the_stage_timeout_times_out(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job([StageSpec("slow", timeout=timedelta(milliseconds=200))])
    release = threading.Event()

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        release.wait(WAIT)
        return True

    driver = make_driver(clara_platform, job_id, "slow", recorder, execute=execute)
    try:
        (result,) = run_all(drivers, driver)
    finally:
        release.set()
    assert result.outcome is clara.StageOutcome.TIMED_OUT
    assert "execute did not finish within 0:00:00.200000" in result.message
    assert "slow.cleanup" in recorder.calls
    assert clara.NotificationKind.TIMED_OUT in recorder.kinds()
    assert clara_platform.job(job_id).stages["slow"].state is StageState.TIMED_OUT


def test_unknown_job_fails_with_not_found_and_still_cleans_up(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    driver = make_driver(clara_platform, uuid.uuid4(), "ghost", recorder)
    (result,) = run_all(drivers, driver)
    assert result.outcome is clara.StageOutcome.FAILED
    assert isinstance(result.error, clara.NotFoundError)
    assert isinstance(result.error.__cause__, grpc.RpcError)  # what gRPC said is kept
    assert "NOT_FOUND" in result.message
    assert not result.reported
    assert recorder.calls == ["ghost.cleanup"]


def test_unreachable_platform_retries_until_the_connect_deadline(
    recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    # A port that was just free: nothing listens there.
    probe = MockPlatform()
    address = probe.start()
    probe.stop()
    driver = clara.Driver(
        execute=lambda d, p: True,
        notify=recorder.notify,
        target=address,
        job_id=uuid.uuid4(),
        stage_name="lonely",
        timeouts=clara.DriverTimeouts(connect=timedelta(milliseconds=600)),
        retry=clara.RetryConfig(initial=0.05, maximum=0.1),
    )
    (result,) = run_all(drivers, driver)
    assert result.outcome is clara.StageOutcome.FAILED
    assert isinstance(result.error, clara.PlatformUnavailableError)
    # Rewritten to say how long connecting was tried, it still carries gRPC's own error.
    assert isinstance(result.error.__cause__, grpc.RpcError)
    assert result.error.__cause__.code() is grpc.StatusCode.UNAVAILABLE
    assert recorder.kinds().count(clara.NotificationKind.CONNECT_RETRY) >= 1


def test_standalone_mode_needs_no_platform(tmp_path: Any, drivers: list[clara.Driver[Any]]) -> None:
    seen: list[clara.Payload] = []
    driver = clara.Driver(
        execute=lambda d, p: seen.append(p) is None,
        environ={
            "NVIDIA_CLARA_NOSYNCLOCK": "1",
            "NVIDIA_CLARA_INPUT": str(tmp_path / "in"),
            "NVIDIA_CLARA_OUTPUT": str(tmp_path / "out"),
        },
    )
    (result,) = run_all(drivers, driver)
    assert result.succeeded and not result.reported
    assert seen[0].input().path == str(tmp_path / "in")
    assert seen[0].output().path == str(tmp_path / "out")


def test_a_raising_notification_callback_is_logged_not_fatal(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])

    def notify(driver: clara.Driver[Any], notification: clara.Notification) -> None:
        raise ValueError("observer bug")

    driver = clara.Driver(
        execute=lambda d, p: True,
        notify=notify,
        target=clara_platform.address,
        job_id=job_id,
        stage_name="only",
    )
    (result,) = run_all(drivers, driver)
    assert result.succeeded
    assert "notification callback raised" in caplog.text


def test_given_channel_is_left_open(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]]
) -> None:

    job_id = clara_platform.create_job([StageSpec("only")])
    with grpc.insecure_channel(clara_platform.address) as channel:
        driver = clara.Driver(
            execute=lambda d, p: True,
            channel=channel,
            job_id=job_id,
            stage_name="only",
            target=clara_platform.address,
        )
        assert run_all(drivers, driver)[0].succeeded
        ref = pb.StageRef(job_id=str(job_id), stage_name="only")
        response = pb_grpc.StageServiceStub(channel).GetStageContext(
            pb.GetStageContextRequest(stage=ref), timeout=WAIT
        )
        assert response.context.state == pb.STAGE_STATE_SUCCEEDED


def test_cancel_racing_the_first_signal_is_never_lost(
    clara_platform: MockPlatform, recorder: Recorder, drivers: list[clara.Driver[Any]]
) -> None:
    # Regression: the stream once ended without sending a cancel that landed while the
    # server was still writing the first WAITING signal. Repeat to make the race likely.
    for _ in range(30):
        job_id = clara_platform.create_job(chain("up", "down"))
        down = make_driver(clara_platform, job_id, "down", recorder)
        drivers.append(down)
        down.start()
        clara_platform.wait_for_stage(
            job_id, "down", lambda s: "context_received" in s.events, WAIT
        )
        clara_platform.cancel_job(job_id)
        assert down.wait_for_completion(WAIT).outcome is clara.StageOutcome.CANCELLED
