"""Replace a record's metadata and save it before the caller acknowledges, or change nothing.

Every store of the mock (pipelines, payloads, models, jobs) edits metadata the same way: the
new mapping is set, the store's save hook runs (with ``--state``, one committed transaction),
and if saving fails the old mapping is put back and the error propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["replace_metadata"]


class _HasMetadata(Protocol):
    metadata: Any


_R = TypeVar("_R", bound=_HasMetadata)
_S = TypeVar("_S")


def replace_metadata(
    record: _R,
    metadata: dict[str, str],
    save: Callable[[_S], object] | None,
    saved: _S,
) -> None:
    """Set ``record.metadata``, call ``save(saved)``; on failure restore it and re-raise."""
    before, record.metadata = record.metadata, metadata
    if save is None:
        return
    try:
        save(saved)
    except BaseException:
        record.metadata = before
        raise
