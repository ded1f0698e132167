"""Payloads: folders of files under ``<workspace>/payloads/<payload-id>/``.

A reusable payload (created through the API) holds what the client uploads. A pipeline payload
is created for one job and holds the job's folders (see :class:`~server_mock._workspace.JobLayout`);
uploads into it land in its ``input/`` folder.

Blob names are relative POSIX paths (``scans/ct.mhd``); one leading ``/`` is ignored, as the
Clara docs say ("When a name is prefixed with a slash '/' character the prefix is ignored",
PayloadFileDetails). A name is refused when it is empty, contains ``.``/``..``/empty
components, a backslash, NUL or another control character, has a component longer than the
file system's 255 bytes, is nested more than :data:`MAX_BLOB_NAME_DEPTH` deep, makes a path
longer than the file system's, or resolves (through symlinks) outside the payload's folder.

Names are case-preserving: an upload stores the name as given (two names that differ only in
case are two files). Download and Remove find a file case-insensitively, by the docs' rules
for Download: the file whose name matches exactly, else the only one whose name matches
ignoring case; several that match ignoring case and none exactly is an error that names them
(:meth:`PayloadStore.find_file`).

Uploads are written to a temporary file in ``<payloads>/.uploads/`` and linked into place
only when complete, so a failed upload leaves no file in the payload and a reader never sees
half a file. The temporary file is removed as soon as the upload ends without its file
(:meth:`Upload.abort`), and the ones a crash left behind are removed when the platform starts
(:meth:`PayloadStore.remove_partial_uploads`).

The records live on the mock's event-loop thread; file I/O happens there too except for the
bulk copy of input payloads (:func:`copy_files`), which callers run in a worker thread.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
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
    "MAX_BLOB_NAME_DEPTH",
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

MAX_BLOB_NAME_DEPTH = 128
"""Most components (folders and the file) of a blob name.

