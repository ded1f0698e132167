"""4. The mock's state survives a restart of ``clara-mock serve --state PATH`` (SIGKILL)."""

from __future__ import annotations

import io
import json
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
import zipfile
from pathlib import Path

import grpc
import pytest
from _faults import ROOT, WAIT, ControlServer, ServerProcess, pipeline_yaml

from server_mock import JobState, MockPlatform, StageSpec
from server_mock._client import PlatformApiError, PlatformClient
from server_mock._errors import ErrorCode
from server_mock._models import CatalogKind
from server_mock._persistence import StateStore, StateStoreError
from server_mock._proto.nvidia.clara.platform import (
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    payloads_pb2,
    pipelines_pb2,
    pipelines_pb2_grpc,
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
        (tmp_path / "files").mkdir()
        (tmp_path / "files" / "scan.raw").write_bytes(b"x")
        # Payloads.Details answers one message per file: none would carry the metadata.
        assert client.upload_folder(payload, tmp_path / "files") == 1
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


def zipped_model(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}/config.pbtxt", f"name: '{name}'")
    return buffer.getvalue()


def test_models_catalogs_and_instances_survive_a_kill(tmp_path: Path, serve: ServerProcess) -> None:
    content = zipped_model("liver")
    address = serve.start()
    with grpc.insecure_channel(address) as channel:
        models = models_pb2_grpc.ModelsStub(channel)
        uploaded = models.UploadModel(
            iter(
                [
                    models_pb2.ModelsUploadModelRequest(
                        details=models_pb2.ModelDetails(
                            name="liver", type=models_pb2.MODEL_TYPE_TENSOR_RT
                        ),
                        data=content,
                    )
                ]
            ),
            timeout=WAIT,
        )
        assert uploaded.header.code == 0, uploaded.header.messages
        model = uploaded.details.model_id
        added = models.AddMetadata(
            models_pb2.ModelsAddMetadataRequest(model_id=model, metadata={"organ": "liver"}),
            timeout=WAIT,
        )
        assert added.header.code == 0
        catalog = models.CreateCatalog(models_pb2.ModelsCreateCatalogRequest(), timeout=WAIT)
        instance = models.CreateInstance(models_pb2.ModelsCreateInstanceRequest(), timeout=WAIT)
        assert (
            models.UpdateCatalog(
                iter(
                    [
                        models_pb2.ModelsUpdateCatalogRequest(
                            catalog_id=catalog.catalog_id, model_ids=[model]
                        )
                    ]
                ),
                timeout=WAIT,
            ).header.code
            == 0
        )

    serve.kill()
    address = serve.start()

    with grpc.insecure_channel(address) as channel:
        models = models_pb2_grpc.ModelsStub(channel)
        [listed] = list(models.ListModels(models_pb2.ModelsListModelsRequest(), timeout=WAIT))
        [details] = listed.models
        assert (details.model_id, details.name, details.type) == (
            model,
            "liver",
            models_pb2.MODEL_TYPE_TENSOR_RT,
        )
        assert dict(details.metadata) == {"organ": "liver"}
        downloaded = list(
            models.DownloadModel(
                models_pb2.ModelsDownloadModelRequest(model_id=model), timeout=WAIT
            )
        )
        assert b"".join(m.data for m in downloaded) == content
        [catalogs] = list(models.ListCatalogs(models_pb2.ModelsListCatalogsRequest(), timeout=WAIT))
        assert [(c.catalog_id, [m.name for m in c.models]) for c in catalogs.catalogs] == [
            (catalog.catalog_id, ["liver"])
        ]
        [instances] = list(
            models.ListInstances(models_pb2.ModelsListInstancesRequest(), timeout=WAIT)
        )
        assert [c.catalog_id for c in instances.instances] == [instance.instance_id]
    assert serve.stop() == 0


def test_a_version_1_state_file_is_migrated(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with MockPlatform(state_path=state) as platform:
        kept = platform.create_job([StageSpec("only")], name="from-v1")
    # What version 1 wrote: the same tables, without the model repository's and launches.
    with sqlite3.connect(state) as db:
        db.execute("DROP TABLE models")
        db.execute("DROP TABLE model_catalogs")
        db.execute("DROP TABLE launches")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with MockPlatform(state_path=state) as platform:
        assert platform.job(kept).name == "from-v1"
        assert platform.call(platform.state.models.all) == []
        catalog = platform.call(lambda: platform.state.models.create_catalog(CatalogKind.CATALOG))
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
        assert db.execute("SELECT catalog_id FROM model_catalogs").fetchall() == [
            (catalog.catalog_id.hex,)
        ]


def test_a_version_2_state_file_is_migrated_and_its_running_stages_count_as_launched(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    definition = "api-version: 0.4.0\nname: p\noperators:\n- name: a\n  container: {image: x}\n"
    with MockPlatform(state_path=state) as platform:
        pipeline = platform.create_pipeline(definition)
        running = platform.create_pipeline_job(pipeline, "running")
        platform.start_job(running.job_id)  # the in-process launcher: the job runs
        created = platform.create_pipeline_job(pipeline, "created")
    # What version 2 wrote: every table but launches.
    with sqlite3.connect(state) as db:
        db.execute("DROP TABLE launches")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    StateStore(state).close()
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
        rows = db.execute("SELECT job_id, stage, status, pid FROM launches").fetchall()
    # The running job's stage was launched by that mock (as a process it did not record):
    # a restart must neither launch it again nor fail it; the created job's was never launched.
    assert rows == [(running.job_id.hex, "a", "launched", None)]
    with MockPlatform(state_path=state) as platform:
        assert platform.job(running.job_id).state is JobState.RUNNING
        assert platform.job(created.job_id).state is JobState.CREATED


def test_a_newer_state_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    StateStore(state).close()
    with sqlite3.connect(state) as db:
        db.execute("DROP TABLE models")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    with pytest.raises(StateStoreError, match=r"schema version 4; this mock reads version 3"):
        StateStore(state)
    with sqlite3.connect(state) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "models" not in tables  # nothing was created in a file the mock cannot read


@pytest.mark.slow
def test_a_write_the_state_file_refuses_is_the_documented_store_error(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    definition = pipelines_pb2.PipelineDefinitionFile(
        content="api-version: 0.4.0\nname: p\noperators:\n- name: a\n  container: {image: x}\n"
    )
    with (
        MockPlatform(state_path=state) as platform,
        grpc.insecure_channel(platform.address) as channel,
    ):
        pipelines = pipelines_pb2_grpc.PipelinesStub(channel)
        jobs = jobs_pb2_grpc.JobsStub(channel)
        created = pipelines.Create(
            iter([pipelines_pb2.PipelinesCreateRequest(definition=definition)])
        )
        job = jobs.Create(
            jobs_pb2.JobsCreateRequest(
                pipeline_id=created.pipeline_id, name="j", metadata={"a": "1"}
            )
        )
        assert job.header.code == 0
        # Another process holds the file's write lock (SQLite gives up after its busy timeout).
        holder = sqlite3.connect(state, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            refused = pipelines.Create(
                iter([pipelines_pb2.PipelinesCreateRequest(definition=definition)]), timeout=WAIT
            )
            assert refused.header.code == ErrorCode.PIPELINE_STORE_ERROR == -0x1002
            assert "could not save the change" in refused.header.messages[0]
            edited = jobs.AddMetadata(
                jobs_pb2.JobsAddMetadataRequest(job_id=job.job_id, metadata={"b": "2"}),
                timeout=WAIT,
            )
            assert edited.header.code == ErrorCode.JOB_STORE_ERROR == -0x2002
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert platform.call(lambda: len(platform.state.pipelines.all())) == 1
        status = jobs.Status(jobs_pb2.JobsStatusRequest(job_id=job.job_id), timeout=WAIT)
        assert dict(status.metadata) == {"a": "1"}  # the refused edit was undone in memory too
