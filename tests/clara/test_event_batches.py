"""The link's progress-event queue against a stub that answers at once (unit level)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from clara import _event_batches
from clara._event_batches import MAX_EVENTS_PER_BATCH, EventBatches
from clara._stage_link import EventKind
from clara.stage_api import stage_service_pb2 as pb


class Refusal(grpc.RpcError, grpc.Call):  # type: ignore[misc]  # grpc's ABCs are untyped
    """A failed call, as gRPC reports one."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "refused by the test"

    def initial_metadata(self) -> None:
        return None

    def trailing_metadata(self) -> None:
        return None

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class Answered:
    """A call's future: done at once, or when the test calls :meth:`answer`."""

    def __init__(self, error: BaseException | None, *, deferred: bool = False) -> None:
        self._error = error
        self._deferred = deferred
        self._callbacks: list[Callable[[Any], None]] = []

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._deferred:
            self._callbacks.append(callback)
        else:
            callback(self)

    def answer(self) -> None:
        for callback in self._callbacks:
            callback(self)


class Stub:
    """Records each batch; answers the next ones with ``refuse`` codes, then OK."""

    def __init__(self, *refuse: grpc.StatusCode, deferred: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.calls: list[Answered] = []
        self._refuse = list(refuse)
        self._deferred = deferred
        self.ReportStageEvents = self  # the multi-callable is this object

    def future(self, request: pb.ReportStageEventsRequest, **_: Any) -> Answered:
        self.batches.append([event.message for event in request.events])
        code = self._refuse.pop(0) if self._refuse else None
        self.calls.append(Answered(Refusal(code) if code else None, deferred=self._deferred))
        return self.calls[-1]


def queue_for(stub: Stub) -> EventBatches:
    ref = pb.StageRef(job_id="6f1c1a2e-0d43-4b59-9c3a-0a3f5b0f7d21", stage_name="s")
    return EventBatches(lambda: stub, ref, None)  # type: ignore[arg-type,return-value]


def add(events: EventBatches, *messages: str) -> None:
    for message in messages:
        events.add(EventKind.EXECUTE_STARTED, message)


def test_a_failed_batch_goes_with_the_next_call_in_order() -> None:
    stub = Stub(grpc.StatusCode.UNAVAILABLE)
    events = queue_for(stub)
    add(events, "a", "b")
    events.flush()
    add(events, "c")
    reported = [event.message for event in events.take_for_report("r1")]
    assert stub.batches == [["a", "b"]]
    assert reported == ["a", "b", "c"]
    # A retry of the same report carries the same events; nothing is left to send.
    assert [event.message for event in events.take_for_report("r1")] == reported
    events.close(1.0)
    assert len(stub.batches) == 1


def test_a_batch_the_platform_refuses_as_such_is_not_sent_again() -> None:
    stub = Stub(grpc.StatusCode.INVALID_ARGUMENT)
    events = queue_for(stub)
    add(events, "bad")
    events.flush()
    add(events, "next")
    assert [event.message for event in events.take_for_report("r1")] == ["next"]


def test_no_call_ever_carries_more_events_than_the_contract_allows() -> None:
    stub = Stub(grpc.StatusCode.UNAVAILABLE, deferred=True)
    events = queue_for(stub)
    add(events, *(f"first {i}" for i in range(200)))
    events.flush()  # in flight
    add(events, *(f"then {i}" for i in range(200)))
    stub.calls[0].answer()  # refused: the 200 go back in front of the 200 queued since
    reported = [event.message for event in events.take_for_report("r1")]
    assert len(reported) == MAX_EVENTS_PER_BATCH
    assert reported[-1] == "then 199"  # the oldest were dropped
    assert reported[0] == f"first {2 * 200 - MAX_EVENTS_PER_BATCH}"


def test_after_unimplemented_every_event_waits_for_the_report() -> None:
    stub = Stub(grpc.StatusCode.UNIMPLEMENTED)
    events = queue_for(stub)
    add(events, "a")
    events.flush()
    add(events, "b")
    events.flush()  # not sent: the platform has no ReportStageEvents
    assert stub.batches == [["a"]]
    assert [event.message for event in events.take_for_report("r1")] == ["a", "b"]


def test_a_batch_in_flight_when_the_report_is_taken_is_waited_for_and_not_lost() -> None:
    stub = Stub(grpc.StatusCode.UNAVAILABLE, deferred=True)
    events = queue_for(stub)
    add(events, "a")
    events.flush()  # in flight; its answer (a refusal) comes while the report waits
    add(events, "b")
    answering = threading.Thread(target=stub.calls[0].answer, name="test-answer")
    answering.start()
    reported = [event.message for event in events.take_for_report("r1")]
    answering.join(10)
    assert reported == ["a", "b"]  # the refused batch went with the report, in order


def test_a_batch_still_in_flight_after_the_wait_goes_with_the_report_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_event_batches, "EVENT_FLUSH_TIMEOUT", 0.01)
    stub = Stub(grpc.StatusCode.DEADLINE_EXCEEDED, deferred=True)
    events = queue_for(stub)
    add(events, "a")
    events.flush()
    add(events, "b")
    reported = [event.message for event in events.take_for_report("r1")]
    assert reported == ["a", "b"]  # the platform records an event it gets twice once
    stub.calls[0].answer()  # the late refusal requeues nothing: the report carried it
    events.close(1.0)
    assert len(stub.batches) == 1


def test_a_follow_up_batch_sent_while_the_report_waits_is_not_duplicated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_event_batches, "EVENT_FLUSH_TIMEOUT", 0.01)
    stub = Stub(deferred=True)
    events = queue_for(stub)
    add(events, "a")
    events.flush()  # batch 1 in flight
    add(events, "b")
    events.flush()  # requested: "b" follows once batch 1 returns
    waiting = events._idle.wait_for

    def answer_first_then_wait(predicate: Callable[[], bool], timeout: float) -> bool:
        # Batch 1 succeeds while the report waits, so "b" leaves the queue as batch 2.
        events._idle.release()
        try:
            stub.calls[0].answer()
        finally:
            events._idle.acquire()
        return waiting(predicate, timeout)

    monkeypatch.setattr(events._idle, "wait_for", answer_first_then_wait)
    reported = [event.message for event in events.take_for_report("r1")]
    assert stub.batches == [["a"], ["b"]]
    assert reported == ["b"]  # batch 2, still in flight, goes with the report once
