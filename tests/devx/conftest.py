"""Fixtures of the developer-experience tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def buf() -> str:
    """The buf binary: beside the interpreter (the buf-bin wheel installs it there), or on PATH."""
    name = "buf.exe" if os.name == "nt" else "buf"
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which("buf")
    if found is None:
        pytest.fail("buf not found; install the test extra: python -m pip install -e '.[test]'")
    return found
