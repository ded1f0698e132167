"""The model repository: inference models, and the catalogs and instances that list them.

A model is uploaded as a zip archive ("Contents of Model as a compressed zip stream", Models
UploadModel RPC, Clara Deploy SDK 0.7.4), usually of a Triton model directory. Each model
lives in the workspace under ``<workspace>/models/<model-id>/``::

    model.zip    the archive exactly as uploaded (what DownloadModel streams back)
    files/       its content, extracted (what an operator that declares the model gets)

A model's name is unique in the repository, compared case-insensitively (like Clara's other
names); uploading a model with a name that exists replaces that model's content, type and
metadata and keeps its id, so catalogs that list it keep listing it. Deleting a model removes
it from every catalog and instance. A catalog and an instance are the same thing to the mock:
a named (by id) set of models, which the real platform loads into an inference server.

Archives are checked before anything is stored (:mod:`server_mock._model_archive`): a member
that is absolute, climbs out with ``..``, is a link or a device, or an archive larger than the
limits when extracted, refuses the upload (``INVALID_MODEL``), and nothing is kept.

An upload is received and extracted in a temporary folder, ``<models>/.uploads/model-*``,
removed as soon as the upload ends without being stored (:meth:`ModelUpload.abort`). Storing
it (:meth:`ModelRepository.commit`) takes these steps; the failpoint after each is named
(:data:`~server_mock._failpoints.MODEL_COMMIT_FAILPOINTS`):

1. ``model_commit.intent_written``: the intent ``.uploads/commit-<id>.json`` (the new
   record's name, type, metadata and size) is written whole (a temporary file renamed);
2. ``model_commit.old_set_aside`` (a replacement only): the old ``<id>/`` is moved to
   ``.uploads/replaced-<id>/``;
3. ``model_commit.new_in_place``: the new folder is moved to ``<id>/``;
4. ``model_commit.saved``: the record is saved (``on_model_saved``), the commit point, as
   for every change of the state;
5. ``model_commit.old_removed``: ``replaced-<id>/`` is removed;
6. the intent is removed.

After a crash, :meth:`ModelRepository.recover_uploads` (at start-up, once the saved records
are loaded) reads each intent left: when the saved record is the new one, the commit
happened, so the new folder is kept and the old copy dropped; otherwise the old folder is
put back (or, for a model that had none, the new folder removed). Either way the model is
the old one or the new one, complete, with a record that describes it. Then every other
leftover of ``.uploads/`` is removed.

For the platform (operator ``models:`` at ``Jobs.Start``), :meth:`ModelRepository.find`
resolves a model by name::

    files = state.models.find("segmentation_ct_spleen")   # Path of files/, or None

Everything here runs on the mock's event-loop thread.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from server_mock._errors import ApiError, ErrorCode
from server_mock._failpoints import failpoint
from server_mock._saved_metadata import replace_metadata

__all__ = [
    "MAX_MODEL_NAME_CHARS",
    "CatalogKind",
    "CatalogRecord",
    "ModelRecord",
    "ModelRepository",
    "ModelType",
    "ModelUpload",
    "check_model_name",
]

MAX_MODEL_NAME_CHARS: Final = 255
"""Longest model name (it names a folder)."""

_ARCHIVE = "model.zip"
_FILES = "files"
_UPLOAD_PREFIX = "model-"
_INTENT_PREFIX = "commit-"
_INTENT_SUFFIX = ".json"
_ASIDE_PREFIX = "replaced-"

_log = logging.getLogger("server_mock.models")


class ModelType(enum.Enum):
    """The inference framework a model was built for (the legacy ``ModelType``)."""

    UNKNOWN = "unknown"
    TENSOR_FLOW = "tensorflow"
    TENSOR_RT = "tensorrt"
    PY_TORCH = "pytorch"


class CatalogKind(enum.Enum):
    """A model catalog, or a catalog instance (an inference server's set of models)."""

    CATALOG = "catalog"
    INSTANCE = "instance"


@dataclass(slots=True)
class ModelRecord:
    """One model of the repository (mutable; owned by the loop thread).

    Attributes:
        model_id: The model's id.
        name: The model's name, unique (case-insensitively) in the repository.
        type: The framework the model was built for.
        root: The model's folder (``model.zip`` and ``files/``).
        metadata: The model's metadata.
        size: The size of the uploaded archive, in bytes.
        created_at: When the model was first uploaded (Unix time).
    """

    model_id: uuid.UUID
    name: str
    type: ModelType
    root: Path
    metadata: dict[str, str] = field(default_factory=dict)
    size: int = 0
    created_at: float = field(default_factory=time.time)

    @property
    def archive(self) -> Path:
        """The archive as uploaded."""
        return self.root / _ARCHIVE

    @property
    def files(self) -> Path:
        """The archive's content, extracted."""
        return self.root / _FILES


@dataclass(slots=True)
class CatalogRecord:
    """A catalog or a catalog instance: a set of models (mutable; owned by the loop thread).

    Attributes:
        catalog_id: The catalog's (or instance's) id.
        kind: Catalog or instance.
        model_ids: The models it lists, in the order they were given.
        created_at: When it was created (Unix time).
    """

    catalog_id: uuid.UUID
    kind: CatalogKind
    model_ids: tuple[uuid.UUID, ...] = ()
    created_at: float = field(default_factory=time.time)


def check_model_name(name: str) -> None:
    """Refuse a model name that cannot name a folder.

    Raises:
        ApiError: ``INVALID_MODEL``, naming the field and the value.
    """
    shown = repr(name if len(name) <= 64 else name[:61] + "...")
    if not name:
        raise ApiError(ErrorCode.INVALID_MODEL, "field details.name: a model needs a name")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise ApiError(
            ErrorCode.INVALID_MODEL,
            f"field details.name: model name {shown} is longer than {MAX_MODEL_NAME_CHARS}",
        )
    if name in (".", "..") or any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ApiError(
            ErrorCode.INVALID_MODEL,
            f"field details.name: model name {shown} must not be '.' or '..' nor contain "
            "'/', '\\' or control characters",
        )


class ModelUpload:
    """One model being uploaded: chunks go to a temporary file until the last one.

    Create with :meth:`ModelRepository.begin_upload`; end with :meth:`ModelRepository.commit`
    or :meth:`abort` (always call :meth:`abort` last; it is idempotent).

    Attributes:
        name: The model's name.
        folder: The temporary folder (the archive, and its content once extracted).
        archive: The archive being received, in ``folder``.
        size: Bytes received so far.
    """

    def __init__(self, name: str, temp_dir: Path) -> None:
        self.name = name
        temp_dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(dir=temp_dir, prefix=_UPLOAD_PREFIX))
        self.archive = self.folder / _ARCHIVE
        self._file: BinaryIO | None = open(self.archive, "wb")  # noqa: SIM115 - closed in close()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append a chunk."""
        if self._file is None:
            raise RuntimeError("the upload has ended")
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        """Finish writing the archive (before it is extracted)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def abort(self) -> bool:
        """Drop the temporary folder (idempotent); return whether there was one to remove.

        After a commit the folder is the model's and is gone from here: nothing to remove.
        """
        self.close()
        if not self.folder.exists():
            return False
        shutil.rmtree(self.folder, ignore_errors=True)
        return True


def _intent_fields(record: ModelRecord) -> dict[str, object]:
    """What an intent file says of the record a commit saves (and recovery compares)."""
    return {
        "name": record.name,
        "type": record.type.value,
        "metadata": dict(record.metadata),
        "size": record.size,
    }


def _write_intent(path: Path, record: ModelRecord) -> None:
    """Write the intent file whole (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(_intent_fields(record)), encoding="utf-8")
    os.replace(temp, path)


