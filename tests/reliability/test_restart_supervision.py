"""11. Stopping or crashing ``serve --state`` never throws a running job away.

A real ``clara-mock serve --state`` process launches real operator processes (the process
runner, so the test can signal them by pid). The server is stopped (SIGTERM) or killed
(SIGKILL) mid-job and restarted on the same port and state file; the restarted server adopts
the operators the old one launched (by pid, start time and boot id, watched with a pidfd):
their stages still end, time out, or fail with a message that says what happened while the
platform was down. Without ``--state``, SIGTERM cancels the running jobs cleanly first.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _faults import WAIT, ControlServer, ServerProcess, pipeline_yaml

from server_mock._client import JobStatus, PlatformClient
from server_mock._launches import identity_of
from server_mock._operator_process import OperatorSignals
from server_mock._sandbox import bwrap_problem


def stage_rows(state: Path) -> dict[str, tuple[str, str]]:
    """Each stage's saved (state, message)."""
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT name, state, message FROM stages").fetchall()
    return {name: (state_, message) for name, state_, message in rows}


def launch_rows(state: Path) -> dict[str, tuple[str, int | None]]:
    """Each stage's saved launch (status, pid)."""
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT stage, status, pid FROM launches").fetchall()
    return {stage: (status, pid) for stage, status, pid in rows}


