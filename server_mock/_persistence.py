"""The mock platform's state in a SQLite file: ``clara-mock serve --state PATH``.

With a state file the platform survives a restart; without one (the default) it keeps its
state in memory only.

What is saved: pipelines (definition text, metadata), payload records (their files already
live in the workspace), jobs with their job records, every stage's state, message, report id
and ``reports_applied``, the model repository's records (models, catalogs, instances; the
models' files live in the workspace too), and each stage's launch record (which process its
operator runs as: what a restarted platform adopts, see :mod:`server_mock._launches`). Not
saved: drivers' progress events.

Writes happen on the platform's event-loop thread, synchronously, from the stores' hooks
(:attr:`Job.on_change <server_mock._jobs.Job.on_change>`, ``PipelineStore.on_saved`` ...),
so each state change is one committed transaction before the RPC that caused it is
answered; :meth:`StateStore.transaction` groups the writes of one request (a job, its
payload and its record). The database runs in WAL mode with ``synchronous=FULL``: a crash at
any point loses nothing that was acknowledged, and never leaves half a change.

Schema (version 3)::

    meta(key PRIMARY KEY, value)
    pipelines(pipeline_id PRIMARY KEY, path, text, metadata, created_at, updated_at)
    payloads(payload_id PRIMARY KEY, type, metadata, job_id, created_at)
    jobs(job_id PRIMARY KEY, name, pipeline_id, state, message,
         created_at, started_at, ended_at, record)
    stages(job_id, name, position, spec, state, message, report_id, reports_applied,
           cancel_reason, ready_at, ended_at, PRIMARY KEY (job_id, name))
    stage_tokens(job_id, stage, token, PRIMARY KEY (job_id, stage))
    models(model_id PRIMARY KEY, name, type, metadata, size, created_at)
    model_catalogs(catalog_id PRIMARY KEY, kind, model_ids, created_at)
    launches(job_id, stage, status, runner, pid, start_ticks, boot_id,
             PRIMARY KEY (job_id, stage))

Older files are migrated on open: version 1 (before the model repository) lacked the model
tables, version 2 (before launch records) the ``launches`` table. Migrating version 2 records
every unfinished stage of a running job as launched by a process it cannot name (that mock
launched them all at Jobs.Start, and did not record as what), so a restart neither launches
them twice nor fails them. A file of any other version is refused with a message naming the
versions, and left untouched.

Ids are hex UUIDs; ``metadata``, ``record``, ``spec`` and ``model_ids`` are JSON. The stage
tokens are kept so that operators launched before a restart can still call the stage API
afterwards; the file is therefore created readable by its owner only (0600).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from server_mock._definition import parse_pipeline_definition
from server_mock._errors import StorageError
from server_mock._jobs import (
    CancelReason,
    InputRef,
    Job,
    JobState,
    OutputRef,
    StageSpec,
    StageState,
)
from server_mock._launches import LaunchRecord, LaunchStatus, ProcessIdentity
from server_mock._models import CatalogKind, CatalogRecord, ModelRecord, ModelType
from server_mock._payloads import PayloadRecord, PayloadType
from server_mock._pipelines import PipelineRecord
from server_mock._platform_state import JobRecord, PlatformState
from server_mock._workspace import JobLayout

__all__ = ["SCHEMA_VERSION", "StateStore", "StateStoreError", "default_workspace"]

_log = logging.getLogger("server_mock.persistence")

SCHEMA_VERSION = 3
_MIGRATES_FROM = ("1", "2")  # 1 lacks the model tables; 1 and 2 lack the launches table

_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    pipeline_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS payloads (
    payload_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    job_id TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    pipeline_id TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    record TEXT
);
CREATE TABLE IF NOT EXISTS stages (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    report_id TEXT NOT NULL,
    reports_applied INTEGER NOT NULL,
    cancel_reason TEXT,
    ready_at REAL,
    ended_at REAL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS stage_tokens (
    job_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    token TEXT NOT NULL,
    PRIMARY KEY (job_id, stage)
);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_catalogs (
    catalog_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model_ids TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS launches (
    job_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    status TEXT NOT NULL,
    runner TEXT NOT NULL,
    pid INTEGER,
    start_ticks INTEGER,
    boot_id TEXT,
    PRIMARY KEY (job_id, stage)
);
"""
# What a version 2 file's running jobs had: every stage launched, by an unnamed process.
_LAUNCHED_BEFORE_RECORDS = """
INSERT OR IGNORE INTO launches (job_id, stage, status, runner)
SELECT stages.job_id, stages.name, 'launched', 'process' FROM stages JOIN jobs USING (job_id)
WHERE jobs.state = 'running' AND jobs.record IS NOT NULL
"""


