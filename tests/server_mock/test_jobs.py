"""The DAG state machine, on its own (no server): run inside an event loop for its Events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from server_mock._jobs import (
    InputRef,
    Job,
    JobState,
    JobStore,
    OutcomeRefusedError,
    StageOutcome,
    StageSpec,
    StageState,
)

T = TypeVar("T")


def on_loop(fn: Callable[[], T]) -> T:
    async def run() -> T:
        return fn()

    return asyncio.run(run())


def diamond() -> Job:
    return Job(
        uuid.uuid4(),
        "diamond",
        "",
        [
            StageSpec("load"),
            StageSpec("left", inputs=(InputRef("/l", "load"),)),
            StageSpec("right", inputs=(InputRef("/r", "load"),)),
            StageSpec("join", inputs=(InputRef("/a", "left"), InputRef("/b", "right"))),
            StageSpec("side"),
        ],
    )


def states(job: Job) -> dict[str, StageState]:
    return {name: stage.state for name, stage in job.stages.items()}


def test_readiness_follows_the_dag() -> None:
    def scenario() -> None:
        job = diamond()
        assert set(states(job).values()) == {StageState.WAITING}  # nothing before start
        job.start()
        assert states(job)["load"] is StageState.READY
        assert states(job)["side"] is StageState.READY
        assert states(job)["left"] is StageState.WAITING
        job.complete_stage("load", "r1", StageOutcome.SUCCEEDED, "")
        assert states(job)["left"] is StageState.READY
        assert states(job)["right"] is StageState.READY
        job.complete_stage("left", "r2", StageOutcome.SUCCEEDED, "")
        assert states(job)["join"] is StageState.WAITING  # still waits for right
        job.complete_stage("right", "r3", StageOutcome.SUCCEEDED, "")
        assert states(job)["join"] is StageState.READY
        job.complete_stage("join", "r4", StageOutcome.SUCCEEDED, "")
        assert job.state is JobState.RUNNING  # side is still running
        job.complete_stage("side", "r5", StageOutcome.SUCCEEDED, "")
        assert job.state is JobState.SUCCEEDED

    on_loop(scenario)


def test_failure_cancels_dependants_transitively_but_not_independent_stages() -> None:
    def scenario() -> None:
        job = diamond()
        job.start()
        job.complete_stage("load", "r1", StageOutcome.SUCCEEDED, "")
        job.complete_stage("left", "r2", StageOutcome.FAILED, "execute returned False")
        assert states(job)["join"] is StageState.CANCELLED
        assert "upstream stage left failed" in job.stages["join"].message
        assert states(job)["right"] is StageState.READY  # independent branch goes on
        assert job.state is JobState.RUNNING
        job.complete_stage("right", "r3", StageOutcome.SUCCEEDED, "")
        job.complete_stage("side", "r4", StageOutcome.SUCCEEDED, "")
        assert job.state is JobState.FAILED
        assert "left: failed (execute returned False)" in job.message

    on_loop(scenario)


def test_reports_are_idempotent_per_report_id() -> None:
    def scenario() -> None:
        job = Job(uuid.uuid4(), "j", "", [StageSpec("only")])
        job.start()
        assert job.complete_stage("only", "same", StageOutcome.SUCCEEDED, "") == (
            StageState.SUCCEEDED,
            True,
        )
        assert job.complete_stage("only", "same", StageOutcome.SUCCEEDED, "") == (
            StageState.SUCCEEDED,
            True,
        )
        assert job.complete_stage("only", "other", StageOutcome.FAILED, "") == (
            StageState.SUCCEEDED,
            False,
        )
        assert job.stages["only"].reports_applied == 1

    on_loop(scenario)


def test_cancel_ends_every_running_stage_once() -> None:
    def scenario() -> None:
        job = diamond()
        job.start()
        job.complete_stage("load", "r1", StageOutcome.SUCCEEDED, "")
        assert job.cancel("user asked")
        assert not job.cancel("again")
        assert job.state is JobState.CANCELLED
        assert states(job)["load"] is StageState.SUCCEEDED
        assert {states(job)[s] for s in ("left", "right", "join", "side")} == {StageState.CANCELLED}
        # A late report after the cancel is acknowledged, not applied.
        assert job.complete_stage("left", "late", StageOutcome.SUCCEEDED, "") == (
            StageState.CANCELLED,
            False,
        )

    on_loop(scenario)


def test_a_stage_of_a_job_not_started_cannot_report() -> None:
    def scenario() -> None:
        job = diamond()
        for outcome in StageOutcome:
            with pytest.raises(OutcomeRefusedError, match=r"^stage: job .* has not started"):
                job.complete_stage("load", "r1", outcome, "")
        assert set(states(job).values()) == {StageState.WAITING}
        assert job.stages["load"].reports_applied == 0 and job.state is JobState.CREATED

    on_loop(scenario)


def test_a_waiting_stage_cannot_succeed_but_may_end_otherwise() -> None:
    def scenario() -> None:
        job = diamond()
        job.start()
        with pytest.raises(OutcomeRefusedError, match=r"^outcome: stage 'join' cannot succeed"):
            job.complete_stage("join", "r1", StageOutcome.SUCCEEDED, "")
        assert states(job)["join"] is StageState.WAITING and not job.stages["join"].report_id
        for outcome in (StageOutcome.FAILED, StageOutcome.TIMED_OUT, StageOutcome.CANCELLED):
            fresh = diamond()
            fresh.start()
            assert fresh.complete_stage("join", "r1", outcome, "") == (outcome.state, True)

    on_loop(scenario)


def test_changed_event_fires_on_every_change() -> None:
    def scenario() -> None:
        job = Job(uuid.uuid4(), "j", "", [StageSpec("only")])
        before = job.changed()
        job.start()
        assert before.is_set()
        after = job.changed()
        assert not after.is_set()
        job.record_event("only", "execute_started", "")
        assert after.is_set()

    on_loop(scenario)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([StageSpec("a"), StageSpec("a")], "defined twice"),
        ([StageSpec("a", inputs=(InputRef("/x", "ghost"),))], "unknown ['ghost']"),
        ([], "at least one stage"),
    ],
)
def test_invalid_job_is_rejected(stages: list[StageSpec], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        on_loop(lambda: Job(uuid.uuid4(), "j", "", stages))


def test_store_lookup_errors_name_the_id() -> None:
    store = JobStore()
    missing = uuid.uuid4()
    with pytest.raises(LookupError, match=str(missing)):
        store.get(missing)
