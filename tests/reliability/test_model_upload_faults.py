"""14. A model upload cut short, or a crash mid-commit, leaves no temporary folder, no half model.

Each test streams a model upload into a real ``clara-mock serve --state`` process. The
uploads cut short send a *complete*, valid archive and then keep their stream open, so a
server that took the end of the request stream for its completion would store the model:
the server is SIGKILLed (the restarted server removes the leftover), the client cancels, the
client process is SIGKILLed, or the server is stopped with SIGTERM. The crash tests kill the
server (a failpoint, ``CLARA_MOCK_FAILPOINTS``) at each step of storing a model, replacing
one or creating one; after the restart the model is the old one or the new one, complete,
never missing. Tests wait on the server's own log lines, never on a sleep.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _faults import ROOT, WAIT, HeldOpenUpload, ServerProcess

from server_mock._errors import ErrorCode
from server_mock._failpoints import ENV_FAILPOINTS, MODEL_COMMIT_FAILPOINTS
from server_mock._persistence import default_workspace
from server_mock._proto.nvidia.clara.platform import common_pb2, models_pb2, models_pb2_grpc

CHUNK = 64 * 1024
Upload = models_pb2.ModelsUploadModelRequest
Listed = list[tuple[str, str, int, dict[str, str]]]  # (id, name, type, metadata) per model

# A client in its own process: streams the archive in the file argv[3] as the model argv[2],
# says so, then waits on stdin for ever, its stream still open (the test SIGKILLs it).
CLIENT = f"""
import sys, grpc
from pathlib import Path
from server_mock._proto.nvidia.clara.platform import models_pb2, models_pb2_grpc
address, name, archive = sys.argv[1:4]
data = Path(archive).read_bytes()
def chunks():
    for start in range(0, len(data), {CHUNK}):
        yield models_pb2.ModelsUploadModelRequest(
            details=models_pb2.ModelDetails(name=name), data=data[start : start + {CHUNK}]
        )
    print("sent", flush=True)
    sys.stdin.readline()
with grpc.insecure_channel(address) as channel:
    models_pb2_grpc.ModelsStub(channel).UploadModel(chunks())
