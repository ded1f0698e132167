"""server_mock: a local reproduction of the Clara platform, for tests and local runs.

It serves the stage API to drivers and schedules a job's stages as a DAG::

    from server_mock import MockPlatform, StageSpec

    with MockPlatform() as platform:
        job_id = platform.create_job([StageSpec("only")])
"""

from server_mock._jobs import InputRef, JobState, OutputRef, StageSpec, StageState
from server_mock._platform import JobSnapshot, MockPlatform, StageSnapshot

__all__ = [
    "InputRef",
    "JobSnapshot",
    "JobState",
    "MockPlatform",
    "OutputRef",
    "StageSnapshot",
    "StageSpec",
    "StageState",
]