class StateStoreError(RuntimeError):
    """The state file cannot be used (unreadable, not a state file, another schema version)."""


class StateStore:
    """The platform's state in one SQLite file; use it from one thread (the loop thread).

    Args:
        path: The database file; created (with its folder) when missing.

    Raises:
        StateStoreError: The file has another schema version, or is not a SQLite database.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # owner-only from the start
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            self._db = sqlite3.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StateStoreError(f"state file {path}: {error}") from error
        self._depth = 0
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_META)  # the same in every version
            with self.transaction():
                self._open_schema()
        except (sqlite3.DatabaseError, StorageError) as error:
            self._db.close()
            raise StateStoreError(f"state file {path}: {error}") from error
        except BaseException:
            self._db.close()
            raise

    def _open_schema(self) -> None:
        """Create the tables of a new file, migrate an older one, refuse any other version."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = None if row is None else str(row[0])
        if version not in (None, *_MIGRATES_FROM, str(SCHEMA_VERSION)):
            raise StateStoreError(
                f"state file {self.path} has schema version {version}; this mock reads version "
                f"{SCHEMA_VERSION} (and migrates versions {', '.join(_MIGRATES_FROM)}): use the "
                "mock that wrote it, or another --state file"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)  # IF NOT EXISTS: idempotent
        if version is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
        elif version in _MIGRATES_FROM:
            self._db.execute(_LAUNCHED_BEFORE_RECORDS)
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),)
            )
            _log.info(
                "state %s: migrated from schema version %s to %s (added the %s)",
                self.path,
                version,
                SCHEMA_VERSION,
                "model and launch tables" if version == "1" else "launch table",
            )

    def close(self) -> None:
        """Close the database (everything is committed already)."""
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction; nested uses join the outermost one.

        The outermost block commits on success and rolls back when it raises.

        Raises:
            StorageError: The database refused a write (locked by another process, disk
                full, ...); the transaction was rolled back.
        """
        if self._depth == 0:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise StorageError(f"state file {self.path}: {error}") from error
        self._depth += 1
        try:
            yield
        except BaseException as error:
            self._depth -= 1
            if self._depth == 0:
                self._rollback()
            if isinstance(error, sqlite3.Error):
                raise StorageError(f"state file {self.path}: {error}") from error
            raise
        self._depth -= 1
        if self._depth == 0:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                self._rollback()
                raise StorageError(f"state file {self.path}: {error}") from error

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as error:  # e.g. SQLite already rolled back after a failed COMMIT
            _log.warning("state file %s: rollback: %s", self.path, error)

    # -- writes -----------------------------------------------------------------------------

    def save_pipeline(self, record: PipelineRecord) -> None:
        """Insert or replace a pipeline."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO pipelines VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.pipeline_id.hex,
                    record.path,
                    record.text,
                    json.dumps(record.metadata),
                    record.created_at,
                    record.updated_at,
                ),
            )

    def delete_pipeline(self, pipeline_id: uuid.UUID) -> None:
        """Forget a pipeline."""
        with self.transaction():
            self._db.execute("DELETE FROM pipelines WHERE pipeline_id = ?", (pipeline_id.hex,))

    def save_payload(self, record: PayloadRecord) -> None:
        """Insert or replace a payload record."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO payloads VALUES (?, ?, ?, ?, ?)",
                (
                    record.payload_id.hex,
                    record.type.value,
                    json.dumps(record.metadata),
                    record.job_id.hex if record.job_id else None,
                    record.created_at,
                ),
            )

    def delete_payload(self, payload_id: uuid.UUID) -> None:
        """Forget a payload record."""
        with self.transaction():
            self._db.execute("DELETE FROM payloads WHERE payload_id = ?", (payload_id.hex,))

    def save_job(self, job: Job, record: JobRecord | None) -> None:
        """Insert or replace a job, its record and all its stages, in one transaction."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.job_id.hex,
                    job.name,
                    job.pipeline_id,
                    job.state.value,
                    job.message,
                    job.created_at,
                    job.started_at,
                    job.ended_at,
                    None if record is None else json.dumps(_record_to_json(record)),
                ),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job.job_id.hex,
                        name,
                        position,
                        json.dumps(_spec_to_json(stage.spec)),
                        stage.state.value,
                        stage.message,
                        stage.report_id,
                        stage.reports_applied,
                        None if stage.cancel_reason is None else stage.cancel_reason.value,
                        stage.ready_at,
                        stage.ended_at,
                    )
                    for position, (name, stage) in enumerate(job.stages.items())
                ],
            )

    def save_model(self, record: ModelRecord) -> None:
        """Insert or replace a model's record (its files live in the workspace)."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.model_id.hex,
                    record.name,
                    record.type.value,
                    json.dumps(record.metadata),
                    record.size,
                    record.created_at,
                ),
            )

    def delete_model(self, model_id: uuid.UUID) -> None:
        """Forget a model's record."""
        with self.transaction():
            self._db.execute("DELETE FROM models WHERE model_id = ?", (model_id.hex,))

    def save_catalog(self, record: CatalogRecord) -> None:
        """Insert or replace a catalog or instance."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO model_catalogs VALUES (?, ?, ?, ?)",
                (
                    record.catalog_id.hex,
                    record.kind.value,
                    json.dumps([m.hex for m in record.model_ids]),
                    record.created_at,
                ),
            )

    def delete_catalog(self, catalog_id: uuid.UUID) -> None:
        """Forget a catalog or instance."""
        with self.transaction():
            self._db.execute("DELETE FROM model_catalogs WHERE catalog_id = ?", (catalog_id.hex,))

    def save_stage_token(self, job_id: uuid.UUID, stage: str, token: str) -> None:
        """Keep a stage's token (it stays valid after a restart)."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO stage_tokens VALUES (?, ?, ?)", (job_id.hex, stage, token)
            )

    def save_launch(self, record: LaunchRecord) -> None:
        """Insert or replace a stage's launch record (before the launcher goes on)."""
        identity = record.identity
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO launches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id.hex,
                    record.stage,
                    record.status.value,
                    record.runner,
                    None if identity is None else identity.pid,
                    None if identity is None else identity.start_ticks,
                    None if identity is None else identity.boot_id,
                ),
            )

    def stage_tokens(self) -> list[tuple[uuid.UUID, str, str]]:
        """Every saved stage token, as (job id, stage, token)."""
        rows = self._db.execute("SELECT job_id, stage, token FROM stage_tokens").fetchall()
        return [(uuid.UUID(job_id), stage, token) for job_id, stage, token in rows]

    # -- load and attach --------------------------------------------------------------------

    def load_into(self, state: PlatformState) -> None:
        """Fill ``state``'s (empty) stores from the file; call before :meth:`attach`."""
        for row in self._db.execute("SELECT * FROM pipelines ORDER BY created_at"):
            pipeline_id, path, text, metadata, created_at, updated_at = row
            state.pipelines.restore(
                PipelineRecord(
                    pipeline_id=uuid.UUID(pipeline_id),
                    path=path,
                    text=text,
                    definition=parse_pipeline_definition(text),
                    metadata=json.loads(metadata),
                    created_at=created_at,
                    updated_at=updated_at,
                )
            )
        for row in self._db.execute("SELECT * FROM payloads ORDER BY created_at"):
            payload_id, payload_type, metadata, job_id, created_at = row
            state.payloads.restore(
                PayloadRecord(
                    payload_id=uuid.UUID(payload_id),
                    type=PayloadType(payload_type),
                    root=state.payloads.root / payload_id,
                    metadata=json.loads(metadata),
                    job_id=None if job_id is None else uuid.UUID(job_id),
                    created_at=created_at,
                )
            )
        stages: dict[str, list[tuple[Any, ...]]] = {}
        for row in self._db.execute("SELECT * FROM stages ORDER BY job_id, position"):
            stages.setdefault(row[0], []).append(row)
        for row in self._db.execute("SELECT * FROM jobs ORDER BY created_at"):
            job = _job_from_rows(row, stages.get(row[0], []))
            state.jobs.add(job)
            if row[8] is not None:
                state.job_records[job.job_id] = _record_from_json(job.job_id, json.loads(row[8]))
        self._load_models(state)
        for job_id, stage, status, runner, pid, start_ticks, boot_id in self._db.execute(
            "SELECT * FROM launches"
        ):
            identity = None if pid is None else ProcessIdentity(pid, start_ticks, boot_id)
            state.launches.restore(
                LaunchRecord(uuid.UUID(job_id), stage, LaunchStatus(status), runner, identity)
            )
        _log.info(
            "state %s: loaded %d pipeline(s), %d payload(s), %d job(s), %d model(s)",
            self.path,
            len(state.pipelines.all()),
            len(state.payloads.all()),
            len(state.jobs.all()),
            len(state.models.all()),
        )

    def _load_models(self, state: PlatformState) -> None:
        for row in self._db.execute("SELECT * FROM models ORDER BY created_at"):
            model_id, name, model_type, metadata, size, created_at = row
            state.models.restore_model(
                ModelRecord(
                    model_id=uuid.UUID(model_id),
                    name=name,
                    type=ModelType(model_type),
                    root=state.models.root / model_id,
                    metadata=json.loads(metadata),
                    size=size,
                    created_at=created_at,
                )
            )
        for row in self._db.execute("SELECT * FROM model_catalogs ORDER BY created_at"):
            catalog_id, kind, model_ids, created_at = row
            state.models.restore_catalog(
                CatalogRecord(
                    catalog_id=uuid.UUID(catalog_id),
                    kind=CatalogKind(kind),
                    model_ids=tuple(uuid.UUID(m) for m in json.loads(model_ids)),
                    created_at=created_at,
                )
            )

    def attach(self, state: PlatformState) -> None:
        """Save every later change of ``state`` (sets the stores' hooks)."""

        def save_job(job: Job) -> None:
            self.save_job(job, state.job_records.get(job.job_id))

        state.pipelines.on_saved = self.save_pipeline
        state.pipelines.on_removed = self.delete_pipeline
        state.payloads.on_saved = self.save_payload
        state.payloads.on_removed = self.delete_payload
        state.jobs.on_change = save_job
        for job in state.jobs.all():
            job.on_change = save_job
        state.models.on_model_saved = self.save_model
        state.models.on_model_removed = self.delete_model
        state.models.on_catalog_saved = self.save_catalog
        state.models.on_catalog_removed = self.delete_catalog
        state.launches.on_saved = self.save_launch
        state.transaction = self.transaction

    @staticmethod
    def detach(state: PlatformState) -> None:
        """Stop saving ``state``'s changes (before :meth:`close`)."""
        state.pipelines.on_saved = state.pipelines.on_removed = None
        state.payloads.on_saved = state.payloads.on_removed = None
        state.jobs.on_change = None
        for job in state.jobs.all():
            job.on_change = None
        state.models.on_model_saved = state.models.on_model_removed = None
        state.models.on_catalog_saved = state.models.on_catalog_removed = None
        state.launches.on_saved = None
        state.transaction = contextlib.nullcontext


