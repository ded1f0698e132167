"""The ``pytest11`` entry point: the mock's fixtures where the mock is installed.

pytest loads every installed plugin at start-up. In an operator image that installed the
driver alone (no ``mock`` extra), loading the fixtures would fail and take pytest down with
it, so this entry point registers nothing there; with the extra it is
:mod:`server_mock.pytest_plugin`.
"""

from __future__ import annotations

from server_mock import _extra

if not _extra.missing_mock_modules():
    from server_mock.pytest_plugin import *  # noqa: F403 - the fixtures are the plugin