"""


def archive(version: str, padding: int = 0) -> bytes:
    """A model folder zipped; ``padding`` incompressible-ish bytes make it span chunks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("liver/config.pbtxt", "name: 'liver'")
        zipped.writestr("liver/1/model.txt", f"version {version}")
        if padding:
            zipped.writestr("liver/1/weights.bin", bytes(range(256)) * (padding // 256))
    return buffer.getvalue()


def requests(
    name: str, data: bytes, metadata: dict[str, str] | None = None, kind: int = 0
) -> Iterator[models_pb2.ModelsUploadModelRequest]:
    details = models_pb2.ModelDetails(name=name, type=kind, metadata=metadata or {})
    for start in range(0, max(len(data), 1), CHUNK):
        yield Upload(details=details, data=data[start : start + CHUNK])


def upload(
    address: str, name: str, data: bytes, metadata: dict[str, str] | None = None, kind: int = 0
) -> common_pb2.Identifier:
    with grpc.insecure_channel(address) as channel:
        answer = models_pb2_grpc.ModelsStub(channel).UploadModel(
            requests(name, data, metadata, kind), timeout=WAIT
        )
    assert answer.header.code == 0, answer.header
    return answer.details.model_id


def models(address: str) -> Listed:
    """Every model as (id, name, type, metadata)."""
    with grpc.insecure_channel(address) as channel:
        answers = models_pb2_grpc.ModelsStub(channel).ListModels(
            models_pb2.ModelsListModelsRequest(), timeout=WAIT
        )
        return [
            (m.model_id.value, m.name, m.type, dict(m.metadata))
            for answer in answers
            for m in answer.models
        ]


def download(address: str, model_id: common_pb2.Identifier) -> bytes:
    with grpc.insecure_channel(address) as channel:
        answers = models_pb2_grpc.ModelsStub(channel).DownloadModel(
            models_pb2.ModelsDownloadModelRequest(model_id=model_id), timeout=WAIT
        )
        return b"".join(answer.data for answer in answers)


def model_folders(serve: ServerProcess) -> tuple[list[str], list[Path]]:
    """The model folders in the workspace, and what is left in ``models/.uploads/``."""
    assert serve.state is not None
    root = default_workspace(serve.state) / "models"
    folders = sorted(p.name for p in root.iterdir() if p.name != ".uploads")
    uploads = root / ".uploads"
    return folders, sorted(uploads.iterdir()) if uploads.is_dir() else []


def held_upload(address: str, name: str, data: bytes) -> HeldOpenUpload:
    """An upload of a whole archive as ``name`` whose stream stays open until released."""
    return HeldOpenUpload(
        address, lambda c: models_pb2_grpc.ModelsStub(c).UploadModel, requests(name, data)
    )


def start_with_model(serve: ServerProcess) -> tuple[str, Listed]:
    """Start ``serve``, store the model ``kept``; return the address and the model list."""
    address = serve.start()
    upload(address, "kept", archive("kept"), {"role": "kept"})
    listed = models(address)
    assert [name for _, name, _, _ in listed] == ["kept"]
    return address, listed


def assert_only_kept(serve: ServerProcess, address: str, before: Listed) -> None:
    assert models(address) == before
    folders, leftovers = model_folders(serve)
    assert (folders, leftovers) == ([before[0][0]], [])


def test_a_server_killed_mid_model_upload_leaves_nothing_after_its_restart(
    serve: ServerProcess, held: list[HeldOpenUpload]
) -> None:
    address, before = start_with_model(serve)
    held.append(held_upload(address, "big", archive("big", padding=3 * CHUNK)))
    serve.wait_log("receiving model 'big'")
    [partial] = model_folders(serve)[1]

    serve.kill()  # SIGKILL mid-stream: no shutdown code runs
    assert isinstance(held[0].future.exception(WAIT), grpc.RpcError)
    assert model_folders(serve)[1] == [partial]  # what the crash left

    assert serve.start() == address
    removed = serve.wait_log("removed partial upload")
    assert partial.name in removed and "left by an earlier run" in removed
    assert_only_kept(serve, address, before)
    # The name is free: the whole model uploads now.
    upload(address, "big", archive("big"))
    assert sorted(name for _, name, _, _ in models(address)) == ["big", "kept"]


def test_a_model_upload_the_client_cancels_removes_its_folder_at_once_and_stores_nothing(
    serve: ServerProcess, held: list[HeldOpenUpload]
) -> None:
    address, before = start_with_model(serve)
    data = archive("big")
    assert len(data) < CHUNK  # one chunk: once it is received, the whole archive is
    held.append(held_upload(address, "big", data))
    serve.wait_log("receiving model 'big'")
    assert len(model_folders(serve)[1]) == 1

    assert held[0].future.cancel()
    ended = serve.wait_log("Models.UploadModel of model 'big'")
    assert "ended without storing it" in ended and "removed its temporary folder" in ended
    # The whole archive had arrived: a server that took the end of the request stream
    # for its completion would have stored it.
    assert_only_kept(serve, address, before)


def test_a_model_upload_whose_client_process_is_killed_stores_nothing(
    serve: ServerProcess, tmp_path: Path
) -> None:
    address, before = start_with_model(serve)
    data = tmp_path / "dropped.zip"
    data.write_bytes(archive("dropped"))  # one chunk: all of it is received
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, address, "dropped", str(data)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "sent"
        serve.wait_log("receiving model 'dropped'")
        client.kill()  # SIGKILL: the connection drops without a cancel from the client
        client.wait(WAIT)
        ended = serve.wait_log("Models.UploadModel of model 'dropped'")
        assert "removed its temporary folder" in ended
        assert_only_kept(serve, address, before)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(WAIT)
        for stream in (client.stdin, client.stdout):
            if stream is not None:
                stream.close()


def test_a_server_stopped_mid_model_upload_removes_its_folder_before_it_exits(
    serve: ServerProcess, held: list[HeldOpenUpload]
) -> None:
    address, before = start_with_model(serve)
    held.append(held_upload(address, "big", archive("big", padding=3 * CHUNK)))
    serve.wait_log("receiving model 'big'")

    assert serve.stop() == 0  # SIGTERM: the upload is cancelled on the way down
    assert "removed its temporary folder" in serve.wait_log("Models.UploadModel of model 'big'")
    assert model_folders(serve)[1] == []
    assert isinstance(held[0].future.exception(WAIT), grpc.RpcError)
    serve.start()
    assert_only_kept(serve, address, before)


OLD = "was not saved: put its previous files back"
NEW = "was saved: kept it"
# Each crash while "liver" v2 replaces v1 (the first commit, v1's, passes the failpoints
# that a creation reaches too: hence @2), the version a restart must find, and what it logs.
REPLACE_CRASHES = [
    ("model_commit.intent_written@2", "1", "nothing had changed yet"),
    ("model_commit.old_set_aside", "1", OLD),
    ("model_commit.new_in_place@2", "1", OLD),
    ("model_commit.saved@2", "2", NEW),
    ("model_commit.old_removed@2", "2", NEW),
]
VERSIONS = {
    "1": (archive("1"), {"version": "1"}, models_pb2.MODEL_TYPE_TENSOR_RT),
    "2": (archive("2", padding=CHUNK), {"version": "2"}, models_pb2.MODEL_TYPE_PY_TORCH),
}


def test_every_failpoint_of_a_model_commit_is_placed_and_crashed_at() -> None:
    source = (ROOT / "server_mock" / "_models.py").read_text()
    assert [name for name in MODEL_COMMIT_FAILPOINTS if f'failpoint("{name}")' in source] == list(
        MODEL_COMMIT_FAILPOINTS
    )
    assert [crash.split("@")[0] for crash, _, _ in REPLACE_CRASHES] == list(MODEL_COMMIT_FAILPOINTS)


def crash_uploading(serve: ServerProcess, address: str, crash: str, version: str) -> None:
    """Upload ``liver`` at ``version``; the server kills itself at ``crash`` meanwhile."""
    data, metadata, kind = VERSIONS[version]
    with pytest.raises(grpc.RpcError):
        upload(address, "liver", data, metadata, kind)
    assert serve.wait_exit() == -9
    assert f"failpoint {crash.split('@', maxsplit=1)[0]} reached" in serve.log_path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("crash", "version", "outcome"), REPLACE_CRASHES, ids=[c for c, _, _ in REPLACE_CRASHES]
)
def test_a_crash_mid_replace_leaves_the_old_model_or_the_new_one_never_none(
    serve: ServerProcess, crash: str, version: str, outcome: str
) -> None:
    address = serve.start({ENV_FAILPOINTS: crash})
    data, metadata, kind = VERSIONS["1"]
    model_id = upload(address, "liver", data, metadata, kind)
    with grpc.insecure_channel(address) as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        catalog = stub.CreateCatalog(models_pb2.ModelsCreateCatalogRequest(), timeout=WAIT)
        stub.UpdateCatalog(
            iter(
                [
                    models_pb2.ModelsUpdateCatalogRequest(
                        catalog_id=catalog.catalog_id, model_ids=[model_id]
                    )
                ]
            ),
            timeout=WAIT,
        )
    crash_uploading(serve, address, crash, "2")

    serve.start()
    recovered = serve.wait_log("a crash interrupted the commit")
    assert model_id.value in recovered and outcome in recovered, recovered
    data, metadata, kind = VERSIONS[version]
    assert models(address) == [(model_id.value, "liver", kind, metadata)]
    assert download(address, model_id) == data
    assert serve.state is not None
    files = default_workspace(serve.state) / "models" / model_id.value / "files"
    assert (files / "liver" / "1" / "model.txt").read_text() == f"version {version}"
    assert (files / "liver" / "1" / "weights.bin").exists() == (version == "2")
    assert model_folders(serve) == ([model_id.value], [])
    with grpc.insecure_channel(address) as channel:
        [listing] = models_pb2_grpc.ModelsStub(channel).ListCatalogs(
            models_pb2.ModelsListCatalogsRequest(), timeout=WAIT
        )
    assert [[m.model_id.value for m in c.models] for c in listing.catalogs] == [[model_id.value]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("crash", "stored"),
    [("model_commit.new_in_place", False), ("model_commit.saved", True)],
)
def test_a_crash_mid_create_leaves_the_whole_model_or_nothing(
    serve: ServerProcess, crash: str, stored: bool
) -> None:
    address = serve.start({ENV_FAILPOINTS: crash})
    crash_uploading(serve, address, crash, "1")

    serve.start()
    recovered = serve.wait_log("a crash interrupted the commit")
    listed = models(address)
    if stored:
        assert "was saved: kept it" in recovered
        data, metadata, kind = VERSIONS["1"]
        [(model_id, name, listed_kind, listed_metadata)] = listed
        assert (name, listed_kind, listed_metadata) == ("liver", kind, metadata)
        assert download(address, common_pb2.Identifier(value=model_id)) == data
        assert model_folders(serve) == ([model_id], [])
    else:
        assert "was never saved: removed its files" in recovered
        assert listed == []
        assert model_folders(serve) == ([], [])


@pytest.mark.slow
def test_a_replacement_the_state_file_refuses_puts_the_old_model_back(serve: ServerProcess) -> None:
    address = serve.start()
    data, metadata, kind = VERSIONS["1"]
    model_id = upload(address, "liver", data, metadata, kind)
    assert serve.state is not None
    # Another process holds the file's write lock (SQLite gives up after its busy timeout).
    holder = sqlite3.connect(serve.state, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        new_data, new_metadata, new_kind = VERSIONS["2"]
        with grpc.insecure_channel(address) as channel:
            refused = models_pb2_grpc.ModelsStub(channel).UploadModel(
                requests("liver", new_data, new_metadata, new_kind), timeout=WAIT
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert refused.header.code == ErrorCode.MODEL_STORE_ERROR
    ended = serve.wait_log("Models.UploadModel of model 'liver'")
    assert "not saved" in ended and "removed its temporary folder" in ended
    assert models(address) == [(model_id.value, "liver", kind, metadata)]
    assert download(address, model_id) == data
    assert model_folders(serve) == ([model_id.value], [])
