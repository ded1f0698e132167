"""Failpoints: named places where a test can make the mock's process die, for real.

``CLARA_MOCK_FAILPOINTS=name[,name@N,...]`` in the environment of a ``clara-mock`` process
makes :func:`failpoint` kill that process with SIGKILL (no shutdown code, no ``finally``: a
crash) the first time execution reaches ``name``, or the ``N``-th time with ``name@N`` (e.g.
the launch of a job's second operator). Without the variable a failpoint costs one lookup in
an empty set. The crash tests kill ``serve --state`` at each of :data:`START_FAILPOINTS` in
turn and check what a restart makes of the job (tests/reliability/test_start_crash.py), and
at each of :data:`MODEL_COMMIT_FAILPOINTS` and check the model a restart finds
(tests/reliability/test_model_upload_faults.py).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV_FAILPOINTS", "MODEL_COMMIT_FAILPOINTS", "START_FAILPOINTS", "failpoint"]

ENV_FAILPOINTS = "CLARA_MOCK_FAILPOINTS"

#: Every step of ``Jobs.Start``, in order (the per-operator ones are reached once per operator).
START_FAILPOINTS = (
    "start.inputs_copied",  # the input payloads are in the job's input folder
    "start.job_running",  # the job is RUNNING (saved), no operator launched yet
    "start.launch_recording",  # before an operator's "launching" record is written
    "start.launch_recorded",  # its "launching" record is saved; not spawned yet
    "start.spawned",  # its process runs; its pid and start time are not saved yet
    "start.pid_recorded",  # its pid and start time are saved
    "start.launched",  # every operator launched; Jobs.Start not answered yet
)

#: Every step of storing an uploaded model (``ModelRepository.commit``), in order.
MODEL_COMMIT_FAILPOINTS = (
    "model_commit.intent_written",  # the intent file is written; nothing moved yet
    "model_commit.old_set_aside",  # a replacement: the old folder is in .uploads/replaced-<id>
    "model_commit.new_in_place",  # the new folder is the model's; its record is not saved
    "model_commit.saved",  # the new record is saved (committed); the old folder is still there
    "model_commit.old_removed",  # the old folder is removed; the intent file not yet
)


def _parse(text: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = entry.partition("@")
        if not count.isdigit() or int(count) < 1:
            count = "1"
        armed[name] = int(count)
    return armed


_armed = _parse(os.environ.get(ENV_FAILPOINTS, ""))


def failpoint(name: str) -> None:
    """Die here (SIGKILL to this process) if ``name`` is armed and this is its hit.

    Args:
        name: The failpoint's name, e.g. ``"start.spawned"``.
    """
    if name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] > 0:
        return
    os.write(2, f"clara-mock: failpoint {name} reached: killing this process\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