def _remove_folder(folder: Path) -> None:
    """Remove ``folder`` if it exists, logging (not raising) a failure."""
    if not folder.exists():
        return
    try:
        shutil.rmtree(folder)
    except OSError as error:
        _log.error("could not remove %s (the next start retries): %s", folder, error)


def _remove_entry(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _size_of(entry: Path) -> int:
    """Bytes in ``entry`` (a file, or a folder's files), for the log."""
    if not entry.is_dir() or entry.is_symlink():
        return entry.lstat().st_size
    return sum(p.lstat().st_size for p in entry.rglob("*") if not p.is_dir())


class ModelRepository:
    """Every model, catalog and instance, by id; models' files under ``root``.

    ``on_model_saved``/``on_model_removed`` and ``on_catalog_saved``/``on_catalog_removed``
    (by id), when set, are called after each change, before the caller gets control back: the
    persistence hooks. If one raises, the change is undone and the error propagates.

    Args:
        root: The folder holding one sub-folder per model (``<workspace>/models``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._models: dict[uuid.UUID, ModelRecord] = {}
        self._catalogs: dict[uuid.UUID, CatalogRecord] = {}
        self.on_model_saved: Callable[[ModelRecord], None] | None = None
        self.on_model_removed: Callable[[uuid.UUID], None] | None = None
        self.on_catalog_saved: Callable[[CatalogRecord], None] | None = None
        self.on_catalog_removed: Callable[[uuid.UUID], None] | None = None

    @property
    def _temp_dir(self) -> Path:
        # Beside the model folders (same file system, so the final rename is atomic); the
        # name is not a model id, so it never clashes with one.
        return self.root / ".uploads"

    # -- the platform's view ----------------------------------------------------------------

    def find(self, name: str) -> Path | None:
        """The folder of the model called ``name`` (case-insensitively), or ``None``.

        The folder holds the model's archive extracted (typically a Triton model directory).
        """
        record = self.named(name)
        return None if record is None else record.files

    def named(self, name: str) -> ModelRecord | None:
        """The model called ``name`` (case-insensitively), or ``None``."""
        wanted = name.lower()
        return next((m for m in self._models.values() if m.name.lower() == wanted), None)

    # -- models -----------------------------------------------------------------------------

    def restore_model(self, record: ModelRecord) -> None:
        """Put back a model loaded from saved state (no hook is called)."""
        self._models[record.model_id] = record

    def get(self, model_id: uuid.UUID) -> ModelRecord:
        """Return the model with this id.

        Raises:
            ApiError: No such model (``MODEL_NOT_FOUND``).
        """
        try:
            return self._models[model_id]
        except KeyError:
            raise ApiError(ErrorCode.MODEL_NOT_FOUND, f"model {model_id.hex} not found") from None

    def all(self) -> list[ModelRecord]:
        """Every model, oldest first."""
        return list(self._models.values())

    def begin_upload(self, name: str) -> ModelUpload:
        """Start receiving the archive of the model ``name``.

        Raises:
            ApiError: ``INVALID_MODEL``: the name is not usable.
        """
        check_model_name(name)
        return ModelUpload(name, self._temp_dir)

    def commit(
        self, upload: ModelUpload, model_type: ModelType, metadata: Mapping[str, str]
    ) -> ModelRecord:
        """Store an upload whose archive was extracted into ``upload.folder / "files"``.

        A model with the same name (case-insensitively) is replaced and keeps its id. The
        steps, and what a crash between them leaves, are in the module's docstring.

        Raises:
            OSError: Moving the files into place failed (nothing changed).
        """
        existing = self.named(upload.name)
        model_id = existing.model_id if existing is not None else uuid.uuid4()
        record = ModelRecord(
            model_id=model_id,
            name=upload.name,
            type=model_type,
            root=self.root / model_id.hex,
            metadata=dict(metadata),
            size=upload.size,
            created_at=existing.created_at if existing is not None else time.time(),
        )
        root, aside, intent = record.root, self._aside(record.model_id), self._intent(record)
        _write_intent(intent, record)
        failpoint("model_commit.intent_written")
        set_aside = False
        try:
            if root.exists():
                os.replace(root, aside)
                set_aside = True
                failpoint("model_commit.old_set_aside")
            os.replace(upload.folder, root)
            failpoint("model_commit.new_in_place")
        except BaseException:
            if set_aside:
                os.replace(aside, root)
            intent.unlink(missing_ok=True)
            raise
        self._models[record.model_id] = record
        try:
            if self.on_model_saved is not None:
                self.on_model_saved(record)
        except BaseException:
            if existing is not None:
                self._models[record.model_id] = existing
            else:
                del self._models[record.model_id]
            os.replace(root, upload.folder)  # upload.abort() removes it
            if set_aside:
                os.replace(aside, root)
            intent.unlink(missing_ok=True)
            raise
        failpoint("model_commit.saved")
        _remove_folder(aside)
        failpoint("model_commit.old_removed")
        intent.unlink(missing_ok=True)
        return record

    def _aside(self, model_id: uuid.UUID) -> Path:
        """Where a replaced model's old folder waits until the new one is saved."""
        return self._temp_dir / f"{_ASIDE_PREFIX}{model_id.hex}"

    def _intent(self, record: ModelRecord) -> Path:
        """The intent file of a commit of ``record``'s model."""
        return self._temp_dir / f"{_INTENT_PREFIX}{record.model_id.hex}{_INTENT_SUFFIX}"

    def recover_uploads(self) -> list[str]:
        """Finish or undo the commits a crash interrupted, then remove every partial upload.

        Call at start-up, once the saved records are loaded and before any upload runs: every
        entry of the temporary folder then belongs to a dead upload. For each intent file the
        rule of the module's docstring applies (the saved record decides); everything else
        there (uploads received or extracted but never committed) is removed, except that an
        old folder set aside is never removed while its model has no folder: it is put back.
        What cannot be recovered is kept and logged as an error. Each step is logged.

        Returns:
            The names of the entries of the temporary folder that were handled (removed,
            put back, or the intent of a commit finished or undone).
        """
        handled: list[str] = []
        if not self._temp_dir.is_dir():
            return handled
        kept: set[str] = set()
        for intent in sorted(self._temp_dir.glob(f"{_INTENT_PREFIX}*{_INTENT_SUFFIX}")):
            if self._recover_commit(intent):
                handled.append(intent.name)
            else:
                model_hex = intent.name.removeprefix(_INTENT_PREFIX).removesuffix(_INTENT_SUFFIX)
                kept.update((intent.name, f"{_ASIDE_PREFIX}{model_hex}"))
        for entry in sorted(self._temp_dir.iterdir()):
            if entry.name in kept:
                continue
            try:
                if entry.name.startswith(_ASIDE_PREFIX) and self._put_back(entry):
                    handled.append(entry.name)
                    continue
                size = _size_of(entry)
                _remove_entry(entry)
            except OSError as error:
                _log.error("could not remove the partial model upload %s: %s", entry, error)
                continue
            _log.warning(
                "removed partial upload %s (%d bytes): a model upload that never ended, left "
                "by an earlier run",
                entry,
                size,
            )
            handled.append(entry.name)
        return handled

    def _put_back(self, aside: Path) -> bool:
        """Put a model's old folder back when the model has no folder; whether it did."""
        try:
            model_id = uuid.UUID(hex=aside.name.removeprefix(_ASIDE_PREFIX))
        except ValueError:
            return False  # not a folder this code set aside: a leftover
        root = self.root / model_id.hex
        if root.exists():
            return False  # the old copy of a replacement that was saved
        os.replace(aside, root)
        _log.warning(
            "model %s had no folder: put back its files set aside at %s", model_id.hex, aside
        )
        return True

    def _recover_commit(self, intent: Path) -> bool:
        """Apply the recovery rule to one intent file; whether it could."""
        try:
            model_id = uuid.UUID(
                hex=intent.name.removeprefix(_INTENT_PREFIX).removesuffix(_INTENT_SUFFIX)
            )
            wanted = json.loads(intent.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            # Intents are written whole, then renamed: this is not one of ours, or the disk
            # lies. Without it the right version cannot be told, so nothing is touched.
            _log.error(
                "model commit intent %s is unreadable: %s; it and any folder it set aside are "
                "kept, for someone to check",
                intent,
                error,
            )
            return False
        record = self._models.get(model_id)
        committed = record is not None and _intent_fields(record) == wanted
        root, aside = self.root / model_id.hex, self._aside(model_id)
        what = f"model {model_id.hex}"
        if isinstance(wanted, dict) and "name" in wanted:
            what += f" ({wanted['name']!r})"
        try:
            if aside.exists() and not (committed and root.exists()):
                if root.exists():
                    shutil.rmtree(root)
                os.replace(aside, root)
                outcome = "its new version was not saved: put its previous files back"
            elif committed:
                _remove_folder(aside)
                outcome = "its new version was saved: kept it"
            elif record is None and root.exists():
                shutil.rmtree(root)
                outcome = "it was never saved: removed its files"
            else:
                outcome = "nothing had changed yet"
            intent.unlink()
        except OSError as error:
            _log.error(
                "could not recover the interrupted commit of %s: %s; its intent and any "
                "folder it set aside are kept (the next start retries)",
                what,
                error,
            )
            return False
        _log.warning("%s: a crash interrupted the commit of an upload; %s", what, outcome)
        return True

    def set_metadata(self, record: ModelRecord, metadata: dict[str, str]) -> None:
        """Replace a model's metadata and save it before the caller acknowledges.

        If saving fails, the old metadata is put back and the error propagates.
        """
        replace_metadata(record, metadata, self.on_model_saved, record)

    def delete(self, model_id: uuid.UUID) -> ModelRecord:
        """Forget a model, remove its files, and drop it from every catalog and instance.

        Raises:
            ApiError: No such model.
        """
        record = self.get(model_id)
        listing = [c for c in self._catalogs.values() if model_id in c.model_ids]
        for catalog in listing:
            self.set_models(catalog, tuple(m for m in catalog.model_ids if m != model_id))
        if self.on_model_removed is not None:
            self.on_model_removed(model_id)
        del self._models[model_id]
        shutil.rmtree(record.root, ignore_errors=True)
        return record

    # -- catalogs and instances -------------------------------------------------------------

    def restore_catalog(self, record: CatalogRecord) -> None:
        """Put back a catalog or instance loaded from saved state (no hook is called)."""
        self._catalogs[record.catalog_id] = record

    def create_catalog(self, kind: CatalogKind) -> CatalogRecord:
        """Create an empty catalog or instance."""
        record = CatalogRecord(catalog_id=uuid.uuid4(), kind=kind)
        self._catalogs[record.catalog_id] = record
        if self.on_catalog_saved is not None:
            try:
                self.on_catalog_saved(record)
            except BaseException:
                del self._catalogs[record.catalog_id]
                raise
        return record

    def catalog(self, kind: CatalogKind, catalog_id: uuid.UUID) -> CatalogRecord:
        """Return the catalog (or instance) with this id.

        Raises:
            ApiError: No such catalog (``CATALOG_NOT_FOUND``) or instance
                (``INSTANCE_NOT_FOUND``).
        """
        record = self._catalogs.get(catalog_id)
        if record is None or record.kind is not kind:
            code = (
                ErrorCode.CATALOG_NOT_FOUND
                if kind is CatalogKind.CATALOG
                else ErrorCode.INSTANCE_NOT_FOUND
            )
            raise ApiError(code, f"{kind.value} {catalog_id.hex} not found")
        return record

    def catalogs(self, kind: CatalogKind) -> list[CatalogRecord]:
        """Every catalog (or instance), oldest first."""
        return [c for c in self._catalogs.values() if c.kind is kind]

    def models_of(self, record: CatalogRecord) -> list[ModelRecord]:
        """The models a catalog lists, in its order."""
        return [self._models[m] for m in record.model_ids if m in self._models]

    def set_models(self, record: CatalogRecord, model_ids: Iterable[uuid.UUID]) -> None:
        """Replace the models a catalog (or instance) lists.

        Raises:
            ApiError: A model is unknown (``MODEL_NOT_FOUND``); nothing changes.
        """
        wanted = tuple(dict.fromkeys(model_ids))  # in order, without repeats
        for model_id in wanted:
            self.get(model_id)
        before, record.model_ids = record.model_ids, wanted
        if self.on_catalog_saved is not None:
            try:
                self.on_catalog_saved(record)
            except BaseException:
                record.model_ids = before
                raise

    def delete_catalog(self, kind: CatalogKind, catalog_id: uuid.UUID) -> CatalogRecord:
        """Forget a catalog (or instance); the models it lists are kept.

        Raises:
            ApiError: No such catalog or instance.
        """
        record = self.catalog(kind, catalog_id)
        if self.on_catalog_removed is not None:
            self.on_catalog_removed(catalog_id)
        del self._catalogs[catalog_id]
        return record