The mock's choice: far deeper than any real image tree, and far below the depth at which
Python's recursive file-tree helpers (``os.walk``, ``shutil.rmtree``, ``Path.mkdir(parents=True)``)
hit the interpreter's recursion limit.
"""

_MAX_COMPONENT_BYTES = 255  # NAME_MAX of Linux file systems
_PATH_MAX = 4096  # Linux's PATH_MAX, the terminating NUL included
_FILE_MODE = 0o644
_TEMP_PREFIX = "upload-"

_log = logging.getLogger("server_mock.payloads")


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
    """Return ``name`` as a relative path (one leading ``/`` dropped), or refuse it.

    Raises:
        ApiError: ``INVALID_BLOB_NAME`` naming what is wrong.
    """
    relative = name.removeprefix("/")  # "the prefix is ignored" (PayloadFileDetails)
    if not relative:
        raise _bad_name(name, "the name is empty")
    if len(name) > MAX_BLOB_NAME_CHARS:
        raise _bad_name(name, f"longer than {MAX_BLOB_NAME_CHARS} characters")
    if "\\" in name:
        raise _bad_name(name, "backslashes are not allowed; separate folders with '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise _bad_name(name, "NUL and other control characters are not allowed")
    parts = relative.split("/")
    if len(parts) > MAX_BLOB_NAME_DEPTH:
        raise _bad_name(
            name, f"{len(parts)} path components; at most {MAX_BLOB_NAME_DEPTH} are allowed"
        )
    for part in parts:
        if part in ("", ".", ".."):
            raise _bad_name(name, "empty, '.' and '..' path components are not allowed")
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > _MAX_COMPONENT_BYTES:
            shown = part if len(part) <= 40 else part[:37] + "..."
            raise _bad_name(
                name,
                f"the path component {shown!r} is {size} bytes; the file system allows at "
                f"most {_MAX_COMPONENT_BYTES}",
            )
    return PurePosixPath(*parts)


def _inside(base: Path, relative: PurePosixPath, name: str) -> Path:
    """``base / relative``, refused when too long a path or it resolves outside ``base``."""
    target = base.joinpath(*relative.parts)
    size = len(os.fsencode(target))
    if size >= _PATH_MAX:
        raise _bad_name(
            name,
            f"inside the payload's folder the path is {size} bytes; the file system allows "
            f"at most {_PATH_MAX - 1}",
        )
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(target))
    if real == real_base or not real.is_relative_to(real_base):
        raise _bad_name(name, "it resolves outside the payload (through a symlink)")
    return target


def _case_insensitive_matches(base: Path, relative: PurePosixPath) -> list[PurePosixPath]:
    """Every regular file under ``base`` whose path equals ``relative`` ignoring case, sorted.

    Walks one component at a time (folders that differ only in case are each searched) and
    follows no symlink: only real folders are entered and only regular files returned.
    """
    found: list[PurePosixPath] = [PurePosixPath()]
    last = len(relative.parts) - 1
    for index, part in enumerate(relative.parts):
        wanted = part.lower()
        following: list[PurePosixPath] = []
        for folder in found:
            try:
                with os.scandir(base.joinpath(*folder.parts)) as scan:
                    entries = list(scan)
            except OSError:  # not a folder (any more), or unreadable: nothing matches there
                continue
            for entry in entries:
                if entry.name.lower() != wanted:
                    continue
                with contextlib.suppress(OSError):
                    is_file = entry.is_file(follow_symlinks=False)
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if is_file if index == last else is_dir:
                        following.append(folder / entry.name)
        found = following
    return sorted(found)


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

    Attributes:
        record: The payload the file goes into.
        name: The file's name as the client gave it.
        temp_path: The temporary file the chunks go to.
        size: Bytes received so far.
    """

    def __init__(self, record: PayloadRecord, relative: PurePosixPath, name: str, temp_dir: Path):
        self.record = record
        self.name = name
        self._relative = relative
        temp_dir.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=temp_dir, prefix=_TEMP_PREFIX)
        self.temp_path = Path(temp_name)
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
            os.chmod(self.temp_path, _FILE_MODE)
            target.parent.mkdir(parents=True, exist_ok=True)
            _inside(base, self._relative, self.name)  # the folders just made must not escape
            try:
                os.link(self.temp_path, target)  # fails if the name appeared meanwhile: no clobber
            except FileExistsError:
                raise ApiError(
                    ErrorCode.FILE_EXISTS, f"payload already has a file {self.name!r}"
                ) from None
            relative_to_root = target.relative_to(self.record.root).as_posix()
            return _file_info(target, relative_to_root)
        finally:
            self.abort()

    def abort(self) -> bool:
        """Drop the temporary file (idempotent); return whether there was one to remove."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            self.temp_path.unlink()
        except FileNotFoundError:
            return False
        return True


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

    def remove_partial_uploads(self) -> list[tuple[str, int]]:
        """Remove the temporary files of uploads that never ended (a crash left them).

        Call only while no upload runs (at start-up): every file in the temporary folder
        belongs to an upload in progress or to a dead one. Each removal is logged.

        Returns:
            The name and size of each file removed.
        """
        removed: list[tuple[str, int]] = []
        if not self._temp_dir.is_dir():
            return removed
        for entry in sorted(self._temp_dir.iterdir()):
            try:
                size = entry.lstat().st_size
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as error:
                _log.error("could not remove the partial upload %s: %s", entry, error)
                continue
            _log.warning(
                "removed partial upload %s (%d bytes): an upload that never ended, left by "
                "an earlier run",
                entry,
                size,
            )
            removed.append((entry.name, size))
        return removed

    def find_file(self, record: PayloadRecord, name: str) -> tuple[Path, str]:
        """The file ``name`` names (relative to the payload's root), found as Download does.

        "Payload file names are case preserving" and a download finds its file so: the file
        whose name matches exactly; else the only file whose name matches ignoring case; when
        several match ignoring case and none exactly, "no files will be downloaded and an
        error will be returned" (Payloads Download RPC, 0.7.4 and 0.8.1). Case is compared
        by ``str.lower`` of each path component. The search never follows a symlink; an
        exact name may (within the payload), as before.

        Returns:
            The file's path and its stored name (relative to the payload's root).

        Raises:
            ApiError: The name is invalid or escapes the payload (``INVALID_BLOB_NAME``), no
                file matches, or several match ignoring case and none exactly
                (``FILE_NOT_FOUND``, naming them).
        """
        relative = check_blob_name(name)
        exact = _inside(record.root, relative, name)
        if exact.is_file() or exact.is_symlink():
            return exact, relative.as_posix()
        matches = _case_insensitive_matches(record.root, relative)
        if len(matches) == 1:
            return record.root.joinpath(*matches[0].parts), matches[0].as_posix()
        if not matches:
            raise ApiError(ErrorCode.FILE_NOT_FOUND, f"payload has no file {name!r}")
        shown = ", ".join(repr(m.as_posix()) for m in matches[:5])
        more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
        raise ApiError(
            ErrorCode.FILE_NOT_FOUND,
            f"payload has no file {name!r}; {len(matches)} files match it ignoring case "
            f"({shown}{more}) and none exactly: name one of them exactly",
        )

    def open_file(self, record: PayloadRecord, name: str) -> tuple[FileInfo, BinaryIO]:
        """Open the file ``name`` (relative to the payload's root) for reading.

        The file is found as :meth:`find_file` says (case-insensitively).

        Returns:
            The file's details (under its stored name) and the open file; the caller closes
            it.

        Raises:
            ApiError: The name is invalid or escapes the payload, or there is no such
                regular file (``FILE_NOT_FOUND``).
        """
        target, stored = self.find_file(record, name)
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
        return FileInfo(name=stored, size=st.st_size, mode=stat.S_IMODE(st.st_mode)), handle

    def remove_file(self, record: PayloadRecord, name: str) -> FileInfo:
        """Delete the file ``name`` (relative to the payload's root).

        The file is found as for a download (:meth:`find_file`): the docs give those rules
        for Download only, and say "Payload file names are case-insensitive" of every name
        (PayloadFileDetails), so Remove finds what Download would.

        Raises:
            ApiError: The name is invalid or escapes the payload, or there is no such file.
        """
        target, stored = self.find_file(record, name)
        if target.is_symlink() or not target.is_file():
            raise ApiError(ErrorCode.FILE_NOT_FOUND, f"payload has no file {name!r}")
        info = _file_info(target, stored)
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
