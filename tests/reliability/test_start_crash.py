"""12. A crash at any step of Jobs.Start never leaves a job Running with nothing to end it.

A real ``clara-mock serve --state`` process is killed (SIGKILL, by itself: a failpoint,
``CLARA_MOCK_FAILPOINTS``) at each step of Jobs.Start in turn, for each of the job's two
operators where the step is per operator; then it is restarted without failpoints. The job
must then end, within a bound: Healthy, or Faulted with a message per failed stage that says
what happened. A job the crash left not started (still Pending) is started again, as a client
whose Start call failed would do, and must complete.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from _faults import ControlServer, ServerProcess, pipeline_yaml

from server_mock._client import JobStatus, PlatformApiError, PlatformClient
from server_mock._failpoints import ENV_FAILPOINTS, START_FAILPOINTS

MID_SPAWN = "the platform stopped while launching its operator process"
UPSTREAM = "upstream stage first failed"
# Each crash, and what the restart makes of the job: a stage whose launch was recorded but
# not its process cannot be known and fails (its dependant is cancelled); everything else is
# adopted, or launched because it never was, and completes.
CRASHES = [
    ("start.inputs_copied", {}),
    ("start.job_running", {}),
    ("start.launch_recording@1", {}),
    ("start.launch_recorded@1", {"first": MID_SPAWN, "second": UPSTREAM}),
    ("start.spawned@1", {"first": MID_SPAWN, "second": UPSTREAM}),
    ("start.pid_recorded@1", {}),
    ("start.launch_recording@2", {}),
    ("start.launch_recorded@2", {"second": MID_SPAWN}),
    ("start.spawned@2", {"second": MID_SPAWN}),
    ("start.pid_recorded@2", {}),
    ("start.launched", {}),
]


def stage_messages(state: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT name, state, message FROM stages").fetchall()
    return {name: (state_, message) for name, state_, message in rows}


def wait_until_ended(
    client: PlatformClient, control: ControlServer, job_id: uuid.UUID
) -> JobStatus:
    """The job once it ended: re-read after each message from an operator (bounded)."""
    seen = len(control.messages)
    while True:
        job = client.job_status(job_id)
        if job.state == "STOPPED":
            return job
        # Only an operator's report ends a stage here; each is followed by its "result".
        seen = control.wait_beyond(seen)


def test_every_failpoint_of_start_is_placed_and_crashed_at() -> None:
    assert len(set(START_FAILPOINTS)) == len(START_FAILPOINTS)
    source = "".join(
        (Path(__file__).resolve().parents[2] / "server_mock" / module).read_text()
        for module in ("_platform_state.py", "_runner.py")
    )
    assert {name for name in START_FAILPOINTS if f'failpoint("{name}")' in source} == set(
        START_FAILPOINTS
    )
    assert {crash.split("@")[0] for crash, _ in CRASHES} == set(START_FAILPOINTS)


@pytest.mark.slow
@pytest.mark.parametrize(("crash", "failures"), CRASHES, ids=[crash for crash, _ in CRASHES])
def test_a_crash_at_each_step_of_start_leaves_no_job_stuck(
    tmp_path: Path,
    serve: ServerProcess,
    control: ControlServer,
    crash: str,
    failures: dict[str, str],
) -> None:
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(
        pipeline_yaml(control.address, [("first", None, "succeed"), ("second", "first", "succeed")])
    )
    address = serve.start({ENV_FAILPOINTS: crash})
    with PlatformClient(address) as client:
        job_id = client.create_job(client.create_pipeline(definition), "crash", [])
        with pytest.raises(PlatformApiError):
            client.start_job(job_id)  # the server dies answering it
    assert serve.wait_exit() == -9
    assert f"failpoint {crash.split('@', maxsplit=1)[0]} reached" in serve.log_path.read_text()

    serve.start()
    with PlatformClient(address) as client:
        job = client.job_status(job_id)
        if job.state == "PENDING":  # the crash came before the job ran: Start it again
            assert crash == "start.inputs_copied"
            client.start_job(job_id)
        job = wait_until_ended(client, control, job_id)
    assert serve.state is not None
    stages = stage_messages(serve.state)
    assert job.status == ("FAULTED" if failures else "HEALTHY"), (job, stages)
    for name, (state, message) in stages.items():
        if name in failures:
            assert state in ("failed", "cancelled") and failures[name] in message, stages
        else:
            assert state == "succeeded", stages


def test_a_stage_never_launched_that_a_restart_cannot_launch_fails_saying_why(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(pipeline_yaml(control.address, [("only", None, "succeed")]))
    address = serve.start({ENV_FAILPOINTS: "start.job_running"})  # Running, nothing launched
    with PlatformClient(address) as client:
        job_id = client.create_job(client.create_pipeline(definition), "crash", [])
        with pytest.raises(PlatformApiError):
            client.start_job(job_id)
    assert serve.wait_exit() == -9
    # Restarted where the operator's program is not: the process runner will not run it.
    serve.operators_dir = tmp_path / "empty"
    serve.operators_dir.mkdir()
    serve.start()
    with PlatformClient(address) as client:
        job = client.job_status(job_id)
    assert (job.state, job.status) == ("STOPPED", "FAULTED")
    assert serve.state is not None
    state, message = stage_messages(serve.state)["only"]
    assert state == "failed"
    assert message.startswith(
        "never launched before the platform stopped, and cannot be launched after its restart: "
        "operator 'only'"
    ), message
    assert control.messages == []  # nothing was launched, before or after
