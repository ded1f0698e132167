"""The services' common volume: one host folder, read-only in every service, named by a variable.

The Clara Administration page (values.yaml, ``commonVolume``) says a common volume is mounted
read-only into every pipeline service container, its mount path given to the service in
``NVIDIA_CLARA_SERVICE_DATA_PATH`` (e.g. a TensorRT Inference Server's
``--models=$NVIDIA_CLARA_SERVICE_DATA_PATH/models``), its host folder
``commonVolume.hostVolumePath`` (default ``/clara/common``). It names services only, so
operators do not get it (the mock's own value is dropped from theirs, like every variable
the platform decides).

The mock's common volume is ``<workspace>/service-data`` (:func:`default_service_data`) or the
folder ``--service-data`` gives; it is created when a service first starts. The process runner
gives a service the host folder's path (it cannot make it read-only); the sandbox mounts it
read-only at :data:`SANDBOX_SERVICE_DATA_PATH`, a fixed path like a container's mount path,
which does not depend on where the host folder lies (nor collide with the folders a sandbox
shows or hides there).
"""

from __future__ import annotations

from pathlib import Path

from server_mock._sandbox import StageMount

__all__ = [
    "SANDBOX_SERVICE_DATA_PATH",
    "SERVICE_DATA_VARIABLE",
    "default_service_data",
    "service_data_mounts",
    "service_data_path",
]

SERVICE_DATA_VARIABLE = "NVIDIA_CLARA_SERVICE_DATA_PATH"
"""The variable giving a service where the common volume is."""

SANDBOX_SERVICE_DATA_PATH = "/clara/common"
"""Where a sandboxed service sees the common volume (read-only)."""


def default_service_data(workspace: Path) -> Path:
    """The common volume of a platform whose workspace is ``workspace``: ``service-data`` in it."""
    return workspace / "service-data"


def service_data_mounts(folder: Path | None) -> list[StageMount]:
    """The sandbox's read-only mount of the common volume ``folder`` (none when ``None``)."""
    if folder is None:
        return []
    return [StageMount(host=folder, path=SANDBOX_SERVICE_DATA_PATH, writable=False)]


def service_data_path(folder: Path, *, sandboxed: bool) -> str:
    """The value of :data:`SERVICE_DATA_VARIABLE` for a service: where it sees ``folder``."""
    return SANDBOX_SERVICE_DATA_PATH if sandboxed else str(folder.absolute())
