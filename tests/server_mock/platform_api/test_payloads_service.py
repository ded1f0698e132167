"""The Payloads service: uploads, downloads, blob names, metadata."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _api import (
    CHUNK,
    Api,
    assert_refused,
    connect,
    download,
    ident,
    new_payload,
    payload_files,
    trailer,
    upload,
)

from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._proto.nvidia.clara.platform import common_pb2, payloads_pb2


def test_payload_upload_download_round_trip_in_many_chunks(api: Api) -> None:
    payload = new_payload(api, purpose="test")
    data = hashlib.sha256(b"seed").digest() * (5 * CHUNK // 32 + 123)  # 5 chunks and a bit
    uploaded, call = api.payloads.Upload.with_call(
        iter(
            payloads_pb2.PayloadsUploadRequest(
                payload_id=payload,
                details=payloads_pb2.PayloadFileDetails(
                    name="scans/ct.raw", size=len(data[i : i + CHUNK])
                ),
                data=data[i : i + CHUNK],
            )
            for i in range(0, len(data), CHUNK)
        )
    )
    assert uploaded.header.code == 0, uploaded.header.messages
    assert trailer(call) is None
    assert (uploaded.details.name, uploaded.details.size, uploaded.details.mode) == (
        "scans/ct.raw",
        len(data),
        0o644,
    )
    messages, content = download(api, payload, "scans/ct.raw")
    assert content == data
    assert len(messages) == 6
    assert all(len(m.data) <= CHUNK for m in messages)
    assert messages[0].header.code == 0
    assert (messages[0].details.name, messages[0].details.size) == ("scans/ct.raw", len(data))
    # One big chunk (as our own clients may send) works too.
    assert upload(api, payload, "big.bin", data, chunk=len(data)).header.code == 0
    assert download(api, payload, "big.bin")[1] == data
    assert payload_files(api, payload) == {"big.bin": len(data), "scans/ct.raw": len(data)}


def test_empty_file_upload_and_download(api: Api) -> None:
    payload = new_payload(api)
    response = api.payloads.Upload(
        iter(
            [
                payloads_pb2.PayloadsUploadRequest(
                    payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="empty")
                )
            ]
        )
    )
    assert response.header.code == 0 and response.details.size == 0
    messages, content = download(api, payload, "empty")
    assert content == b"" and len(messages) == 1 and messages[0].header.code == 0


def test_payload_details_and_metadata(api: Api) -> None:
    payload = new_payload(api, a="1")
    # One message per file, as the docs say: none for an empty payload (no nameless "file").
    assert list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload))) == []
    for name in ("b.txt", "a/c.txt"):
        upload(api, payload, name, name.encode())
    responses = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert [(r.file.name, r.file.size) for r in responses] == [("a/c.txt", 7), ("b.txt", 5)]
    assert all(r.payload_id.value == payload.value for r in responses)
    assert all(r.type == payloads_pb2.PAYLOAD_TYPE_REUSABLE for r in responses)
    assert dict(responses[0].metadata) == {"a": "1"}
    added = api.payloads.AddMetadata(
        payloads_pb2.PayloadsAddMetadataRequest(payload_id=payload, metadata={"b": "2"})
    )
    assert added.header.code == 0 and dict(added.metadata) == {"a": "1", "b": "2"}
    removed = api.payloads.RemoveMetadata(
        payloads_pb2.PayloadsRemoveMetadataRequest(payload_id=payload, keys=["a"])
    )
    assert dict(removed.metadata) == {"b": "2"}
    bad = api.payloads.RemoveMetadata(
        payloads_pb2.PayloadsRemoveMetadataRequest(payload_id=payload, keys=[""])
    )
    assert_refused(bad.header, ErrorCode.INVALID_PAYLOAD_METADATA)


BAD_BLOB_NAMES = [
    "",
    "/",
    "//etc/passwd",  # one leading '/' is ignored, not two
    "../outside",
    "/../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    "trailing/",
    "back\\slash",
    "nul\x00byte",
    "new\nline",
    "x" * 256,
    "é" * 128,  # 128 characters, 256 bytes
    "a/" * 128 + "b",  # 129 components
    ("d" * 250 + "/") * 16 + "f" * 70,  # under 4096 characters, but too long a path on Linux
]


@pytest.mark.parametrize("name", BAD_BLOB_NAMES)
def test_blob_names_that_escape_or_are_malformed_are_rejected(
    api: Api, platform: MockPlatform, name: str
) -> None:
    payload = new_payload(api)
    upload(api, payload, "kept.txt", b"kept")
    response, call = api.payloads.Upload.with_call(
        iter(
            [
                payloads_pb2.PayloadsUploadRequest(
                    payload_id=payload,
                    details=payloads_pb2.PayloadFileDetails(name=name),
                    data=b"evil",
                )
            ]
        )
    )
    assert_refused(response.header, ErrorCode.INVALID_BLOB_NAME, "invalid blob name")
    assert trailer(call) == "INVALID_ARGUMENT"
    messages, _ = download(api, payload, name)
    assert_refused(messages[0].header, ErrorCode.INVALID_BLOB_NAME)
    removed = api.payloads.Remove(payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name=name))
    assert_refused(removed.header, ErrorCode.INVALID_BLOB_NAME)
    assert payload_files(api, payload) == {"kept.txt": 4}
    workspace = platform.state.workspace
    assert [p for p in workspace.rglob("*") if p.is_file() and p.name != "kept.txt"] == []


def test_symlinks_cannot_lead_outside_the_payload(
    api: Api, platform: MockPlatform, tmp_path: Path
) -> None:
    payload = new_payload(api)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    root = platform.call(lambda: platform.state.payloads.get(uuid.UUID(payload.value)).root)
    (root / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    (root / "file-link").symlink_to(secret)
    response = upload(api, payload, "dir-link/planted.txt", b"x")
    assert_refused(response.header, ErrorCode.INVALID_BLOB_NAME, "outside the payload")
    assert not (tmp_path / "planted.txt").exists()
    for name in ("file-link", "dir-link/secret.txt"):
        messages, content = download(api, payload, name)
        assert_refused(messages[0].header, ErrorCode.INVALID_BLOB_NAME, "outside the payload")
        assert content == b""
    assert_refused(
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="file-link")
        ).header,
        ErrorCode.INVALID_BLOB_NAME,
    )
    assert secret.read_text() == "secret"
    assert payload_files(api, payload) == {}  # symlinks are not listed


def test_upload_refuses_existing_names_and_inconsistent_streams(
    api: Api, platform: MockPlatform
) -> None:
    payload = new_payload(api)
    assert upload(api, payload, "a.txt", b"first").header.code == 0
    assert_refused(
        upload(api, payload, "a.txt", b"second").header, ErrorCode.FILE_EXISTS, "'a.txt'"
    )
    assert_refused(
        upload(api, payload, "a.txt/b", b"x").header, ErrorCode.INVALID_BLOB_NAME, "is a file"
    )
    assert download(api, payload, "a.txt")[1] == b"first"

    other = new_payload(api)
    mixed = [
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="m"), data=b"1"
        ),
        payloads_pb2.PayloadsUploadRequest(
            payload_id=other, details=payloads_pb2.PayloadFileDetails(name="m"), data=b"2"
        ),
    ]
    assert_refused(
        api.payloads.Upload(iter(mixed)).header, ErrorCode.INVALID_UPLOAD, "different payloads"
    )
    renamed = [
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="m"), data=b"1"
        ),
        payloads_pb2.PayloadsUploadRequest(
            payload_id=payload, details=payloads_pb2.PayloadFileDetails(name="n"), data=b"2"
        ),
    ]
    assert_refused(
        api.payloads.Upload(iter(renamed)).header, ErrorCode.INVALID_UPLOAD, "different files"
    )
    # The published client sends no message for an empty file: accepted, nothing stored.
    nothing = api.payloads.Upload(iter([]))
    assert (nothing.header.code, nothing.details.name) == (0, "")
    assert payload_files(api, payload) == {"a.txt": 5}
    assert list((platform.state.workspace / "payloads" / ".uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", ErrorCode.INVALID_PAYLOAD_ID),
        ("nope", ErrorCode.INVALID_PAYLOAD_ID),
        (uuid.uuid4().hex, ErrorCode.PAYLOAD_NOT_FOUND),
    ],
)
def test_payload_ids_are_validated(api: Api, value: str, code: ErrorCode) -> None:
    payload = ident(value)
    assert_refused(upload(api, payload, "a", b"x").header, code)
    assert_refused(download(api, payload, "a")[0][0].header, code)
    [details] = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert_refused(details.header, code)
    assert_refused(
        api.payloads.Delete(payloads_pb2.PayloadsDeleteRequest(payload_id=payload)).header, code
    )
    assert_refused(
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="a")
        ).header,
        code,
    )
    add = api.payloads.AddMetadata(
        payloads_pb2.PayloadsAddMetadataRequest(payload_id=payload, metadata={"a": "b"})
    )
    assert_refused(add.header, code)


def test_remove_file_and_delete_payload(api: Api, platform: MockPlatform) -> None:
    payload = new_payload(api)
    upload(api, payload, "dir/a.txt", b"a")
    upload(api, payload, "b.txt", b"b")
    missing, call = api.payloads.Remove.with_call(
        payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="nope")
    )
    assert_refused(missing.header, ErrorCode.FILE_NOT_FOUND, "'nope'")
    assert trailer(call) == "NOT_FOUND"
    assert_refused(
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="dir")
        ).header,
        ErrorCode.FILE_NOT_FOUND,
    )
    assert (
        api.payloads.Remove(
            payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name="dir/a.txt")
        ).header.code
        == 0
    )
    assert payload_files(api, payload) == {"b.txt": 1}
    assert_refused(download(api, payload, "dir/a.txt")[0][0].header, ErrorCode.FILE_NOT_FOUND)
    root = platform.call(lambda: platform.state.payloads.get(uuid.UUID(payload.value)).root)
    assert (
        api.payloads.Delete(payloads_pb2.PayloadsDeleteRequest(payload_id=payload)).header.code == 0
    )
    assert not root.exists()
    [details] = list(api.payloads.Details(payloads_pb2.PayloadsDetailsRequest(payload_id=payload)))
    assert_refused(details.header, ErrorCode.PAYLOAD_NOT_FOUND)


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("scans/" + "x" * 256 + "/ct.raw", ["'xxxxx", "is 256 bytes", "at most 255"]),
        ("é" * 128, ["is 256 bytes", "at most 255"]),
        ("a/" * 128 + "b", ["129 path components", "at most 128"]),
        (("d" * 250 + "/") * 16 + "f" * 70, ["the path is", "at most 4095"]),
    ],
)
def test_a_name_the_file_system_cannot_hold_is_refused_with_a_clear_message(
    api: Api, platform: MockPlatform, name: str, fragments: list[str]
) -> None:
    # Not "[Errno 36] File name too long" as an internal error, nor a RecursionError.
    payload = new_payload(api)
    response, call = api.payloads.Upload.with_call(
        iter(
            [
                payloads_pb2.PayloadsUploadRequest(
                    payload_id=payload,
                    details=payloads_pb2.PayloadFileDetails(name=name),
                    data=b"data",
                )
            ]
        )
    )
    shown = repr(name[:20])[:-1]  # the message quotes the name (shortened when long)
    assert_refused(response.header, ErrorCode.INVALID_BLOB_NAME, f"invalid blob name {shown}")
    assert_refused(response.header, ErrorCode.INVALID_BLOB_NAME, *fragments)
    assert trailer(call) == "INVALID_ARGUMENT"
    assert payload_files(api, payload) == {}
    assert temp_files(platform) == []


def temp_files(platform: MockPlatform) -> list[Path]:
    """The upload temporary files in ``platform``'s workspace."""
    uploads = platform.state.workspace / "payloads" / ".uploads"
    return sorted(uploads.iterdir()) if uploads.is_dir() else []


