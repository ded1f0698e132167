"""Payload file names as the Clara docs define them: a leading '/' ignored, case preserved on
upload, found case-insensitively on download (and remove)."""

from __future__ import annotations

import pytest
from _api import (
    Api,
    assert_refused,
    create_job,
    download,
    job_layout,
    new_payload,
    payload_files,
    pipeline_id,
    upload,
)

from server_mock import MockPlatform
from server_mock._errors import ErrorCode
from server_mock._proto.nvidia.clara.platform import common_pb2, payloads_pb2


def remove(
    api: Api, payload: common_pb2.Identifier, name: str
) -> payloads_pb2.PayloadsRemoveResponse:
    return api.payloads.Remove(payloads_pb2.PayloadsRemoveRequest(payload_id=payload, name=name))


def test_a_leading_slash_is_ignored_in_every_name(api: Api) -> None:
    payload = new_payload(api)
    uploaded = upload(api, payload, "/dir/a.dcm", b"scan")
    assert uploaded.header.code == 0, uploaded.header.messages
    assert uploaded.details.name == "dir/a.dcm"  # stored without the '/'
    assert payload_files(api, payload) == {"dir/a.dcm": 4}
    for name in ("/dir/a.dcm", "dir/a.dcm"):
        messages, content = download(api, payload, name)
        assert content == b"scan" and messages[0].details.name == "dir/a.dcm"
    # The same file, however it is named: a second upload of it is refused.
    assert_refused(upload(api, payload, "dir/a.dcm", b"x").header, ErrorCode.FILE_EXISTS)
    assert remove(api, payload, "/dir/a.dcm").header.code == 0
    assert payload_files(api, payload) == {}


def test_a_leading_slash_names_the_job_payloads_input_folder_for_uploads(
    api: Api, platform: MockPlatform
) -> None:
    job = create_job(api, pipeline_id(api))
    uploaded = upload(api, job.payload_id, "/scans/ct.raw", b"ct")
    # Upload names are relative to the input folder (Payloads Upload RPC); the answer names
    # the file from the payload's root, as Details and Download do.
    assert uploaded.details.name == "input/scans/ct.raw"
    layout = job_layout(platform, job.job_id.value)
    assert (layout.input_dir / "scans" / "ct.raw").read_bytes() == b"ct"
    assert download(api, job.payload_id, "/INPUT/Scans/CT.raw")[1] == b"ct"


def test_names_keep_their_case_and_download_finds_a_file_ignoring_case(api: Api) -> None:
    payload = new_payload(api)
    assert upload(api, payload, "Series1/IMG0001.DCM", b"one").header.code == 0
    messages, content = download(api, payload, "series1/img0001.dcm")
    assert content == b"one"
    assert messages[0].header.code == 0
    assert messages[0].details.name == "Series1/IMG0001.DCM"  # the stored name, not the asked
    assert payload_files(api, payload) == {"Series1/IMG0001.DCM": 3}
    assert_refused(
        download(api, payload, "series1/img0002.dcm")[0][0].header,
        ErrorCode.FILE_NOT_FOUND,
        "'series1/img0002.dcm'",
    )
    assert remove(api, payload, "SERIES1/img0001.dcm").header.code == 0
    assert payload_files(api, payload) == {}


def test_names_that_differ_only_in_case_are_two_files(api: Api) -> None:
    # "Uploading two files which have names that differ in case will create multiple files in
    # the payload" (Payloads Upload RPC); the exact name then picks one.
    payload = new_payload(api)
    for name, data in (("a.dcm", b"lower"), ("A.DCM", b"upper"), ("dir/x", b"1"), ("DIR/x", b"2")):
        assert upload(api, payload, name, data).header.code == 0, name
    assert payload_files(api, payload) == {"A.DCM": 5, "DIR/x": 1, "a.dcm": 5, "dir/x": 1}
    assert download(api, payload, "a.dcm")[1] == b"lower"
    assert download(api, payload, "A.DCM")[1] == b"upper"
    assert download(api, payload, "DIR/x")[1] == b"2"


@pytest.mark.parametrize("asked", ["A.dcm", "dir/X", "Dir/x"])
def test_several_case_insensitive_matches_and_no_exact_one_is_an_error_naming_them(
    api: Api, asked: str
) -> None:
    payload = new_payload(api)
    for name in ("a.dcm", "A.DCM", "dir/x", "DIR/x"):
        assert upload(api, payload, name, b"x").header.code == 0
    expected = ["'A.DCM'", "'a.dcm'"] if asked == "A.dcm" else ["'DIR/x'", "'dir/x'"]
    messages, content = download(api, payload, asked)
    assert content == b""
    assert_refused(
        messages[0].header, ErrorCode.FILE_NOT_FOUND, f"{asked!r}", "2 files match", *expected
    )
    assert_refused(remove(api, payload, asked).header, ErrorCode.FILE_NOT_FOUND, "2 files match")
    assert len(payload_files(api, payload)) == 4  # nothing removed


def test_a_folder_with_the_asked_name_does_not_hide_a_file_matching_ignoring_case(
    api: Api,
) -> None:
    payload = new_payload(api)
    assert upload(api, payload, "report/page.txt", b"page").header.code == 0
    assert upload(api, payload, "REPORT", b"file").header.code == 0
    assert download(api, payload, "report")[1] == b"file"  # the only file matching
