"""A model's zip archive: checked and extracted, member by member, within limits.

An uploaded archive ("Contents of Model as a compressed zip stream", Models UploadModel RPC,
Clara Deploy SDK 0.7.4) is extracted only if every member is safe: one that is absolute,
climbs out with ``..``, is a link or a device, or repeats another, or an archive with more
than :data:`MAX_MODEL_FILES` members or more than :data:`MAX_MODEL_FILES_BYTES` of content,
refuses the upload (``INVALID_MODEL``) and leaves no folder. Extraction blocks (callers run it
in a worker thread) and can be stopped from another thread between chunks.
"""

from __future__ import annotations

import shutil
import stat
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Final

from server_mock._errors import ApiError, ErrorCode

__all__ = ["MAX_MODEL_FILES", "MAX_MODEL_FILES_BYTES", "ExtractionStopped", "extract_archive"]

MAX_MODEL_FILES: Final = 100_000
"""Most members one model archive may have."""

MAX_MODEL_FILES_BYTES: Final = 64 * 1024**3
"""Largest extracted content of one model archive, in bytes."""

_COPY_CHUNK = 1024 * 1024


def _bad_archive(why: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_MODEL, f"field data: the model is not a usable zip: {why}")


class ExtractionStopped(Exception):
    """:func:`extract_archive` was asked to stop (its upload was cancelled)."""


def extract_archive(archive: Path, destination: Path, stop: threading.Event | None = None) -> None:
    """Check the zip ``archive`` and extract it into the new folder ``destination``.

    Blocking: run it in a worker thread. On error ``destination`` is removed.

    Args:
        archive: The uploaded archive.
        destination: The folder to create and extract into.
        stop: Set (from another thread) to end the extraction early, within one chunk.

    Raises:
        ApiError: ``INVALID_MODEL``: not a zip, or a member is unsafe or too large.
        ExtractionStopped: ``stop`` was set.
    """
    if not zipfile.is_zipfile(archive):
        raise _bad_archive("the data is not a zip archive (upload the model folder zipped)")
    destination.mkdir(parents=True)
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            if len(members) > MAX_MODEL_FILES:
                raise _bad_archive(f"more than {MAX_MODEL_FILES} members")
            budget = MAX_MODEL_FILES_BYTES
            for member in members:
                budget -= _extract_member(zipped, member, destination, budget, stop)
    except zipfile.BadZipFile as error:
        shutil.rmtree(destination, ignore_errors=True)
        raise _bad_archive(str(error)) from error
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _extract_member(
    zipped: zipfile.ZipFile,
    member: zipfile.ZipInfo,
    destination: Path,
    budget: int,
    stop: threading.Event | None,
) -> int:
    """Extract one member (checked); return the bytes written."""
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or any(p in ("..", "") for p in parts):
        raise _bad_archive(f"member {name!r} would be written outside the model's folder")
    kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the archiver recorded no type
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _bad_archive(f"member {name!r} is a link or a device, not a file")
    target = destination.joinpath(*parts)
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    if member.file_size > budget:
        raise _bad_archive(f"its content is larger than {MAX_MODEL_FILES_BYTES} bytes")
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")  # noqa: SIM115 - closed below; "x": a repeated member fails
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise _bad_archive(f"member {name!r} clashes with another member") from None
    with zipped.open(member) as source, out:
        while chunk := source.read(_COPY_CHUNK):
            if stop is not None and stop.is_set():
                raise ExtractionStopped(f"stopped while extracting {name!r}")
            written += len(chunk)
            if written > budget:
                raise _bad_archive(f"its content is larger than {MAX_MODEL_FILES_BYTES} bytes")
            out.write(chunk)
    return written
