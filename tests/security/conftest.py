"""Fixtures of the security tests."""

from __future__ import annotations

import pytest
from _pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, server and client certificates (SANs 127.0.0.1 and localhost)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