# -- conversions ------------------------------------------------------------------------------


def _spec_to_json(spec: StageSpec) -> dict[str, Any]:
    return {
        # Positional, new fields last: a state file written before them still loads.
        "inputs": [
            [i.path, i.from_stage, i.from_output, i.name, i.declared_path] for i in spec.inputs
        ],
        "outputs": [[o.path, o.name, o.declared_path] for o in spec.outputs],
        "timeout": spec.timeout.total_seconds(),
        "variables": dict(spec.variables),
        "models": dict(spec.models),  # absent in files written before it
    }


def _spec_from_json(name: str, data: dict[str, Any]) -> StageSpec:
    return StageSpec(
        name=name,
        inputs=tuple(InputRef(*entry) for entry in data["inputs"]),
        outputs=tuple(OutputRef(*entry) for entry in data["outputs"]),
        timeout=timedelta(seconds=data["timeout"]),
        variables=MappingProxyType(dict(data["variables"])),
        models=MappingProxyType(dict(data.get("models", {}))),
    )


def _job_from_rows(row: tuple[Any, ...], stage_rows: list[tuple[Any, ...]]) -> Job:
    job_id, name, pipeline_id, state, message, created_at, started_at, ended_at, _ = row
    specs = [_spec_from_json(s[1], json.loads(s[3])) for s in stage_rows]
    job = Job(uuid.UUID(job_id), name, pipeline_id, specs)
    job.state = JobState(state)
    job.message = message
    job.created_at = created_at
    job.started_at = started_at
    job.ended_at = ended_at
    for s in stage_rows:
        stage = job.stages[s[1]]
        stage.state = StageState(s[4])
        stage.message = s[5]
        stage.report_id = s[6]
        stage.reports_applied = s[7]
        stage.cancel_reason = None if s[8] is None else CancelReason(s[8])
        stage.ready_at = s[9]
        stage.ended_at = s[10]
    return job


