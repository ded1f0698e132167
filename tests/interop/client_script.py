"""Drive the mock with the UNMODIFIED published client (nvidia-clara-client 0.8.1.7).

Runs in the interop venv, not in the project's: ``python client_script.py HOST:PORT WORKDIR``.
WORKDIR holds ``pipeline.yaml``, ``bad-pipeline.yaml``, ``inputs/`` (the files to upload) and
``model.zip`` (a zipped model folder for the Models service).

Protocol on stdout, one JSON object per line:

1. ``{"event": "job-started", "job_id": ..., "payload_id": ...}`` once the first job runs;
   the script then waits for one line on stdin (the test runs the stages meanwhile);
2. ``{"event": "result", "result": {...}}`` with everything the client saw.

Any failure prints ``{"event": "error", "error": ...}`` and exits with status 1.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import io
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nvidia_clara import (
    ClaraClient,
    JobsClient,
    ModelsClient,
    PayloadsClient,
    PipelinesClient,
    job_types,
    model_types,
    payload_types,
    pipeline_types,
)
from nvidia_clara.grpc import models_pb2


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=plain), flush=True)


def plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (job_types.JobId, pipeline_types.PipelineId, payload_types.PayloadId)):
        return value.value
    if hasattr(value, "items"):
        return dict(value.items())
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return list(value)
    return str(value)


def error_text(call: Any) -> str:
    try:
        call()
    except Exception as error:
        return str(error)
    return "NO ERROR"


def failure(call: Callable[[], Any]) -> str:
    """``ExceptionType: message`` of what ``call`` raises (the client's own bugs included)."""
    try:
        call()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "NO ERROR"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(address: str, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    clara = ClaraClient(address)
    pipelines = PipelinesClient(address)
    payloads = PayloadsClient(address)
    jobs = JobsClient(address)

    version = clara.version()
    result["version"] = [version.major, version.minor, version.patch, version.label]
    result["utilization_samples"] = len(clara.list_utilization())
    watched = 0
    try:
        for _ in clara.stream_utilization(timeout=2.5):  # the deadline ends the watch
            watched += 1
    except Exception as error:  # grpc.RpcError, DEADLINE_EXCEEDED
        result["watch_ended"] = getattr(error, "code", lambda: None)().name
    result["watched_samples"] = watched
    result["stop_error"] = error_text(clara.stop)

    # Pipelines.
    definition = pipeline_types.PipelineDefinition(
        name="pipeline.yaml", content=(workdir / "pipeline.yaml").read_text()
    )
    pipeline_id = pipelines.create_pipeline(definition=[definition], metadata={"team": "interop"})
    details = pipelines.pipeline_details(pipeline_id)
    result["pipeline"] = {
        "id": pipeline_id.value,
        "name": details.name,
        "metadata": dict(details.metadata),
        "definition_parts": len(details.definition),
        "definition_content": details.definition[0].content.content,
    }
    result["pipeline_add_metadata"] = dict(pipelines.add_metadata(pipeline_id, {"extra": "1"}))
    result["pipeline_remove_metadata"] = dict(pipelines.remove_metadata(pipeline_id, ["extra"]))
    bad = pipeline_types.PipelineDefinition(
        name="bad.yaml", content=(workdir / "bad-pipeline.yaml").read_text()
    )
    result["bad_pipeline_error"] = error_text(lambda: pipelines.create_pipeline(definition=[bad]))

    # A reusable payload with the inputs.
    payload = payloads.create_payload(metadata={"kind": "inputs"})
    result["payload_type"] = payload.payload_type
    uploaded = {}
    for file in sorted((workdir / "inputs").iterdir()):
        details = payloads.upload(payload.payload_id, file.name, file_path=str(file))
        uploaded[details.name] = details.size
    result["uploaded"] = uploaded
    # The client sends no message at all for an empty file; the mock accepts the empty stream.
    empty = workdir / "empty.txt"
    empty.write_bytes(b"")
    result["empty_upload_error"] = error_text(
        lambda: payloads.upload(payload.payload_id, "empty.txt", file_path=str(empty))
    )
    listing = payloads.get_details(payload.payload_id)
    result["payload_files"] = {f.name: f.size for f in listing.file_details}
    result["payload_metadata"] = dict(listing.metadata)
    round_trip = workdir / "round-trip.bin"
    payloads.download_from(payload.payload_id, "big.bin", dest_path=str(round_trip))
    result["round_trip_matches"] = sha256(round_trip) == sha256(workdir / "inputs" / "big.bin")
    result["escape_error"] = error_text(
        lambda: payloads.upload(payload.payload_id, "../escape.txt", file_path=str(round_trip))
    )
    result["payload_add_metadata"] = dict(payloads.add_metadata(payload.payload_id, {"x": "y"}))
    # The docs' lenient names, in a payload of their own (the job's input stays flat): a
    # leading '/' is ignored, and a download finds a file whatever the case of its name.
    names = payloads.create_payload()
    slashed = payloads.upload(
        names.payload_id, "/Docs/Notes.txt", file_path=str(workdir / "inputs" / "notes.txt")
    )
    folded = workdir / "folded.txt"
    found = payloads.download_from(names.payload_id, "docs/NOTES.TXT", dest_path=str(folded))
    result["lenient_names"] = {
        "uploaded": slashed.name,
        "listed": [f.name for f in payloads.get_details(names.payload_id).file_details],
        "downloaded": [found.name, folded.read_text()],
    }

    # The first job: created, started, then run by the test's drivers.
    job = jobs.create_job(
        pipeline_id=pipeline_id,
        job_name="interop-job",
        input_payloads=[payload.payload_id],
        job_priority=job_types.JobPriority.Higher,
        metadata={"case": "interop"},
    )
    pending = jobs.get_status(job.job_id)
    result["pending"] = {"state": pending.job_state, "status": pending.job_status}
    started = jobs.start_job(job.job_id)
    result["started"] = {"state": started.job_state, "status": started.job_status}
    emit("job-started", job_id=job.job_id.value, payload_id=job.payload_id.value)
    sys.stdin.readline()  # the test completes the stages, then writes a line

    done = jobs.get_status(job.job_id)
    result["done"] = {
        "job_id": done.job_id.value,
        "name": done.name,
        "state": done.job_state,
        "status": done.job_status,
        "priority": done.job_priority,
        "payload_id": done.payload_id.value,
        "pipeline_id": done.pipeline_id.value,
        "created": done.date_created,
        "started": done.date_started,
        "stopped": done.date_stopped,
        "operators": {name: d["status"] for name, d in done.operator_details.items()},
        "metadata": dict(done.metadata),
    }
    result["logs"] = jobs.job_logs(job.job_id, "prepare")
    result["unknown_operator_logs_error"] = error_text(lambda: jobs.job_logs(job.job_id, "ghost"))
    result["job_add_metadata"] = dict(jobs.add_metadata(job.job_id, {"more": "data"}))

    summary = workdir / "summary.txt"
    payloads.download_from(job.payload_id, "operators/finish/summary.txt", dest_path=str(summary))
    result["summary"] = summary.read_text()
    result["missing_file_error"] = error_text(
        lambda: payloads.download_from(job.payload_id, "no/such/file", dest_path=str(summary))
    )

    # A second job, started and cancelled.
    second = jobs.create_job(pipeline_id=pipeline_id, job_name="to-cancel")
    jobs.start_job(second.job_id)
    cancelled = jobs.cancel_job(second.job_id, reason="no longer needed")
    after = jobs.get_status(second.job_id)
    result["cancelled"] = {
        "token": [cancelled.job_state, cancelled.job_status],
        "state": after.job_state,
        "status": after.job_status,
        "messages": list(after.messages),
    }
    result["unknown_job_error"] = error_text(
        lambda: jobs.get_status(job_types.JobId("0123456789abcdef0123456789abcdef"))
    )

    # Listings.
    result["jobs"] = sorted(
        [j.name, j.job_state, j.job_status, j.pipeline_id.value] for j in jobs.list_jobs()
    )
    stopped_healthy = job_types.JobFilter(
        has_job_state=[job_types.JobState.Stopped],
        has_job_status=[job_types.JobStatus.Healthy],
        pipeline_ids=[pipeline_id],
        created_after=datetime.datetime(2000, 1, 1),
    )
    result["filtered_jobs"] = [j.name for j in jobs.list_jobs(job_filter=stopped_healthy)]
    result["pipelines"] = [[p.pipeline_id.value, p.name] for p in pipelines.list_pipelines()]
    pipelines.remove_pipeline(pipeline_id)
    result["pipelines_after_remove"] = len(pipelines.list_pipelines())
    result["models"] = drive_models(address, (workdir / "model.zip").read_bytes())
    return result


def drive_models(address: str, archive: bytes) -> dict[str, Any]:
    """Every call of the published ModelsClient; where the client fails before sending (its
    requests name fields its own generated code does not have), record the client's error and
    send the request the call means through the client's own generated stub."""
    seen: dict[str, Any] = {}
    models = ModelsClient(address)
    stub = models._stub  # the published client's generated stub (its protobuf runtime)

    seen["upload_model"] = failure(
        lambda: models.upload_model(
            model_types.ModelDetails(
                model_id=model_types.ModelId("new"),
                name="liver",
                model_type=model_types.ModelType.TensorRT,
            ),
            io.BytesIO(archive),
        )
    )
    uploaded = stub.UploadModel(
        iter(
            models_pb2.ModelsUploadModelRequest(
                header=models.get_request_header(),
                details=models_pb2.ModelDetails(name="liver", type=2),
                data=archive[start : start + 64 * 1024],
            )
            for start in range(0, len(archive), 64 * 1024)
        )
    )
    models.check_response_header(uploaded.header)
    model = model_types.ModelId(uploaded.details.model_id.value)
    seen["uploaded"] = [uploaded.details.name, uploaded.details.type, len(model.value)]

    seen["list_models"] = failure(models.list_models)
    listing = stub.ListModels(models_pb2.ModelsListModelsRequest())
    seen["listed"] = [[m.name, m.model_id.value] for r in listing for m in r.models]

    seen["add_metadata"] = dict(models.add_metadata(model, {"organ": "liver", "site": "a"}))
    seen["remove_metadata"] = dict(models.remove_metadata(model, ["SITE"]))
    seen["duplicate_key"] = failure(lambda: models.add_metadata(model, {"Organ": "x"}))

    catalog = models.create_catalog()
    instance = models.create_instance()
    seen["ids"] = [len(catalog.value), len(instance.value)]
    # The client hands grpc a list where it needs an iterator: "Exception iterating requests".
    seen["update_catalog"] = failure(lambda: models.update_catalog(catalog, [model]))
    updated = stub.UpdateCatalog(
        iter(
            [
                models_pb2.ModelsUpdateCatalogRequest(
                    catalog_id=catalog.to_grpc_value(), model_ids=[model.to_grpc_value()]
                )
            ]
        )
    )
    models.check_response_header(updated.header)
    seen["read_catalog"] = failure(lambda: models.read_catalog(catalog))
    read = stub.ReadCatalog(models_pb2.ModelsReadCatalogRequest(catalog_id=catalog.to_grpc_value()))
    seen["catalog_models"] = [m.name for r in read for m in r.models]
    seen["update_instance"] = failure(lambda: models.update_instance(instance, [model]))
    seen["read_instance"] = failure(lambda: models.read_instance(instance))

    out = io.BytesIO()
    seen["download_model"] = failure(lambda: models.download_model(model, out))
    downloaded = stub.DownloadModel(
        models_pb2.ModelsDownloadModelRequest(model_id=model.to_grpc_value())
    )
    seen["download_matches"] = b"".join(r.data for r in downloaded) == archive

    seen["delete_instance"] = failure(lambda: models.delete_instance(instance))
    deleted = stub.DeleteInstance(
        models_pb2.ModelsDeleteInstanceRequest(instance_id=instance.to_grpc_value())
    )
    seen["instance_deleted"] = deleted.header.code
    models.delete_catalog(catalog)
    seen["catalog_deleted"] = failure(lambda: models.delete_catalog(catalog))
    seen["delete_model"] = failure(lambda: models.delete_model(model))
    gone = stub.DeleteModel(models_pb2.ModelsDeleteModelRequest(model_id=model.to_grpc_value()))
    seen["model_deleted"] = gone.header.code
    after = stub.ListModels(models_pb2.ModelsListModelsRequest())
    seen["listed_after_delete"] = [m.name for r in after for m in r.models]
    return seen


if __name__ == "__main__":
    try:
        emit("result", result=main(sys.argv[1], Path(sys.argv[2])))
    except BaseException:
        emit("error", error=traceback.format_exc())
        sys.exit(1)
