"""Metadata of pipelines, jobs and payloads, checked and edited in one place.

Every AddMetadata/RemoveMetadata (and every Create that carries metadata) goes through
:func:`edit_metadata`. It validates before it returns anything, so a refused edit changes
nothing: the caller stores the returned mapping only when no
:class:`~server_mock._errors.ApiError` was raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from server_mock._errors import ApiError, ErrorCode
from server_mock._platform_api.convert import show
from server_mock._platform_api.fields import utf8_len
from server_mock._platform_api.limits import (
    MAX_METADATA_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_BYTES,
)

__all__ = ["edit_metadata"]


def _check_key(key: str, code: ErrorCode) -> None:
    if not key:
        raise ApiError(code, "metadata keys must not be empty")
    if len(key) > MAX_METADATA_KEY_CHARS:
        raise ApiError(
            code, f"metadata key {show(key)} is longer than {MAX_METADATA_KEY_CHARS} characters"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ApiError(code, f"metadata key {show(key)} contains control characters")


def edit_metadata(
    current: Mapping[str, str],
    code: ErrorCode,
    *,
    add: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
) -> dict[str, str]:
    """Return ``current`` with ``add`` merged in and the keys ``remove`` dropped.

    Absent keys in ``remove`` are ignored; a key of ``add`` already present gets the new value.

    Args:
        current: The object's metadata now.
        code: The code of a refusal (the service's metadata error).
        add: Pairs to merge in.
        remove: Keys to drop.

    Raises:
        ApiError: ``code``, naming the key or the limit at fault.
    """
    for key, value in (add or {}).items():
        _check_key(key, code)
        if utf8_len(value) > MAX_METADATA_VALUE_BYTES:
            raise ApiError(
                code,
                f"the value of metadata key {show(key)} is larger than "
                f"{MAX_METADATA_VALUE_BYTES} bytes",
            )
    dropped = list(remove)
    for key in dropped:
        _check_key(key, code)
    edited = {k: v for k, v in {**current, **(add or {})}.items() if k not in dropped}
    if len(edited) > MAX_METADATA_ENTRIES:
        raise ApiError(code, f"metadata would have more than {MAX_METADATA_ENTRIES} entries")
    if sum(utf8_len(k) + utf8_len(v) for k, v in edited.items()) > MAX_METADATA_BYTES:
        raise ApiError(code, f"metadata would be larger than {MAX_METADATA_BYTES} bytes")
    return edited