def _record_to_json(record: JobRecord) -> dict[str, Any]:
    return {
        "pipeline_id": record.pipeline_id.hex,
        "payload_id": record.payload_id.hex,
        "definition": record.definition_text,
        "layout": str(record.layout.root),
        "priority": record.priority,
        "input_payload_ids": [p.hex for p in record.input_payload_ids],
        "metadata": record.metadata,
        "variables": record.variables,
        # The capacity queue (a file written before it has neither: not queued, no GPUs).
        "queued": record.queued,
        "gpu_ids": {name: list(ids) for name, ids in record.gpu_ids.items()},
        # Absent in files written before services were started: none to start again.
        "service_ports": record.service_ports,
    }


def _record_from_json(job_id: uuid.UUID, data: dict[str, Any]) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        pipeline_id=uuid.UUID(data["pipeline_id"]),
        payload_id=uuid.UUID(data["payload_id"]),
        definition=parse_pipeline_definition(data["definition"]),
        layout=JobLayout(Path(data["layout"])),
        priority=data["priority"],
        input_payload_ids=tuple(uuid.UUID(p) for p in data["input_payload_ids"]),
        metadata=dict(data["metadata"]),
        variables=dict(data["variables"]),
        definition_text=data["definition"],
        queued=data.get("queued"),
        gpu_ids={name: tuple(ids) for name, ids in data.get("gpu_ids", {}).items()},
        service_ports={
            name: {connection: int(port) for connection, port in ports.items()}
            for name, ports in data.get("service_ports", {}).items()
        },
    )


def default_workspace(state_path: Path) -> Path:
    """Where payload files live next to a state file: ``<state_path>.workspace``."""
    return state_path.with_name(state_path.name + ".workspace")
