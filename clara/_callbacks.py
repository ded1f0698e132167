"""The operator's callbacks: their types, and the two names each can be given under.

``Driver`` takes each callback under this project's name (``execute=``) or under the name
NVIDIA's Clara Pipeline Driver binding gives it (``execute_handler=``; see
docs/compatibility.md), never both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clara._exceptions import ConfigurationError
from clara._notifications import Notification
from clara._payload import Payload

if TYPE_CHECKING:
    from clara._driver import Driver

__all__ = [
    "Callbacks",
    "CleanupCallback",
    "ExecuteCallback",
    "NotifyCallback",
    "PrepareCallback",
    "one_callback",
]

PrepareCallback = Callable[["Driver[Any]"], bool | None]
ExecuteCallback = Callable[["Driver[Any]", Payload], bool | None]
CleanupCallback = Callable[["Driver[Any]"], bool | None]
NotifyCallback = Callable[["Driver[Any]", Notification], None]

_BINDING_NAMES = {
    "prepare": "prepare_handler",
    "execute": "execute_handler",
    "cleanup": "cleanup_handler",
    "notify": "notification_handler",
}


@dataclass(frozen=True, slots=True)
class Callbacks:
    """The callbacks one driver runs (None: that step does nothing)."""

    prepare: PrepareCallback | None
    execute: ExecuteCallback | None
    cleanup: CleanupCallback | None
    notify: NotifyCallback | None


def one_callback(role: str, seed: Any, binding: Any) -> Any:
    """The callback for ``role``, given under the seed's name or the binding's, not both.

    Raises:
        ConfigurationError: It is given under both names, or is not callable.
    """
    binding_name = _BINDING_NAMES[role]
    if seed is not None and binding is not None:
        raise ConfigurationError(
            f"{role}/{binding_name}",
            binding,
            f"the {role} callback is given twice, as {role}= and as {binding_name}=; "
            "pass it under one of the two names",
        )
    name, callback = (role, seed) if seed is not None else (binding_name, binding)
    if callback is not None and not callable(callback):
        raise ConfigurationError(name, callback, "must be callable or None")
    return callback
