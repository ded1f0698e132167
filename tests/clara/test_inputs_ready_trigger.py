"""The trigger that starts execute from the thread delivering INPUTS_READY (unit level)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures

import pytest

from clara._callback_start import StartedCallback as _Started
from clara._callback_start import StartOnInputsReady as _StartOnInputsReady
from clara._stage_link import Signal, SignalKind
from clara._threads import DaemonExecutor

WAIT = 20.0
READY = Signal(SignalKind.INPUTS_READY, "")


@pytest.fixture
def pool() -> Iterator[DaemonExecutor]:
    executor = DaemonExecutor(2, "test-trigger")
    yield executor
    executor.shutdown()


def starter(pool: DaemonExecutor, starts: list[_Started]) -> Callable[[], _Started]:
    """What the driver arms the trigger with: submit execute (here: return "ran")."""

    def start() -> _Started:
        starts.append(_Started.submit(pool, lambda: "ran", (), track_start=True))
        return starts[-1]

    return start


def test_it_starts_execute_once_when_the_signal_comes_while_armed(
    pool: DaemonExecutor,
) -> None:
    starts: list[_Started] = []
    decided: futures.Future[Signal] = futures.Future()
    trigger = _StartOnInputsReady(starter(pool, starts), decided)
    assert not trigger.settled.done()
    decided.set_result(READY)
    assert trigger.settled.result(WAIT) is None  # completes once execute has begun
    started = trigger.disarm()
    assert started is starts[0]
    assert started.future.result(WAIT) == "ran"
    assert trigger.disarm() is started
    assert len(starts) == 1


def test_a_signal_already_there_starts_execute_when_armed(pool: DaemonExecutor) -> None:
    starts: list[_Started] = []
    decided: futures.Future[Signal] = futures.Future()
    decided.set_result(READY)
    trigger = _StartOnInputsReady(starter(pool, starts), decided)
    assert trigger.settled.result(WAIT) is None
    assert trigger.disarm() is starts[0]


def test_a_signal_after_disarming_starts_nothing(pool: DaemonExecutor) -> None:
    starts: list[_Started] = []
    decided: futures.Future[Signal] = futures.Future()
    trigger = _StartOnInputsReady(starter(pool, starts), decided)
    assert trigger.disarm() is None
    decided.set_result(READY)
    assert starts == []


@pytest.mark.parametrize(
    "outcome",
    [Signal(SignalKind.JOB_CANCELLED, "stop"), Signal(SignalKind.UPSTREAM_FAILED, "up failed")],
)
def test_any_other_signal_settles_it_without_starting(
    pool: DaemonExecutor, outcome: Signal
) -> None:
    starts: list[_Started] = []
    decided: futures.Future[Signal] = futures.Future()
    trigger = _StartOnInputsReady(starter(pool, starts), decided)
    decided.set_result(outcome)
    assert trigger.settled.done()
    assert trigger.disarm() is None
    assert starts == []


def test_a_lost_stream_settles_it_without_starting(pool: DaemonExecutor) -> None:
    starts: list[_Started] = []
    decided: futures.Future[Signal] = futures.Future()
    trigger = _StartOnInputsReady(starter(pool, starts), decided)
    decided.set_exception(RuntimeError("stream lost"))
    assert trigger.settled.done()
    assert trigger.disarm() is None
    assert starts == []
