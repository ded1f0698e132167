"""Payloads: folders of files under ``<workspace>/payloads/<payload-id>/``.

A reusable payload (created through the API) holds what the client uploads. A pipeline payload
is created for one job and holds the job's folders (see :class:`~server_mock._workspace.JobLayout`);
uploads into it land in its ``input/`` folder.

Blob names are relative POSIX paths (``scans/ct.mhd``). A name is refused when it is empty,
absolute, contains ``.``/``..``/empty components, a backslash, NUL or another control
character, or resolves (through symlinks) outside the payload's folder. Uploads are written
to a temporary file and linked into place only when complete, so a failed upload leaves
nothing behind and a reader never sees half a file.

The records live on the mock's event-loop thread; file I/O happens there too except for the
bulk copy of input payloads (:func:`copy_files`), which callers run in a worker thread.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from server_mock._errors import ApiError, ErrorCode
from server_mock._saved_metadata import replace_metadata

__all__ = [
    "CHUNK_SIZE",
    "MAX_BLOB_NAME_CHARS",
    "FileInfo",
    "PayloadRecord",
    "PayloadStore",
    "PayloadType",
    "Upload",
    "check_blob_name",
    "copy_files",
]

CHUNK_SIZE = 64 * 1024
"""Download chunk size, and the size the published client uploads in."""

MAX_BLOB_NAME_CHARS = 4096
"""Longest accepted blob name."""

_MAX_COMPONENT_BYTES = 255
_FILE_MODE = 0o644


class PayloadType(enum.Enum):
    """How a payload came to be."""

    PIPELINE = "pipeline"
    """Created for, and owned by, one job."""
    REUSABLE = "reusable"
    """Created through the API; may be the input of any number of jobs."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file of a payload: its name relative to the payload's root, size and mode bits."""

    name: str
    size: int
    mode: int


@dataclass(slots=True)
class PayloadRecord:
    """One payload (mutable; owned by the loop thread).

    Attributes:
        payload_id: The payload's id.
        type: How the payload came to be.
        root: The payload's folder.
        metadata: The payload's metadata.
        job_id: The owning job, for a pipeline payload.
        created_at: When the payload was created (Unix time).
    """

    payload_id: uuid.UUID
    type: PayloadType
    root: Path
    metadata: dict[str, str] = field(default_factory=dict)
    job_id: uuid.UUID | None = None
    created_at: float = field(default_factory=time.time)

    @property
    def upload_root(self) -> Path:
        """Where uploads land: ``input/`` of a pipeline payload, else the payload's root."""
        return self.root / "input" if self.type is PayloadType.PIPELINE else self.root


def _bad_name(name: str, why: str) -> ApiError:
    shown = name if len(name) <= 80 else name[:77] + "..."
    return ApiError(ErrorCode.INVALID_BLOB_NAME, f"invalid blob name {shown!r}: {why}")


def check_blob_name(name: str) -> PurePosixPath:
    """Return ``name`` as a relative path, or refuse it.

    Raises:
        ApiError: ``INVALID_BLOB_NAME`` naming what is wrong.
    """
    if not name:
        raise _bad_name(name, "the name is empty")
    if len(name) > MAX_BLOB_NAME_CHARS:
        raise _bad_name(name, f"longer than {MAX_BLOB_NAME_CHARS} characters")
    if "\\" in name:
        raise _bad_name(name, "backslashes are not allowed; separate folders with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise _bad_name(name, "NUL and other control characters are not allowed")
    if name.startswith("/"):
        raise _bad_name(name, "the name must be relative to the payload, not absolute")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise _bad_name(name, "empty, '.' and '..' path components are not allowed")
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES:
            raise _bad_name(name, f"a path component is longer than {_MAX_COMPONENT_BYTES} bytes")
    return PurePosixPath(*parts)


def _inside(base: Path, relative: PurePosixPath, name: str) -> Path:
    """``base / relative``, refused when it resolves (through symlinks) outside ``base``."""
    target = base.joinpath(*relative.parts)
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(target))
    if real == real_base or not real.is_relative_to(real_base):
        raise _bad_name(name, "it resolves outside the payload (through a symlink)")
    return target


def _file_info(path: Path, name: str) -> FileInfo:
    st = path.lstat()
    return FileInfo(name=name, size=st.st_size, mode=stat.S_IMODE(st.st_mode))


