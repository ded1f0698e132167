"""2. The signal stream breaks while a stage waits for its inputs: the server process is
killed and restarted with its state file; what happened in the gap is not lost.

The gap is made certain, not hoped for: the waiting operator is frozen (SIGSTOP) from the
kill until the event happened on the restarted server, so its driver can only learn of the
event from the first message of the re-opened stream (the stream is level-triggered).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid
from pathlib import Path

from _faults import ControlServer, ServerProcess, pipeline_yaml

from server_mock._client import PlatformClient


def start_two_stage_job(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> tuple[str, uuid.UUID]:
    """``first`` (executes until told "go") -> ``second`` (waits for its inputs)."""
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(
        pipeline_yaml(control.address, [("first", None, "go"), ("second", "first", "succeed")])
    )
    address = serve.start()
    with PlatformClient(address) as client:
        job_id = client.create_job(client.create_pipeline(definition), "gap", [])
        client.start_job(job_id)
    control.wait_event("first", "execute")
    control.wait_event("second", "waiting_for_inputs")
    return address, job_id


def reports_applied(state: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT name, state, reports_applied FROM stages").fetchall()
    return {name: (state_, applied) for name, state_, applied in rows}


def test_inputs_ready_during_the_gap_is_not_lost(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address, job_id = start_two_stage_job(tmp_path, serve, control)
    second = control.wait_event("second", "hello")["pid"]

    serve.kill()  # every stream breaks
    os.kill(second, signal.SIGSTOP)  # "second" cannot re-open its stream until we say so
    try:
        assert serve.start() == address
        # "first" finishes on the restarted server: its report is retried (same report id)
        # until the new server takes it; "second" becomes ready while it has no stream.
        control.send("first", "go")
        first = control.wait_event("first", "result")
        assert first["outcome"] == "succeeded" and first["reported"]
    finally:
        os.kill(second, signal.SIGCONT)

    result = control.wait_event("second", "result")
    assert result["outcome"] == "succeeded" and result["reported"], control.messages
    events = control.events("second")
    assert "stream_reconnecting" in events
    assert events.index("stream_reconnecting") < events.index("inputs_ready")
    assert events.index("inputs_ready") < events.index("execute_started")
    assert "execute" in events
    control.wait_event("second", "exit")
    with PlatformClient(address) as client:
        status = client.job_status(job_id)
    assert (status.state, status.status) == ("STOPPED", "HEALTHY")
    assert serve.stop() == 0
    assert reports_applied(serve.state) == {
        "first": ("succeeded", 1),
        "second": ("succeeded", 1),
    }


def test_cancel_during_the_gap_is_not_lost(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address, job_id = start_two_stage_job(tmp_path, serve, control)
    second = control.wait_event("second", "hello")["pid"]

    serve.kill()
    os.kill(second, signal.SIGSTOP)
    try:
        assert serve.start() == address
        with PlatformClient(address) as client:
            client.cancel_job(job_id, "cancelled while the stream was down")
    finally:
        os.kill(second, signal.SIGCONT)

    result = control.wait_event("second", "result")
    assert result["outcome"] == "cancelled" and result["reported"], control.messages
    assert "cancelled while the stream was down" in result["message"]
    events = control.events("second")
    assert "stream_reconnecting" in events
    assert "execute" not in events
    assert "cleanup" in events
    # The executing upstream stage hears of the cancel too, and cleans up.
    first = control.wait_event("first", "result")
    assert first["outcome"] == "cancelled"
    assert "cleanup" in control.events("first")
    control.wait_event("second", "exit")
    control.wait_event("first", "exit")
    with PlatformClient(address) as client:
        assert client.job_status(job_id).status == "CANCELED"
    assert serve.stop() == 0
    assert reports_applied(serve.state) == {
        "first": ("cancelled", 0),
        "second": ("cancelled", 0),
    }
