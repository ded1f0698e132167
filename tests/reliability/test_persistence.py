"""4. The mock's state survives a restart of ``clara-mock serve --state PATH`` (SIGKILL)."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from _faults import ROOT, WAIT, ControlServer, ServerProcess, pipeline_yaml

from server_mock import MockPlatform, StageSpec
from server_mock._client import PlatformApiError, PlatformClient
from server_mock._persistence import StateStore
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    jobs_pb2,
    payloads_pb2,
    pipelines_pb2,
)


def write_pipeline(folder: Path, control: ControlServer) -> Path:
    path = folder / f"pipeline-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(pipeline_yaml(control.address, [("only", None, "succeed")]))
    return path


def remove_pipeline(client: PlatformClient, pipeline_id: uuid.UUID) -> None:
    request = pipelines_pb2.PipelinesRemoveRequest(
        pipeline_id=common_pb2.Identifier(value=pipeline_id.hex)
    )
    response = client._pipelines.Remove(request, timeout=WAIT)
    assert response.header.code >= 0


def test_pipelines_payloads_jobs_and_stages_survive_a_kill(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    inputs = tmp_path / "inputs"
    (inputs / "scans").mkdir(parents=True)
    (inputs / "scans" / "ct.raw").write_bytes(bytes(range(256)) * 64)
    (inputs / "notes.txt").write_text("hello")

    address = serve.start()
    with PlatformClient(address) as client:
        kept = client.create_pipeline(write_pipeline(tmp_path, control))
        removed = client.create_pipeline(write_pipeline(tmp_path, control))
        remove_pipeline(client, removed)
        payload = client.create_payload()
        assert client.upload_folder(payload, inputs) == 2
        # A job that runs to its end before the crash (its operator reports, then says so) ...
        ran = client.create_job(kept, "ran", [payload])
        client.start_job(ran)
        assert control.wait_event("only", "result")["outcome"] == "succeeded"
        # ... one that is created but not started, and one that is cancelled.
        waiting = client.create_job(kept, "waiting", [payload])
        cancelled = client.create_job(kept, "cancelled", [payload])
        client.cancel_job(cancelled, "not needed")

    serve.kill()  # SIGKILL: no shutdown code runs
    assert serve.start() == address  # the same port, the same state file

    with PlatformClient(address) as client:
        assert [uuid.UUID(p.pipeline_id.value) for p in client.list_pipelines()] == [kept]
        assert sorted(client.payload_files(payload)) == ["notes.txt", "scans/ct.raw"]
        client.download(payload, "scans/ct.raw", tmp_path / "ct.raw")
        assert (tmp_path / "ct.raw").read_bytes() == (inputs / "scans" / "ct.raw").read_bytes()
        listed = {uuid.UUID(j.job_id.value) for j in client.list_jobs()}
        assert listed == {ran, waiting, cancelled}
        status = client.job_status(ran)
        assert (status.state, status.status) == ("STOPPED", "HEALTHY")
        assert [o.status for o in status.operators] == ["COMPLETED"]
        assert client.job_status(waiting).state == "PENDING"
        assert client.job_status(cancelled).status == "CANCELED"
        # The created job still starts: its record (definition, payload, inputs) came back
        # too. The restarted server launches its operator, which copies the inputs in.
        client.start_job(waiting)
        control.wait_count("only", "result", 2)
        status = client.job_status(waiting)
        assert (status.state, status.status) == ("STOPPED", "HEALTHY")
        files = client.payload_files(status.payload_id)
        assert "input/scans/ct.raw" in files
    assert serve.stop() == 0
    # The payload files live next to the state file, which only its owner can read (it holds
    # the stage tokens of running jobs).
    assert (tmp_path / "state.db.workspace" / "payloads" / payload.hex / "notes.txt").is_file()
    assert stat.S_IMODE(serve.state.stat().st_mode) == 0o600
    with sqlite3.connect(serve.state) as db:
        rows = db.execute(
            "SELECT jobs.name, stages.state, stages.reports_applied FROM stages "
            "JOIN jobs USING (job_id) ORDER BY jobs.name"
        ).fetchall()
        specs = [json.loads(row[0]) for row in db.execute("SELECT spec FROM stages")]
    assert rows == [
        ("cancelled", "cancelled", 0),
        ("ran", "succeeded", 1),
        ("waiting", "succeeded", 1),
    ]
    # The paths the definition declares are kept with each stage (the last field of an entry).
    assert {(spec["inputs"][0][-1], spec["outputs"][0][-1]) for spec in specs} == {
        ("/input", "/output")
    }


def test_acknowledged_writes_survive_a_crash_in_the_middle_of_writing(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    definition = write_pipeline(tmp_path, control)
    address = serve.start()
    acknowledged: list[uuid.UUID] = []
    enough = threading.Event()

    def write_until_it_fails() -> None:
        with PlatformClient(address) as client:
            try:
                while True:
                    acknowledged.append(client.create_pipeline(definition))
                    if len(acknowledged) == 40:
                        enough.set()
            except PlatformApiError:
                pass  # the server died under us
            finally:
                enough.set()

    writer = threading.Thread(target=write_until_it_fails, name="writer")
    writer.start()
    try:
        assert enough.wait(WAIT)
        serve.kill()  # while the writer keeps writing
    finally:
        writer.join(WAIT)
    assert not writer.is_alive()

    serve.start()
    with PlatformClient(address) as client:
        stored = {uuid.UUID(p.pipeline_id.value) for p in client.list_pipelines()}
    assert len(acknowledged) >= 40
    assert set(acknowledged) <= stored  # nothing acknowledged is lost
    assert len(stored - set(acknowledged)) <= 1  # at most the one in flight at the kill
    assert serve.stop() == 0
    with sqlite3.connect(serve.state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_in_memory_is_the_default(tmp_path: Path) -> None:
    with MockPlatform(workspace=tmp_path) as platform:
        job_id = platform.create_job([StageSpec("only")])
    with MockPlatform(workspace=tmp_path) as platform, pytest.raises(LookupError):
        platform.job(job_id)
    assert not list(tmp_path.rglob("*.db*"))


def test_an_unusable_state_file_is_refused_clearly(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    StateStore(state).close()
    with sqlite3.connect(state) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema'")
    result = subprocess.run(
        [sys.executable, "-m", "server_mock", "serve", "--port", "0", "--state", str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 2
    assert "schema version 999" in result.stderr


def test_a_failed_request_rolls_back_every_write_it_made(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        with pytest.raises(ZeroDivisionError), store.transaction():
            with store.transaction():  # nested: joins the outer transaction
                store._db.execute("INSERT INTO meta (key, value) VALUES ('probe', 'x')")
            _ = 1 / 0
        assert store._db.execute("SELECT * FROM meta WHERE key = 'probe'").fetchone() is None
    finally:
        store.close()


def test_acknowledged_metadata_edits_survive_a_kill(
    tmp_path: Path, serve: ServerProcess, control: ControlServer
) -> None:
    address = serve.start()
    with PlatformClient(address) as client:
        pipeline = client.create_pipeline(write_pipeline(tmp_path, control))
        payload = client.create_payload()
        job = client.create_job(pipeline, "tagged", [])
        pipeline_ref = common_pb2.Identifier(value=pipeline.hex)
        payload_ref = common_pb2.Identifier(value=payload.hex)
        job_ref = common_pb2.Identifier(value=job.hex)
        edits = [
            client._pipelines.AddMetadata(
                pipelines_pb2.PipelinesAddMetadataRequest(
                    pipeline_id=pipeline_ref, metadata={"owner": "radiology", "tmp": "x"}
                ),
                timeout=WAIT,
            ),
            client._pipelines.RemoveMetadata(
                pipelines_pb2.PipelinesRemoveMetadataRequest(
                    pipeline_id=pipeline_ref, keys=["tmp"]
                ),
                timeout=WAIT,
            ),
            client._payloads.AddMetadata(
                payloads_pb2.PayloadsAddMetadataRequest(
                    payload_id=payload_ref, metadata={"study": "ct-1"}
                ),
                timeout=WAIT,
            ),
            client._jobs.AddMetadata(
                jobs_pb2.JobsAddMetadataRequest(job_id=job_ref, metadata={"ticket": "42"}),
                timeout=WAIT,
            ),
        ]
        assert all(edit.header.code >= 0 for edit in edits)

    serve.kill()  # acknowledged above: no later write may be needed to keep them
    assert serve.start() == address

    with PlatformClient(address) as client:
        (listed,) = client.list_pipelines()
        assert dict(listed.metadata) == {"owner": "radiology"}
        details = client._payloads.Details(
            payloads_pb2.PayloadsDetailsRequest(payload_id=payload_ref), timeout=WAIT
        )
        assert dict(next(iter(details)).metadata) == {"study": "ct-1"}
        (job_details,) = client.list_jobs()
        assert dict(job_details.metadata) == {"ticket": "42"}
    assert serve.stop() == 0
