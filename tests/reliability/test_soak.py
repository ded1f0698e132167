"""8. Soak: many jobs at once, random failures; every stage ends exactly once, consistently."""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from _faults import WAIT

import clara
from server_mock import InputRef, JobState, MockPlatform, StageSpec, StageState

SEED = 20_240_601
ROUNDS = 8
JOBS_PER_ROUND = 30
HANG_TIMEOUT = timedelta(milliseconds=300)
BEHAVIOURS = [
    ("succeed", 55),
    ("execute_false", 8),
    ("execute_raises", 8),
    ("prepare_false", 5),
    ("cleanup_raises", 5),
    ("execute_hangs", 6),  # past a short stage timeout: TIMED_OUT
    ("cancel_job_in_execute", 5),  # the job is cancelled while this stage executes
]
SHAPES = {
    "chain": [("a", ()), ("b", ("a",)), ("c", ("b",))],
    "diamond": [("a", ()), ("b", ("a",)), ("c", ("a",)), ("d", ("b", "c"))],
    "fan-out": [("a", ()), ("b", ("a",)), ("c", ("a",))],
}


@dataclass
class Stage:
    name: str
    upstream: tuple[str, ...]
    behaviour: str
    executed: threading.Event = field(default_factory=threading.Event)
    driver: clara.Driver[Any] | None = None


@dataclass
class Job:
    job_id: uuid.UUID
    stages: dict[str, Stage]
    cancel_first: bool


@pytest.fixture
def quiet_driver_logs() -> Iterator[None]:
    """Thousands of expected failures: keep them out of pytest's log capture."""
    logger = logging.getLogger("clara")
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


def plan_round(
    rng: random.Random,
) -> list[tuple[str, list[tuple[str, tuple[str, ...], str]], bool]]:
    names, weights = zip(*BEHAVIOURS, strict=True)
    jobs = []
    for _ in range(JOBS_PER_ROUND):
        shape = rng.choice(sorted(SHAPES))
        stages = [(n, up, rng.choices(names, weights)[0]) for n, up in SHAPES[shape]]
        jobs.append((shape, stages, rng.random() < 0.1))
    return jobs


def make_callbacks(
    platform: MockPlatform, job: Job, stage: Stage, release: threading.Event
) -> dict[str, Callable[..., Any]]:
    def prepare(driver: clara.Driver[Any]) -> bool:
        return stage.behaviour != "prepare_false"

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        stage.executed.set()
        if stage.behaviour == "execute_raises":
            raise RuntimeError("injected failure")
        if stage.behaviour == "execute_hangs":
            release.wait(WAIT)
        if stage.behaviour == "cancel_job_in_execute":
            platform.cancel_job(job.job_id, "soak: cancelled during execute")
            release.wait(WAIT)
        return stage.behaviour != "execute_false"

    def cleanup(driver: clara.Driver[Any]) -> bool:
        if stage.behaviour == "cleanup_raises":
            raise RuntimeError("injected cleanup failure")
        return True

    return {"prepare": prepare, "execute": execute, "cleanup": cleanup}


def check_job(platform: MockPlatform, job: Job, results: dict[str, clara.StageResult]) -> None:
    snapshot = platform.job(job.job_id)
    assert snapshot.state.terminal, snapshot
    for name, stage in snapshot.stages.items():
        result = results[name]
        # Exactly one terminal state per stage, applied at most once.
        assert stage.state.terminal, (name, snapshot)
        assert stage.reports_applied <= 1, (name, snapshot)
        if stage.reports_applied == 1:
            assert stage.state.value == result.outcome.value, (name, result, snapshot)
        else:  # the platform ended it first: a cancellation (of the job or by an upstream)
            assert stage.state is StageState.CANCELLED, (name, result, snapshot)
        assert result.reported or job.cancel_first, (name, result)
        # Execute ran only once every upstream stage had succeeded.
        if job.stages[name].executed.is_set():
            for upstream in job.stages[name].upstream:
                assert snapshot.stages[upstream].state is StageState.SUCCEEDED, (name, snapshot)
    states = [s.state for s in snapshot.stages.values()]
    cancelled = job.cancel_first or any(
        s.behaviour == "cancel_job_in_execute" and s.executed.is_set() for s in job.stages.values()
    )
    # The job's end matches its stages.
    if cancelled:
        assert snapshot.state is JobState.CANCELLED, snapshot
    elif all(state is StageState.SUCCEEDED for state in states):
        assert snapshot.state is JobState.SUCCEEDED, snapshot
    else:
        assert snapshot.state is JobState.FAILED, snapshot
    if snapshot.state is JobState.SUCCEEDED:
        assert all(state is StageState.SUCCEEDED for state in states)


@pytest.mark.slow
@pytest.mark.usefixtures("quiet_driver_logs")
def test_soak_random_failures_end_every_stage_exactly_once(clara_platform: MockPlatform) -> None:
    rng = random.Random(SEED)
    seen_outcomes: set[str] = set()
    for _ in range(ROUNDS):
        release = threading.Event()
        jobs: list[Job] = []
        for _shape, stages, cancel_first in plan_round(rng):
            specs = [
                StageSpec(
                    name,
                    inputs=tuple(InputRef(f"/in/{u}", u) for u in upstream),
                    timeout=HANG_TIMEOUT if behaviour == "execute_hangs" else timedelta(seconds=60),
                )
                for name, upstream, behaviour in stages
            ]
            job_id = clara_platform.create_job(specs)
            job = Job(
                job_id, {n: Stage(n, up, b) for n, up, b in stages}, cancel_first=cancel_first
            )
            if cancel_first:
                clara_platform.cancel_job(job_id, "soak: cancelled before it ran")
            jobs.append(job)
        # Every driver of the round at once, in random order.
        order = [(job, stage) for job in jobs for stage in job.stages.values()]
        rng.shuffle(order)
        try:
            for job, stage in order:
                stage.driver = clara.Driver(
                    **make_callbacks(clara_platform, job, stage, release),
                    target=clara_platform.address,
                    job_id=job.job_id,
                    stage_name=stage.name,
                    handle_sigterm=False,
                    retry=clara.RetryConfig(initial=0.01, maximum=0.1),
                )
                stage.driver.start()
            for job in jobs:
                results = {}
                for name, stage in job.stages.items():
                    assert stage.driver is not None
                    results[name] = stage.driver.wait_for_completion(WAIT)
                    seen_outcomes.add(results[name].outcome.value)
                check_job(clara_platform, job, results)
        finally:
            release.set()
            for _job, stage in order:
                if stage.driver is not None and stage.driver.state is not clara.DriverState.CREATED:
                    stage.driver.wait_for_completion(WAIT)
    assert seen_outcomes == {"succeeded", "failed", "cancelled", "timed_out"}
