"""The driver installs lean: an operator image gets grpcio and protobuf, not the mock's extras.

The distribution's unconditional requirements are exactly what ``clara`` imports; the mock's
own dependencies come with the ``mock`` extra, and where they are missing the mock says so and
the pytest plugin stays out of the way (pytest still starts in an operator image).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "clara-stage-driver"

# Installs an import hook that hides the mock extra's modules, as in an operator image.
WITHOUT_MOCK_EXTRA = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideMockExtra(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("yaml", "grpc_health", "grpc_reflection"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HideMockExtra())
    """
)


def _requirements() -> list[Requirement]:
    return [Requirement(text) for text in metadata.requires(DISTRIBUTION) or []]


def test_the_driver_alone_requires_only_grpcio_and_protobuf() -> None:
    unconditional = {r.name for r in _requirements() if r.marker is None}
    assert unconditional == {"grpcio", "protobuf"}


def test_the_mock_extra_brings_the_mock_dependencies() -> None:
    mock = {r.name for r in _requirements() if r.marker and r.marker.evaluate({"extra": "mock"})}
    assert {"PyYAML", "grpcio-health-checking", "grpcio-reflection", "rich"} <= mock


def test_clara_imports_nothing_beyond_its_requirements() -> None:
    allowed = {"grpc", "google", "clara", "opentelemetry"}  # otel only in clara.telemetry
    found: dict[str, set[str]] = {}
    for path in (ROOT / "clara").rglob("*.py"):
        if "_proto" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in allowed:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
                if top == "opentelemetry" and path.name != "telemetry.py":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    assert found == {}


def test_clara_never_imports_the_mock() -> None:
    for path in (ROOT / "clara").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("server_mock") for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("server_mock"), path


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MOCK_EXTRA + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_without_the_mock_extra_the_driver_works_and_the_mock_says_what_to_install() -> None:
    result = _run(
        """
        import clara
        driver = clara.Driver(execute=lambda d, p: True, standalone=True, environ={})
        driver.start()
        assert driver.wait_for_completion(30).succeeded
        try:
            from server_mock import MockPlatform
        except ImportError as error:
            print(type(error).__name__, error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "MockExtraMissingError" in result.stdout
    assert "pip install 'clara-stage-driver[mock]'" in result.stdout
    assert "PyYAML" in result.stdout


def test_without_the_mock_extra_pytest_still_runs(tmp_path: Path) -> None:
    (tmp_path / "test_operator.py").write_text("def test_ok():\n    assert True\n")
    result = _run(
        f"""
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", {str(tmp_path)!r}]))
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
