"""11. An upload cut short leaves no temporary file and no half file (real ``serve`` processes).

Each test streams an upload into a real ``clara-mock serve --state`` process and stops it
midway: the server is SIGKILLed (the restarted server removes the leftover), the client
cancels the call, the client process is SIGKILLed (its connection drops), or the server is
stopped with SIGTERM. The generator that feeds the upload blocks on an event after a few
chunks, so the upload is in progress for as long as the test needs; the test waits on the
server's own log lines ("receiving", "ended without storing it", "removed partial upload"),
never on a sleep.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from _faults import ROOT, WAIT, HeldOpenUpload, ServerProcess

from server_mock._client import PlatformApiError, PlatformClient
from server_mock._persistence import default_workspace
from server_mock._proto.nvidia.clara.platform import common_pb2, payloads_pb2, payloads_pb2_grpc

CHUNK = 64 * 1024
SENT_CHUNKS = 3

# A client in its own process: streams SENT_CHUNKS chunks, says so, then waits on stdin for
# ever (the test kills it with SIGKILL mid-stream).
CLIENT = f"""
import sys, grpc
from server_mock._proto.nvidia.clara.platform import common_pb2, payloads_pb2, payloads_pb2_grpc
address, payload, name = sys.argv[1:4]
def chunks():
    for _ in range({SENT_CHUNKS}):
        yield payloads_pb2.PayloadsUploadRequest(
            payload_id=common_pb2.Identifier(value=payload),
            details=payloads_pb2.PayloadFileDetails(name=name),
            data=b"x" * {CHUNK},
        )
    print("sent", flush=True)
    sys.stdin.readline()
with grpc.insecure_channel(address) as channel:
    payloads_pb2_grpc.PayloadsStub(channel).Upload(chunks())
"""


def temp_files(serve: ServerProcess) -> list[Path]:
    """The upload temporary files in the server's workspace."""
    uploads = default_workspace(serve.state) / "payloads" / ".uploads"
    return sorted(uploads.iterdir()) if uploads.is_dir() else []


def held_upload(address: str, payload: uuid.UUID, name: str) -> HeldOpenUpload:
    """An upload of ``name`` that sends a few chunks, then holds its stream open."""
    chunks = (
        payloads_pb2.PayloadsUploadRequest(
            payload_id=common_pb2.Identifier(value=payload.hex),
            details=payloads_pb2.PayloadFileDetails(name=name),
            data=b"x" * CHUNK,
        )
        for _ in range(SENT_CHUNKS)
    )
    return HeldOpenUpload(address, lambda c: payloads_pb2_grpc.PayloadsStub(c).Upload, chunks)


def start_with_payload(serve: ServerProcess, tmp_path: Path) -> tuple[str, uuid.UUID]:
    """Start ``serve``; create a payload holding ``kept.txt``; return address and payload."""
    address = serve.start()
    folder = tmp_path / "kept"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    with PlatformClient(address) as client:
        payload = client.create_payload()
        assert client.upload_folder(payload, folder) == 1
    return address, payload


def assert_no_half_file(address: str, payload: uuid.UUID, name: str, tmp_path: Path) -> None:
    with PlatformClient(address) as client:
        assert client.payload_files(payload) == ["kept.txt"]
        with pytest.raises(PlatformApiError, match="payload has no file"):
            client.download(payload, name, tmp_path / "downloaded")


def test_a_server_killed_mid_upload_leaves_no_temporary_file_after_its_restart(
    serve: ServerProcess, tmp_path: Path, held: list[HeldOpenUpload]
) -> None:
    address, payload = start_with_payload(serve, tmp_path)
    upload = held_upload(address, payload, "scans/big.raw")
    held.append(upload)
    serve.wait_log("receiving 'scans/big.raw'")  # logged once the first chunk is written
    [partial] = temp_files(serve)
    assert partial.stat().st_size >= CHUNK

    serve.kill()  # SIGKILL mid-stream: no shutdown code runs
    assert isinstance(upload.future.exception(WAIT), grpc.RpcError)
    assert temp_files(serve) == [partial]  # what the crash left

    assert serve.start() == address
    removed = serve.wait_log("removed partial upload")
    assert partial.name in removed and "left by an earlier run" in removed
    assert temp_files(serve) == []
    assert_no_half_file(address, payload, "scans/big.raw", tmp_path)
    # The name is free: the whole file uploads now.
    whole = tmp_path / "whole"
    (whole / "scans").mkdir(parents=True)
    (whole / "scans" / "big.raw").write_bytes(b"y" * (2 * CHUNK + 1))
    with PlatformClient(address) as client:
        assert client.upload_folder(payload, whole) == 1
        assert sorted(client.payload_files(payload)) == ["kept.txt", "scans/big.raw"]


def test_an_upload_the_client_cancels_removes_its_temporary_file_at_once(
    serve: ServerProcess, tmp_path: Path, held: list[HeldOpenUpload]
) -> None:
    address, payload = start_with_payload(serve, tmp_path)
    upload = held_upload(address, payload, "big.raw")
    held.append(upload)
    serve.wait_log("receiving 'big.raw'")
    assert len(temp_files(serve)) == 1

    assert upload.future.cancel()
    ended = serve.wait_log("Payloads.Upload of 'big.raw'")
    assert "ended without storing it" in ended and "removed its temporary file" in ended
    assert temp_files(serve) == []
    # Not a half file committed as if the stream had ended (gRPC ends the request stream
    # alike in both cases).
    assert_no_half_file(address, payload, "big.raw", tmp_path)


def test_an_upload_whose_client_process_is_killed_removes_its_temporary_file(
    serve: ServerProcess, tmp_path: Path
) -> None:
    address, payload = start_with_payload(serve, tmp_path)
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, address, payload.hex, "dropped.raw"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "sent"
        serve.wait_log("receiving 'dropped.raw'")
        client.kill()  # SIGKILL: the connection drops without a cancel from the client
        client.wait(WAIT)
        ended = serve.wait_log("Payloads.Upload of 'dropped.raw'")
        assert "removed its temporary file" in ended
        assert temp_files(serve) == []
        assert_no_half_file(address, payload, "dropped.raw", tmp_path)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(WAIT)
        for stream in (client.stdin, client.stdout):
            if stream is not None:
                stream.close()


def test_a_server_stopped_mid_upload_removes_its_temporary_file_before_it_exits(
    serve: ServerProcess, tmp_path: Path, held: list[HeldOpenUpload]
) -> None:
    address, payload = start_with_payload(serve, tmp_path)
    upload = held_upload(address, payload, "big.raw")
    held.append(upload)
    serve.wait_log("receiving 'big.raw'")

    assert serve.stop() == 0  # SIGTERM: the upload is cancelled on the way down
    assert "removed its temporary file" in serve.wait_log("Payloads.Upload of 'big.raw'")
    assert temp_files(serve) == []
    assert isinstance(upload.future.exception(WAIT), grpc.RpcError)
    serve.start()
    assert_no_half_file(address, payload, "big.raw", tmp_path)
