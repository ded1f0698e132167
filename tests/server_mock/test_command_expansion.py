"""A container's ``command`` has its ``$(VAR)`` references expanded from the stage's environment.

Real definitions write ``$(NVIDIA_CLARA_SERVICE_DATA_PATH)`` and the like in a command; the
launcher expands them (Kubernetes' rules: ``$$`` is a literal ``$``, an unknown variable is
left as written) from the environment the operator's process gets, in both runners.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _launch import DRIVER_OPERATOR, pipeline, platform

from server_mock import JobState
from server_mock._sandbox import bwrap_problem

OPERATOR = """
- name: echo
  container:
    image: t/op
    command: [python, op.py, "$(GREETING)", "--job=$(NVIDIA_CLARA_JOBNAME)", "$$(GREETING)",
              "$(NOT_SET)"]
  variables:
    GREETING: hello
    OPERATOR_CODE: |
      import json, pathlib, sys
      pathlib.Path(payload.output().path, "argv.json").write_text(json.dumps(sys.argv[1:]))
  input: [{path: /input}]
  output: [{path: /output}]
"""


@pytest.mark.parametrize("runner", ["process", "sandbox"])
def test_command_references_are_expanded_from_the_operator_environment(
    tmp_path: Path, runner: str
) -> None:
    if runner == "sandbox":
        assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    with platform(tmp_path, {"op.py": DRIVER_OPERATOR}, runner=runner) as running:
        run = running.run(pipeline(OPERATOR))
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    argv = json.loads((run.output("echo") / "argv.json").read_text())
    assert argv == ["hello", "--job=job", "$(GREETING)", "$(NOT_SET)"]
