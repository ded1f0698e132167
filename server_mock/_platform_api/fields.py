"""Checks of request fields shared by several services (names, free text)."""

from __future__ import annotations

from clara.contract import NAME_PATTERN, NAME_RULE
from server_mock._errors import ApiError, ErrorCode
from server_mock._platform_api.convert import show

__all__ = ["check_name", "check_text", "utf8_len"]


def utf8_len(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes (lone surrogates count as encoded)."""
    return len(text.encode("utf-8", "surrogatepass"))


def check_text(value: str, what: str, code: ErrorCode, limit: int) -> None:
    """Refuse free text that is longer than ``limit`` characters or has control characters.

    Raises:
        ApiError: ``code``, naming ``what``.
    """
    if len(value) > limit:
        raise ApiError(code, f"{what} is longer than {limit} characters")
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in value) or "\x7f" in value:
        raise ApiError(code, f"{what} contains control characters")


def check_name(name: str, what: str, code: ErrorCode) -> None:
    """Refuse a name that does not follow Clara's naming rule.

    Raises:
        ApiError: ``code``, naming ``what`` and the value.
    """
    if not NAME_PATTERN.match(name):
        raise ApiError(code, f"{what} {show(name)} is not {NAME_RULE}")
