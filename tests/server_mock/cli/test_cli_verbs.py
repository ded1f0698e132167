"""The clara CLI's verbs driving a whole job on a real `clara-mock serve`, from processes."""

from __future__ import annotations

import re
import subprocess
import uuid

from _cli_helpers import Served, cli_process, make_input, write_pipeline

UNDASHED_ID = re.compile(r"(?<![/\w])[0-9a-f]{32}(?![/\w])")  # a path may hold one


def client(served: Served, *argv: str) -> subprocess.CompletedProcess[str]:
    done = cli_process(*argv, "--address", served.address, cwd=served.folder)
    assert not UNDASHED_ID.search(done.stdout), done.stdout  # ids are printed one way
    return done


def test_a_whole_job_from_pipeline_file_to_downloaded_outputs(served: Served) -> None:
    folder = served.folder
    write_pipeline(folder, [("count", "count")], name="counting")
    make_input(folder / "in", {"a.txt": "a", "empty.txt": "", "sub/b.txt": "b"})

    created = client(served, "create", "pipelines", "-p", "pipeline.yaml")
    assert created.returncode == 0, created.stderr
    pipeline_id = uuid.UUID(created.stdout.removeprefix("PIPELINE_ID: ").strip())
    assert created.stdout == f"PIPELINE_ID: {pipeline_id}\n"

    job = client(served, "create", "jobs", "-n", "count-job", "-p", str(pipeline_id), "-f", "in")
    assert job.returncode == 0, job.stderr
    fields = dict(line.split(": ", 1) for line in job.stdout.splitlines())
    job_id = uuid.UUID(fields["JOB_ID"])
    assert fields["INPUT"] == "3 file(s) from in"
    assert str(uuid.UUID(fields["PAYLOAD_ID"])) == fields["PAYLOAD_ID"]

    started = client(served, "start", "job", "-j", str(job_id))
    assert started.returncode == 0, started.stderr
    assert started.stdout == f"job count-job ({job_id}): started; now RUNNING (HEALTHY)\n"

    followed = client(served, "describe", "job", "-j", job_id.hex, "--wait")  # either id form
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert re.search(r"^\[\s*\d+\.\d+s\] STOPPED HEALTHY: count COMPLETED$", followed.stdout, re.M)
    assert f"job count-job ({job_id})\n  state:   STOPPED\n" in followed.stdout

    logs = client(served, "logs", "-j", str(job_id))
    assert logs.returncode == 0, logs.stderr
    assert "==> count <==" in logs.stdout
    assert "hello from count counted a.txt,b.txt,empty.txt" in logs.stdout  # empty file too

    everything = client(served, "download", f"{job_id}:/operators", "results")
    assert everything.returncode == 0, everything.stderr
    assert (folder / "results" / "count" / "count.txt").read_text() == "3\n"
    assert everything.stdout == f"1 file(s) of job count-job ({job_id}) downloaded to results\n"
    one = client(served, "download", f"{job_id}:operators/count/count.txt", "one")
    assert one.returncode == 0 and (folder / "one" / "count.txt").read_text() == "3\n"
    globbed = client(served, "download", f"{job_id}:/operators/c*", "globbed")
    assert globbed.returncode == 0, globbed.stderr
    assert (folder / "globbed" / "count" / "count.txt").is_file()

    jobs = client(served, "list", "jobs")
    assert jobs.returncode == 0
    row = next(line for line in jobs.stdout.splitlines() if "count-job" in line)
    assert row.split()[:5] == [str(job_id), "count-job", "STOPPED", "HEALTHY", str(pipeline_id)]
    pipelines = client(served, "list", "pipeline")  # singular or plural
    assert pipelines.stdout.splitlines()[1].split() == [str(pipeline_id), "counting"]


def test_quiet_output_is_just_the_ids_for_scripts(served: Served) -> None:
    write_pipeline(served.folder, [("count", "count")])
    pipeline = client(served, "create", "pipeline", "-p", "pipeline.yaml", "-q")
    pipeline_id = uuid.UUID(pipeline.stdout.strip())
    job = client(served, "create", "job", "-n", "quiet", "-p", str(pipeline_id), "-q")
    assert str(uuid.UUID(job.stdout.strip())) == job.stdout.strip()


def test_a_failed_job_makes_describe_wait_exit_1(served: Served) -> None:
    write_pipeline(served.folder, [("broken", "crash")])
    pipeline_id = client(served, "create", "pipelines", "-p", "pipeline.yaml", "-q").stdout.strip()
    job_id = client(served, "create", "jobs", "-n", "bad", "-p", pipeline_id, "-q").stdout.strip()
    assert client(served, "start", "job", "-j", job_id).returncode == 0

    followed = client(served, "describe", "job", "-j", job_id, "--wait")

    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert "STOPPED FAULTED: broken FAULTED" in followed.stdout


def test_client_errors_name_what_is_wrong(served: Served) -> None:
    write_pipeline(served.folder, [("count", "count")])
    missing = client(served, "create", "pipelines", "-p", "nope.yaml")
    assert missing.returncode == 2
    assert "clara-mock create pipelines: error: -p nope.yaml: no such file" in missing.stderr

    pipeline_id = client(served, "create", "pipelines", "-p", "pipeline.yaml", "-q").stdout.strip()
    not_a_folder = client(served, "create", "jobs", "-n", "x", "-p", pipeline_id, "-f", "nope")
    assert not_a_folder.returncode == 2 and "-f nope: not a folder" in not_a_folder.stderr

    job_id = client(served, "create", "jobs", "-n", "x", "-p", pipeline_id, "-q").stdout.strip()
    nothing = client(served, "download", f"{job_id}:/operators/ghost", "out")
    assert nothing.returncode == 1
    assert "nothing in its payload matches /operators/ghost" in nothing.stdout
    assert not (served.folder / "out").exists()

    bad_id = client(served, "start", "job", "-j", "not-an-id")
    assert bad_id.returncode == 2 and "'not-an-id' is not a job id" in bad_id.stderr