def wait_gone(pid: int, timeout: float = WAIT) -> None:
    """Wait (on a pidfd) until process ``pid``, not the test's child, has ended."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        assert readable, f"process {pid} still running after {timeout} s"
    finally:
        os.close(pidfd)


def alive(pid: int) -> bool:
    return identity_of(pid, running=True) is not None


def start(address: str, tmp_path: Path, yaml: str) -> uuid.UUID:
    definition = tmp_path / f"pipeline-{uuid.uuid4().hex[:8]}.yaml"
    definition.write_text(yaml)
    with PlatformClient(address) as client:
        job_id = client.create_job(client.create_pipeline(definition), "restart", [])
        client.start_job(job_id)
    return job_id


def status(address: str, job_id: uuid.UUID) -> JobStatus:
    with PlatformClient(address) as client:
        return client.job_status(job_id)


def test_a_graceful_stop_leaves_the_operators_running_and_the_restart_completes_the_job(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address = serve.start()
    job_id = start(
        address,
        tmp_path,
        pipeline_yaml(control.address, [("first", None, "go"), ("second", "first", "succeed")]),
    )
    control.wait_event("first", "execute")
    control.wait_event("second", "waiting_for_inputs")
    pids = control.pids()

    assert serve.stop() == 0  # SIGTERM: the documented way to stop it
    assert "operators left running" in " ".join(serve.output())
    assert all(alive(pid) for pid in pids), "a graceful stop must not end the operators"
    assert {s for s, (state, _) in stage_rows(serve.state).items() if state == "ready"} == {"first"}

    assert serve.start() == address
    assert "adopted its process" in serve.log_path.read_text()
    control.send("first", "go")  # it worked through the outage; it reports to the new server
    assert control.wait_event("second", "result")["outcome"] == "succeeded"
    job = status(address, job_id)
    assert (job.state, job.status) == ("STOPPED", "HEALTHY")
    for pid in pids:
        wait_gone(pid)


def test_an_operator_that_dies_while_the_platform_is_down_fails_its_stage_saying_so(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address = serve.start()
    job_id = start(
        address,
        tmp_path,
        pipeline_yaml(control.address, [("first", None, "go"), ("second", "first", "succeed")]),
    )
    first = control.wait_event("first", "hello")["pid"]
    control.wait_event("first", "execute")
    control.wait_event("second", "waiting_for_inputs")

    serve.kill()  # a crash: no shutdown code runs
    os.kill(first, signal.SIGKILL)  # it dies without reporting (and without an outbox record)
    wait_gone(first)

    serve.start()
    stages = stage_rows(serve.state)
    state, message = stages["first"]
    assert state == "failed"
    assert "ended while the platform was down" in message and "exit code unknown" in message
    assert stages["second"] == ("cancelled", "upstream stage first failed")
    job = status(address, job_id)
    assert (job.state, job.status) == ("STOPPED", "FAULTED")
    # The downstream operator, adopted, hears the cancel and ends.
    assert control.wait_event("second", "result")["outcome"] == "cancelled"


def test_an_outcome_left_in_the_outbox_during_the_outage_is_applied_on_restart(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address = serve.start()
    job_id = start(
        address,
        tmp_path,
        pipeline_yaml(
            control.address,
            [("first", None, "go"), ("second", "first", "succeed")],
            {"first": {"RELIABILITY_REPORT": "2"}},  # its report budget: shorter than the outage
        ),
    )
    control.wait_event("first", "execute")
    control.wait_event("second", "waiting_for_inputs")

    serve.kill()
    control.send("first", "go")  # it succeeds, cannot report, writes its outbox, exits
    result = control.wait_event("first", "result")
    assert result["outcome"] == "succeeded" and not result["reported"]
    control.wait_event("first", "exit")

    serve.start()
    first_state, first_message = stage_rows(serve.state)["first"]
    assert (first_state, first_message) == ("succeeded", "all callbacks succeeded")
    assert control.wait_event("second", "result")["outcome"] == "succeeded"
    job = status(address, job_id)
    assert (job.state, job.status) == ("STOPPED", "HEALTHY")


@pytest.mark.slow
def test_an_adopted_stage_past_its_timeout_is_timed_out_and_its_process_stopped(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    yaml = pipeline_yaml(control.address, [("first", None, "hang"), ("second", "first", "succeed")])
    yaml = yaml.replace("- name: first\n", "- name: first\n  timeout: 1\n")
    address = serve.start()
    job_id = start(address, tmp_path, yaml)
    first = control.wait_event("first", "hello")["pid"]
    # Frozen (its driver may have begun, or not): it can neither report nor time itself out.
    os.kill(first, signal.SIGSTOP)
    try:
        control.wait_event("second", "waiting_for_inputs")
        serve.kill()
        serve.start()
        # 1 s past its inputs plus the runner's 20 s grace, the new server times it out;
        # the witness downstream hears of it as its own cancellation.
        witness = control.wait_event("second", "result", timeout=WAIT + 20)
        assert witness["outcome"] == "cancelled"
        state, message = stage_rows(serve.state)["first"]
        assert state == "timed_out" and "ran past its timeout of 0:00:01" in message
    finally:
        os.kill(first, signal.SIGCONT)  # the SIGTERM the supervisor sent is delivered now
    wait_gone(first)
    # Whatever its driver said once it could run again did not change the server's verdict.
    state, message = stage_rows(serve.state)["first"]
    assert state == "timed_out" and "process stopped" in message
    job = status(address, job_id)
    assert (job.state, job.status) == ("STOPPED", "FAULTED")


def test_a_recorded_pid_now_used_by_another_process_is_not_adopted(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address = serve.start()
    start(address, tmp_path, pipeline_yaml(control.address, [("only", None, "go")]))
    only = control.wait_event("only", "hello")["pid"]
    control.wait_event("only", "execute")
    serve.kill()
    os.kill(only, signal.SIGKILL)
    wait_gone(only)
    # Another process now has the recorded pid (faked: the record is pointed at it, with
    # the start time its pid had before: what a reused pid looks like).
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        identity = identity_of(stranger.pid)
        assert identity is not None
        with sqlite3.connect(serve.state) as db:
            db.execute(
                "UPDATE launches SET pid = ?, start_ticks = ? WHERE stage = 'only'",
                (stranger.pid, identity.start_ticks - 1),
            )
        serve.start()
        state, message = stage_rows(serve.state)["only"]
        assert state == "failed" and "ended while the platform was down" in message
        assert stranger.poll() is None  # not adopted, not signalled
        assert "adopted" not in serve.log_path.read_text()
    finally:
        stranger.kill()
        stranger.wait(WAIT)


@pytest.fixture
def in_memory(tmp_path: Path) -> Iterator[ServerProcess]:
    """A ``clara-mock serve`` without a state file (not started yet); killed at teardown."""
    server = ServerProcess(None, tmp_path)
    try:
        yield server
    finally:
        server.kill()


def test_sigterm_without_a_state_file_cancels_running_jobs_cleanly_before_exiting(
    tmp_path: Path, in_memory: ServerProcess, control: ControlServer
) -> None:
    marker = tmp_path / "cleanup-ran"
    address = in_memory.start()
    start(
        address,
        tmp_path,
        pipeline_yaml(
            control.address,
            [("first", None, "go"), ("second", "first", "succeed")],
            {"first": {"RELIABILITY_CLEANUP_MARKER": str(marker)}},
        ),
    )
    pids = [control.wait_event(stage, "hello")["pid"] for stage in ("first", "second")]
    control.wait_event("first", "execute")
    control.wait_event("second", "waiting_for_inputs")

    assert in_memory.stop() == 0  # SIGTERM; returns once the server exited
    output = " ".join(in_memory.output())
    assert "cancelled 1 running job(s)" in output and "killing" not in output
    # Each driver heard the cancel, ran its cleanup and reported CANCELLED before the end.
    assert marker.read_text() == "cleaned up"
    for stage in ("first", "second"):
        assert control.wait_event(stage, "result")["outcome"] == "cancelled"
        assert "cleanup" in control.events(stage)
    for pid in pids:
        wait_gone(pid)


def test_serve_with_the_sandbox_runner_restarts_and_completes_the_job(tmp_path: Path) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    # Its own control channel: the pids sandboxed operators report are their namespace's,
    # not the host's, so the shared fixture's teardown must not signal them.
    control = ControlServer()
    server = ServerProcess(tmp_path / "state.db", tmp_path, runner="sandbox")
    keepers: list[int] = []
    try:
        address = server.start()
        job_id = start(
            address,
            tmp_path,
            pipeline_yaml(control.address, [("first", None, "go"), ("second", "first", "succeed")]),
        )
        control.wait_event("first", "execute")
        control.wait_event("second", "waiting_for_inputs")
        assert server.stop() == 0
        assert server.state is not None
        keepers += [pid for _, pid in launch_rows(server.state).values() if pid is not None]
        assert len(keepers) == 2 and all(alive(pid) for pid in keepers)  # the sandboxes outlive it
        server.start()
        assert server.log_path.read_text().count("adopted its process") == 2
        control.send("first", "go")
        assert control.wait_event("second", "result")["outcome"] == "succeeded"
        job = status(address, job_id)
        assert (job.state, job.status) == ("STOPPED", "HEALTHY")
        for pid in keepers:
            wait_gone(pid)
    finally:
        server.kill()
        for pid in keepers:
            OperatorSignals(pid, sandboxed=True).kill()  # the whole sandbox, if still there
        control.close()