def _walk_files(base: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``base`` (symlinks are not followed), as (name, path), sorted."""
    found: list[tuple[str, Path]] = []
    if not base.is_dir():
        return found
    for folder, _dirs, files in os.walk(base, followlinks=False):
        for file_name in files:
            path = Path(folder) / file_name
            with contextlib.suppress(OSError):
                if stat.S_ISREG(path.lstat().st_mode):
                    found.append((path.relative_to(base).as_posix(), path))
    found.sort()
    return found


class Upload:
    """One file being uploaded: chunks go to a temporary file, :meth:`commit` links it in place.

    Create with :meth:`PayloadStore.begin_upload`; always end with :meth:`commit` or
    :meth:`abort`.
    """

    def __init__(self, record: PayloadRecord, relative: PurePosixPath, name: str, temp_dir: Path):
        self.record = record
        self.name = name
        self._relative = relative
        temp_dir.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=temp_dir, prefix="upload-")
        self._temp = Path(temp_name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append a chunk."""
        if self._file is None:
            raise RuntimeError("the upload has ended")
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> FileInfo:
        """Link the complete file into the payload and return its details.

        Raises:
            ApiError: The name is taken (``FILE_EXISTS``) or now resolves outside the payload;
                the temporary file is removed either way.
        """
        try:
            if self._file is None:
                raise RuntimeError("the upload has ended")
            self._file.close()
            self._file = None
            base = self.record.upload_root
            target = _check_new_file(base, self._relative, self.name)
            os.chmod(self._temp, _FILE_MODE)
            target.parent.mkdir(parents=True, exist_ok=True)
            _inside(base, self._relative, self.name)  # the folders just made must not escape
            try:
                os.link(self._temp, target)  # fails if the name appeared meanwhile: no clobber
            except FileExistsError:
                raise ApiError(
                    ErrorCode.FILE_EXISTS, f"payload already has a file {self.name!r}"
                ) from None
            relative_to_root = target.relative_to(self.record.root).as_posix()
            return _file_info(target, relative_to_root)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


def _check_new_file(base: Path, relative: PurePosixPath, name: str) -> Path:
    """The path for a new file ``relative`` under ``base``, refused if taken or blocked."""
    target = _inside(base, relative, name)
    if target.exists() or target.is_symlink():
        raise ApiError(ErrorCode.FILE_EXISTS, f"payload already has a file {name!r}")
    for parent in list(relative.parents)[:-1]:
        folder = base.joinpath(*parent.parts)
        if folder.exists() and not folder.is_dir():
            raise _bad_name(name, f"{parent.as_posix()!r} is a file, not a folder")
    return target


class PayloadStore:
    """All payloads, by id, each in its folder under ``root``.

    ``on_saved`` and ``on_removed`` (by id), when set, are called when a payload is created
    or deleted, before the caller gets control back: the persistence hooks. (The files live
    in the payload's folder and need no hook.)

    Args:
        root: The folder holding one sub-folder per payload (``<workspace>/payloads``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._payloads: dict[uuid.UUID, PayloadRecord] = {}
        self.on_saved: Callable[[PayloadRecord], None] | None = None
        self.on_removed: Callable[[uuid.UUID], None] | None = None

    def restore(self, record: PayloadRecord) -> None:
        """Put back a payload loaded from saved state (no hook is called)."""
        self._payloads[record.payload_id] = record

    @property
    def _temp_dir(self) -> Path:
        # Beside the payload folders (same file system, so the final link is atomic); the
        # name is not a payload id, so it never clashes with one.
        return self.root / ".uploads"

    def create(
        self,
        payload_type: PayloadType = PayloadType.REUSABLE,
        *,
        metadata: Mapping[str, str] | None = None,
        job_id: uuid.UUID | None = None,
    ) -> PayloadRecord:
        """Create an empty payload and its folder."""
        payload_id = uuid.uuid4()
        root = self.root / payload_id.hex
        root.mkdir(parents=True)
        record = PayloadRecord(
            payload_id=payload_id,
            type=payload_type,
            root=root,
            metadata=dict(metadata or {}),
            job_id=job_id,
        )
        self._payloads[payload_id] = record
        if self.on_saved is not None:
            try:
                self.on_saved(record)
            except BaseException:
                del self._payloads[payload_id]
                shutil.rmtree(root, ignore_errors=True)
                raise
        return record

    def set_metadata(self, record: PayloadRecord, metadata: dict[str, str]) -> None:
        """Replace a payload's metadata and save it before the caller acknowledges.

        If saving fails, the old metadata is put back and the error propagates.
        """
        replace_metadata(record, metadata, self.on_saved, record)

    def get(self, payload_id: uuid.UUID) -> PayloadRecord:
        """Return the payload with this id.

        Raises:
            ApiError: No such payload (``PAYLOAD_NOT_FOUND``).
        """
        try:
            return self._payloads[payload_id]
        except KeyError:
            raise ApiError(
                ErrorCode.PAYLOAD_NOT_FOUND, f"payload {payload_id.hex} not found"
            ) from None

    def all(self) -> list[PayloadRecord]:
        """Every payload, oldest first."""
        return list(self._payloads.values())

    def delete(self, payload_id: uuid.UUID) -> None:
        """Forget a payload and remove its folder.

        Raises:
            ApiError: No such payload.
        """
        record = self.get(payload_id)
        if self.on_removed is not None:
            self.on_removed(payload_id)
        del self._payloads[payload_id]
        shutil.rmtree(record.root, ignore_errors=True)

    def files(self, record: PayloadRecord) -> list[FileInfo]:
        """The payload's regular files (symlinks are skipped), sorted by name."""
        return [_file_info(path, name) for name, path in _walk_files(record.root)]

    def begin_upload(self, record: PayloadRecord, name: str) -> Upload:
        """Start writing the new file ``name`` (relative to the payload's upload folder).

        Raises:
            ApiError: The name is invalid or escapes the payload (``INVALID_BLOB_NAME``), or
                the payload has that file already (``FILE_EXISTS``).
        """
        relative = check_blob_name(name)
        _check_new_file(record.upload_root, relative, name)
        return Upload(record, relative, name, self._temp_dir)

    def open_file(self, record: PayloadRecord, name: str) -> tuple[FileInfo, BinaryIO]:
        """Open the file ``name`` (relative to the payload's root) for reading.

        Returns:
            The file's details and the open file; the caller closes it.

        Raises:
            ApiError: The name is invalid or escapes the payload, or there is no such
                regular file (``FILE_NOT_FOUND``).
        """
        target = _inside(record.root, check_blob_name(name), name)
        real = os.path.realpath(target)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise ApiError(ErrorCode.FILE_NOT_FOUND, f"payload has no file {name!r}") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _bad_name(name, "it is a symlink") from None
            raise
        handle = os.fdopen(fd, "rb")
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            handle.close()
            raise ApiError(ErrorCode.FILE_NOT_FOUND, f"{name!r} is not a file of the payload")
        return FileInfo(name=name, size=st.st_size, mode=stat.S_IMODE(st.st_mode)), handle

    def remove_file(self, record: PayloadRecord, name: str) -> FileInfo:
        """Delete the file ``name`` (relative to the payload's root).

        Raises:
            ApiError: The name is invalid or escapes the payload, or there is no such file.
        """
        target = _inside(record.root, check_blob_name(name), name)
        if target.is_symlink() or not target.is_file():
            raise ApiError(ErrorCode.FILE_NOT_FOUND, f"payload has no file {name!r}")
        info = _file_info(target, name)
        target.unlink()
        return info

    def copy_plan(self, sources: Iterable[PayloadRecord], dest: Path) -> list[tuple[Path, Path]]:
        """Plan copying every file of ``sources`` into ``dest`` (keeping relative names).

        Raises:
            ApiError: Two sources (or a source and a file already in ``dest``) have the same
                file, or one's file is another's folder (``INVALID_JOB_INPUTS``).
        """
        taken: dict[str, str] = {name: "the job payload" for name, _ in _walk_files(dest)}
        folders: dict[str, str] = {}
        for name, owner in taken.items():
            for parent in PurePosixPath(name).parents:
                folders.setdefault(parent.as_posix(), owner)
        plan: list[tuple[Path, Path]] = []
        for record in sources:
            owner = f"payload {record.payload_id.hex}"
            for name, path in _walk_files(record.root):
                clash = taken.get(name) or folders.get(name)
                if clash is None:
                    clash = next(
                        (
                            taken[p.as_posix()]
                            for p in PurePosixPath(name).parents
                            if p.as_posix() in taken
                        ),
                        None,
                    )
                if clash is not None:
                    raise ApiError(
                        ErrorCode.INVALID_JOB_INPUTS,
                        f"input file {name!r} of {owner} collides with one of {clash}",
                    )
                taken[name] = owner
                for parent in PurePosixPath(name).parents:
                    folders.setdefault(parent.as_posix(), owner)
                plan.append((path, dest.joinpath(*PurePosixPath(name).parts)))
        return plan


def copy_files(plan: Iterable[tuple[Path, Path]]) -> None:
    """Copy each ``(source, destination)`` file (blocking; run it in a worker thread)."""
    for source, destination in plan:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination, follow_symlinks=False)
