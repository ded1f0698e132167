"""Drive the mock with the UNMODIFIED published client (nvidia-clara-client 0.8.1.7).

Runs in the interop venv, not in the project's: ``python client_script.py HOST:PORT WORKDIR``.
WORKDIR holds ``pipeline.yaml``, ``bad-pipeline.yaml`` and ``inputs/`` (the files to upload).

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
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from nvidia_clara import (
    ClaraClient,
    JobsClient,
    PayloadsClient,
    PipelinesClient,
    job_types,
    payload_types,
    pipeline_types,
)


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
    payloads.download_from(
        job.payload_id, "operators/finish/output/summary.txt", dest_path=str(summary)
    )
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
    return result


if __name__ == "__main__":
    try:
        emit("result", result=main(sys.argv[1], Path(sys.argv[2])))
    except BaseException:
        emit("error", error=traceback.format_exc())
        sys.exit(1)
