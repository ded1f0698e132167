"""Capacity scheduling: jobs wait (pending) until their requests fit, in priority order.

The bookkeeping is tested on its own; the scheduling through the Platform API over real gRPC,
with real operator processes that hold their stage until the test lets them go.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _launch import Listener, Platform, listener, platform
from _queue_jobs import (
    HIGHER,
    IMMEDIATE,
    LOWER,
    NORMAL,
    Holder,
    Jobs,
    holding_operator,
    next_holder,
)

from server_mock import JobState, StageState
from server_mock._capacity import (
    Capacity,
    CapacityExceededError,
    CapacityQueue,
    JobDemand,
    OperatorDemand,
)
from server_mock._cli.capacity_flags import parse_memory
from server_mock._definition import parse_pipeline_definition
from server_mock._errors import ErrorCode
from server_mock._proto.nvidia.clara.platform import jobs_pb2
from server_mock._sandbox import bwrap_problem

MIB = 1024 * 1024
WAIT = 60.0


def demand(**gpus: int) -> JobDemand:
    return JobDemand(tuple(OperatorDemand(name, gpus=n) for name, n in gpus.items()))


# -- the bookkeeping --------------------------------------------------------------------------


def test_the_host_capacity_comes_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    host = Capacity.of_host()
    assert host.cpus == len(os.sched_getaffinity(0))
    assert host.memory_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert host.gpu_ids == ("3", "5")
    assert Capacity.of_host(gpus=1).gpu_ids == ("3",)  # the host's own, first
    assert Capacity.of_host(gpus=3).gpu_ids == ("0", "1", "2")  # more than it has: pretended
    assert Capacity.of_host(gpus=0).gpu_ids == ()
    assert Capacity.of_host(cpus=7, memory_bytes=MIB).cpus == 7


def test_memory_flag_takes_megabytes_or_a_unit() -> None:
    assert parse_memory("4096") == 4096 * MIB  # as requests.memory
    assert parse_memory("8G") == 8 * 1024 * MIB
    assert parse_memory("512MiB") == 512 * MIB
    assert parse_memory("1048576B") == MIB
    for bad in ("lots", "0", "-1", "1.5G"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse_memory(bad)


def test_a_jobs_demand_is_the_sum_of_its_operators_requests() -> None:
    definition = parse_pipeline_definition(
        "api-version: 0.4.0\nname: p\noperators:\n"
        "- name: a\n  container: {image: t/a}\n  requests: {cpu: 2, memory: 256, gpu: 1}\n"
        "- name: b\n  container: {image: t/b}\n  requests: {gpu: 2}\n"
        "- name: c\n  container: {image: t/c}\n"
    )
    job = JobDemand.of(definition)
    assert (job.cpus, job.memory_bytes, job.gpus) == (2, 256 * MIB, 3)
    assert job.operators[2] == OperatorDemand("c")  # no request: nothing counted


def test_a_demand_larger_than_the_capacity_names_operator_field_and_amounts() -> None:
    capacity = Capacity(cpus=2, memory_bytes=1024 * MIB, gpu_ids=("0",))
    with pytest.raises(CapacityExceededError) as alone:
        demand(seg=2).check(capacity)
    assert str(alone.value) == (
        "operator 'seg', field requests.gpu: it requests 2 GPU(s); the platform has 1 GPU(s) "
        "in all (clara-mock serve --gpus)"
    )
    with pytest.raises(CapacityExceededError) as together:
        demand(a=1, b=1).check(capacity)
    assert "the job's operators request 2 GPU(s) in all ('a' 1 GPU(s), 'b' 1 GPU(s))" in str(
        together.value
    )
    big = JobDemand((OperatorDemand("m", memory_bytes=2048 * MIB, cpus=3),))
    with pytest.raises(CapacityExceededError, match=r"requests\.cpu.*requests\.memory") as both:
        big.check(capacity)
    assert "it requests 2 GiB; the platform has 1 GiB in all (clara-mock serve --memory)" in str(
        both.value
    )
    demand(a=1).check(capacity)  # fits: no error


def test_the_queue_admits_by_priority_then_first_come_and_the_head_blocks() -> None:
    queue: CapacityQueue[str] = CapacityQueue(Capacity(1, MIB, gpu_ids=("0", "1")))
    queue.reserve("running", demand(op=2))
    for key, priority in [("low", 1), ("now", 4), ("n1", 2), ("n2", 2), ("high", 3)]:
        queue.enqueue(key, priority, demand(op=1))
    assert queue.waiting() == ["now", "high", "n1", "n2", "low"]
    assert queue.admit() == []  # nothing free
    queue.release("running", ["op"])
    assert [key for key, _ in queue.admit()] == ["now", "high"]
    queue.enqueue("huge", 4, demand(op=2))  # at the head now, and does not fit: blocks
    queue.release_all("now")
    assert queue.admit() == []
    assert queue.remove("huge")
    assert [key for key, _ in queue.admit()] == ["n1"]


def test_each_operator_gets_its_own_gpus_lowest_first() -> None:
    queue: CapacityQueue[str] = CapacityQueue(Capacity(1, MIB, gpu_ids=("0", "1", "2")))
    first = queue.reserve("first", demand(a=1, b=1))
    assert first.gpu_ids == {"a": ("0",), "b": ("1",)}
    queue.release("first", ["a"])  # its stage ended: its GPU is free again
    second = queue.reserve("second", demand(c=2))
    assert second.gpu_ids == {"c": ("0", "2")}
    restored: CapacityQueue[str] = CapacityQueue(queue.capacity)
    restored.reserve("again", demand(c=2), gpu_ids={"c": ["1", "2"]})  # after a restart
    assert restored.reserve("next", demand(d=1)).gpu_ids == {"d": ("0",)}


# -- through the Platform API, with real operators ----------------------------------------------


@pytest.fixture
def ear() -> Iterator[Listener]:
    with listener() as server:
        yield server


def scheduled(
    tmp_path: Path, gpus: int, runner: str = "process"
) -> contextlib.AbstractContextManager[Platform]:
    capacity = Capacity(cpus=64, memory_bytes=64 * 1024 * MIB, gpu_ids=tuple(map(str, range(gpus))))
    return platform(tmp_path, runner=runner, platform_args={"capacity": capacity})


def state_of(running: Platform, job_id: uuid.UUID) -> JobState:
    return running.mock.job(job_id).state


def test_a_job_that_does_not_fit_stays_pending_until_the_first_ends(
    tmp_path: Path, ear: Listener
) -> None:
    with scheduled(tmp_path, gpus=1) as running:
        jobs = Jobs(running.mock.address, tmp_path)
        pipeline_id = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 1}"))
        first, second = jobs.create(pipeline_id, "first"), jobs.create(pipeline_id, "second")
        assert jobs.start(first).state == jobs_pb2.JOB_STATE_RUNNING
        holder = next_holder(ear)
        assert (holder.job_id, holder.gpus) == (first, "0")
        started = jobs.start(second)
        assert (started.header.code, started.state) == (0, jobs_pb2.JOB_STATE_PENDING)
        status = jobs.status(second)
        assert status.state == jobs_pb2.JOB_STATE_PENDING
        assert status.operator_details[0].status == jobs_pb2.JOB_OPERATOR_STATUS_PENDING
        (why,) = status.messages
        assert why.startswith("queued for capacity: number 1 of 1 in the queue; it needs ")
        assert why.endswith("1 GPU(s), free now: 64 CPU(s), 65536 MiB, 0 GPU(s)")
        record = running.mock.call(lambda: running.mock.state.job_records[second])
        assert record.queued is not None and not running.layout(second).log_path("seg").exists()
        again = jobs.start(second)
        assert again.header.code == ErrorCode.JOB_NOT_STARTABLE
        assert "is queued" in again.header.messages[0]

        holder.release()
        done = running.mock.wait_for_job(first, WAIT)
        assert done.state is JobState.SUCCEEDED
        follower = next_holder(ear)  # the second job runs now, on the GPU the first gave back
        assert (follower.job_id, follower.gpus) == (second, "0")
        assert jobs.status(second).state == jobs_pb2.JOB_STATE_RUNNING
        follower.release()
        last = running.mock.wait_for_job(second, WAIT)
        assert last.state is JobState.SUCCEEDED
        ended_first = done.stages["seg"].ended_at
        assert ended_first is not None and last.stages["seg"].ready_at is not None
        assert last.stages["seg"].ready_at >= ended_first
        jobs.close()


def test_queued_jobs_start_by_priority_then_first_come(tmp_path: Path, ear: Listener) -> None:
    with scheduled(tmp_path, gpus=1) as running:
        jobs = Jobs(running.mock.address, tmp_path)
        pipeline_id = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 1}"))
        busy = jobs.create(pipeline_id, "busy")
        jobs.start(busy)
        holder = next_holder(ear)
        order = [("lower", LOWER), ("normal-1", NORMAL), ("immediate", IMMEDIATE)]
        order += [("normal-2", NORMAL), ("higher", HIGHER)]
        ids = {}
        for name, priority in order:
            ids[jobs.create(pipeline_id, name, priority)] = name
        for job_id in ids:
            assert jobs.start(job_id).state == jobs_pb2.JOB_STATE_PENDING
        started = []
        for _ in ids:
            holder.release()
            holder = next_holder(ear)
            started.append(ids[holder.job_id])
        assert started == ["immediate", "higher", "normal-1", "normal-2", "lower"]
        holder.release()
        for job_id in ids:
            assert running.mock.wait_for_job(job_id, WAIT).state is JobState.SUCCEEDED
        jobs.close()


def test_a_request_larger_than_the_capacity_is_refused_and_changes_nothing(
    tmp_path: Path, ear: Listener
) -> None:
    with scheduled(tmp_path, gpus=1) as running:
        jobs = Jobs(running.mock.address, tmp_path)
        pipeline_id = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 2}"))
        job_id = jobs.create(pipeline_id)
        refused = jobs.start(job_id)
        assert refused.header.code == ErrorCode.JOB_EXCEEDS_CAPACITY
        (message,) = refused.header.messages
        assert message == (
            f"job {job_id.hex} can never run here: operator 'seg', field requests.gpu: it "
            "requests 2 GPU(s); the platform has 1 GPU(s) in all (clara-mock serve --gpus)"
        )
        job = running.mock.job(job_id)
        assert job.state is JobState.CREATED
        assert job.stages["seg"].state is StageState.WAITING
        record = running.mock.call(lambda: running.mock.state.job_records[job_id])
        assert record.queued is None and record.gpu_ids == {}
        assert list(running.layout(job_id).input_dir.iterdir()) == []  # inputs not copied
        scheduler = running.mock.state.scheduler
        assert scheduler is not None and running.mock.call(scheduler.queue.waiting) == []
        assert jobs.status(job_id).state == jobs_pb2.JOB_STATE_PENDING
        jobs.close()


def test_a_cancelled_queued_job_leaves_the_queue_and_never_runs(
    tmp_path: Path, ear: Listener
) -> None:
    with scheduled(tmp_path, gpus=1) as running:
        jobs = Jobs(running.mock.address, tmp_path)
        pipeline_id = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 1}"))
        busy, dropped, kept = (jobs.create(pipeline_id, n) for n in ("busy", "dropped", "kept"))
        jobs.start(busy)
        holder = next_holder(ear)
        jobs.start(dropped)
        jobs.start(kept)
        cancelled = jobs.cancel(dropped)
        assert (cancelled.job_state, cancelled.job_status) == (
            jobs_pb2.JOB_STATE_STOPPED,
            jobs_pb2.JOB_STATUS_CANCELED,
        )
        scheduler = running.mock.state.scheduler
        assert scheduler is not None
        waiting = running.mock.call(scheduler.queue.waiting)
        assert waiting == [kept]  # the platform's own follower took it out: no poll
        holder.release()
        follower = next_holder(ear)
        assert follower.job_id == kept
        follower.release()
        assert running.mock.wait_for_job(kept, WAIT).state is JobState.SUCCEEDED
        assert running.mock.job(dropped).state is JobState.CANCELLED
        assert not running.layout(dropped).log_path("seg").exists()  # never launched
        jobs.close()


@pytest.mark.parametrize("runner", ["process", "sandbox"])
def test_concurrent_jobs_see_their_own_gpus(tmp_path: Path, ear: Listener, runner: str) -> None:
    if runner == "sandbox":
        assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    with scheduled(tmp_path, gpus=2, runner=runner) as running:
        jobs = Jobs(running.mock.address, tmp_path)
        pipeline_id = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 1}"))
        first, second = jobs.create(pipeline_id), jobs.create(pipeline_id)
        assert jobs.start(first).state == jobs_pb2.JOB_STATE_RUNNING
        assert jobs.start(second).state == jobs_pb2.JOB_STATE_RUNNING
        holders: list[Holder] = [next_holder(ear), next_holder(ear)]
        assert {h.job_id: h.gpus for h in holders} == {first: "0", second: "1"}
        for h in holders:
            h.release()
        for job_id in (first, second):
            assert running.mock.wait_for_job(job_id, WAIT).state is JobState.SUCCEEDED
        jobs.close()


def test_a_queued_job_that_cannot_be_launched_when_admitted_fails_saying_why(
    tmp_path: Path, ear: Listener
) -> None:
    with scheduled(tmp_path, gpus=1) as running:
        jobs = Jobs(running.mock.address, tmp_path)
        holding = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 1}"))
        broken = jobs.create_pipeline(
            "api-version: 0.4.0\nname: broken\noperators:\n- name: nowhere\n"
            "  container: {image: t/nowhere}\n  requests: {gpu: 1}\n  input: [{path: /input}]\n"
        )
        busy, queued = jobs.create(holding, "busy"), jobs.create(broken, "queued")
        jobs.start(busy)
        holder = next_holder(ear)
        assert jobs.start(queued).state == jobs_pb2.JOB_STATE_PENDING
        holder.release()
        ended = running.mock.wait_for_job(queued, WAIT)  # no caller to tell: the job says it
        assert ended.state is JobState.FAILED
        message = ended.stages["nowhere"].message
        assert message.startswith("launch failed: ") and "no local command" in message
        status = jobs.status(queued)
        assert (status.state, status.status) == (
            jobs_pb2.JOB_STATE_STOPPED,
            jobs_pb2.JOB_STATUS_FAULTED,
        )
        scheduler = running.mock.state.scheduler
        assert scheduler is not None
        assert running.mock.call(lambda: scheduler.queue.free()[2]) == 1  # its GPU given back
        jobs.close()