def _chunks(
    payload: common_pb2.Identifier,
    name: str,
    count: int,
    then: list[payloads_pb2.PayloadsUploadRequest],
) -> Iterator[payloads_pb2.PayloadsUploadRequest]:
    for _ in range(count):
        yield payloads_pb2.PayloadsUploadRequest(
            payload_id=payload,
            details=payloads_pb2.PayloadFileDetails(name=name),
            data=b"x" * CHUNK,
        )
    yield from then


def test_an_upload_refused_midway_removes_its_temporary_file_before_it_answers() -> None:
    with MockPlatform(max_upload_bytes=3 * CHUNK) as small, connect(small) as api:
        payload = new_payload(api)
        other = new_payload(api)
        too_big = api.payloads.Upload(_chunks(payload, "big.raw", 4, []))
        assert_refused(too_big.header, ErrorCode.INVALID_UPLOAD, "'big.raw'", "upload limit")
        assert temp_files(small) == []
        switched = payloads_pb2.PayloadsUploadRequest(
            payload_id=other, details=payloads_pb2.PayloadFileDetails(name="a"), data=b"x"
        )
        mixed = api.payloads.Upload(_chunks(payload, "a", 2, [switched]))
        assert_refused(mixed.header, ErrorCode.INVALID_UPLOAD, "different payloads")
        assert temp_files(small) == []
        assert payload_files(api, payload) == {} and payload_files(api, other) == {}


def test_a_payload_deleted_during_an_upload_keeps_no_file(api: Api, platform: MockPlatform) -> None:
    payload = new_payload(api)

    def delete_then_end() -> Iterator[payloads_pb2.PayloadsUploadRequest]:
        yield from _chunks(payload, "scan.raw", 2, [])
        deleted = api.payloads.Delete(payloads_pb2.PayloadsDeleteRequest(payload_id=payload))
        assert deleted.header.code == 0

    response = api.payloads.Upload(delete_then_end())
    assert_refused(response.header, ErrorCode.PAYLOAD_NOT_FOUND, payload.value)
    assert temp_files(platform) == []


def test_start_removes_the_partial_uploads_a_crash_left(tmp_path: Path) -> None:
    uploads = tmp_path / "payloads" / ".uploads"
    uploads.mkdir(parents=True)
    (uploads / "upload-abc123").write_bytes(b"x" * 1000)
    (uploads / "upload-def456").write_bytes(b"")
    with MockPlatform(workspace=tmp_path) as platform, connect(platform) as api:
        assert temp_files(platform) == []
        payload = new_payload(api)  # the store works as before
        assert upload(api, payload, "a.txt", b"a").header.code == 0
        assert payload_files(api, payload) == {"a.txt": 1}
