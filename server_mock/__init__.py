"""server_mock: a local reproduction of the Clara platform, for tests and local runs.

It serves the stage API to drivers and schedules a job's stages as a DAG::

    from server_mock import MockPlatform, StageSpec

    with MockPlatform() as platform:
        job_id = platform.create_job([StageSpec("only")])

The mock needs the ``mock`` extra (``pip install 'clara-stage-driver[mock]'``); its public
names are loaded on first use, so that importing the package where the extra is missing says
what to install (:class:`server_mock._extra.MockExtraMissingError`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server_mock._jobs import InputRef, JobState, OutputRef, StageSpec, StageState
    from server_mock._platform import JobSnapshot, MockPlatform, PipelineJob, StageSnapshot

__all__ = [
    "InputRef",
    "JobSnapshot",
    "JobState",
    "MockPlatform",
    "OutputRef",
    "PipelineJob",
    "StageSnapshot",
    "StageSpec",
    "StageState",
]

_HOMES = {
    "InputRef": "server_mock._jobs",
    "JobState": "server_mock._jobs",
    "OutputRef": "server_mock._jobs",
    "StageSpec": "server_mock._jobs",
    "StageState": "server_mock._jobs",
    "JobSnapshot": "server_mock._platform",
    "MockPlatform": "server_mock._platform",
    "PipelineJob": "server_mock._platform",
    "StageSnapshot": "server_mock._platform",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'server_mock' has no attribute {name!r}")
    from server_mock import _extra  # noqa: PLC0415 - checked on first use, not at import

    _extra.require()
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
