"""How a definition's operators become the stages a job schedules (inputs wired to folders)."""

from __future__ import annotations

import uuid
from pathlib import Path

from server_mock._definition import parse_pipeline_definition
from server_mock._jobs import InputRef
from server_mock._workspace import JobLayout, build_job

# A fan-in of two single-output operators whose inputs name no output (the docs' own form),
# one of them reading an output that has a name.
FAN_IN = """\
api-version: 0.4.0
name: fan-in
operators:
- name: reader
  container: {image: example/reader}
  input: [{path: /input}]
  output: [{path: /output}]
- name: segment
  container: {image: example/segment}
  input: [{from: reader, path: /input}]
  output: [{name: mask, path: /mask}]
- name: writer
  container: {image: example/writer}
  input:
  - {from: Segment, path: /in/mask}
  - {from: reader, path: /in/volume}
  output: [{path: /output}]
"""


def test_fan_in_inputs_read_each_upstream_operators_only_output(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path)
    job = build_job(uuid.uuid4(), "job", "pipeline", parse_pipeline_definition(FAN_IN), layout)

    writer = job.stage("writer").spec
    assert writer.inputs == (
        InputRef(
            path=str(tmp_path / "operators" / "segment" / "mask"),
            from_stage="segment",
            from_output="mask",
            name="",
            declared_path="/in/mask",
        ),
        InputRef(
            path=str(tmp_path / "operators" / "reader"),
            from_stage="reader",
            from_output="",
            name="",
            declared_path="/in/volume",
        ),
    )
    assert writer.upstream == {"segment", "reader"}
    assert (tmp_path / "operators" / "segment" / "mask").is_dir()


def test_every_operator_gets_an_outbox_folder_of_its_own(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path)
    build_job(uuid.uuid4(), "job", "pipeline", parse_pipeline_definition(FAN_IN), layout)
    for operator in ("segment", "reader", "writer"):
        assert layout.outbox_dir(operator) == tmp_path / "outbox" / operator
        assert layout.outbox_dir(operator).is_dir()  # the operator's driver writes it
