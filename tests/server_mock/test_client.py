"""The CLI's Platform API client: errors become PlatformApiError and leave no partial files."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_mock import MockPlatform
from server_mock._client import PlatformApiError, PlatformClient


def test_a_refused_download_leaves_no_partial_file(
    clara_platform: MockPlatform, tmp_path: Path
) -> None:
    with PlatformClient(clara_platform.address) as client:
        payload = client.create_payload()
        destination = tmp_path / "out" / "missing.bin"
        with pytest.raises(PlatformApiError, match=r"Payloads\.Download missing\.bin"):
            client.download(payload, "missing.bin", destination)
    assert list((tmp_path / "out").iterdir()) == []


def test_upload_then_download_round_trip(clara_platform: MockPlatform, tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "nested").mkdir(parents=True)
    (source / "nested" / "data.bin").write_bytes(bytes(range(256)) * 1024)  # 4 chunks
    with PlatformClient(clara_platform.address) as client:
        payload = client.create_payload()
        assert client.upload_folder(payload, source) == 1
        assert client.payload_files(payload) == ["nested/data.bin"]
        client.download(payload, "nested/data.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == (source / "nested" / "data.bin").read_bytes()


def test_an_unreachable_platform_is_a_platform_api_error(tmp_path: Path) -> None:
    probe = MockPlatform()
    address = probe.start()
    probe.stop()
    with PlatformClient(address) as client, pytest.raises(PlatformApiError, match="UNAVAILABLE"):
        client.list_jobs()
