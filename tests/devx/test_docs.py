"""The docs stay true: generated files are fresh, diagrams complete, links in place.

docs/getting-started.md has a test of its own (test_getting_started.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import clara

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_generated_api_and_environment_docs_are_fresh() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (
        f"docs are stale; run: python scripts/gen_api_docs.py\n{proc.stdout}{proc.stderr}"
    )


def test_api_doc_covers_every_public_name() -> None:
    text = (DOCS / "api.md").read_text()
    for name in clara.__all__:
        assert f"`clara.{name}`" in text, name
    environment = (DOCS / "environment.md").read_text()
    for variable in clara.ENVIRONMENT_VARIABLES:
        assert f"| `{variable}` |" in environment, variable


def mermaid(text: str) -> str:
    match = re.search(r"```mermaid\n(.*?)```", text, re.DOTALL)
    assert match is not None, "no mermaid block"
    return match.group(1)


def test_lifecycle_diagram_has_every_state_and_the_cleanup_paths() -> None:
    text = (DOCS / "lifecycle.md").read_text()
    diagram = mermaid(text)
    assert diagram.startswith("stateDiagram-v2\n")
    edges = re.findall(r"^\s*(\[\*\]|\w+) --> (\[\*\]|\w+)", diagram, re.MULTILINE)
    states = {s for edge in edges for s in edge} - {"[*]"}
    assert states == {state.name for state in clara.DriverState}
    # Failure, cancellation and timeout paths all lead to CLEANING_UP.
    into_cleanup = {a for a, b in edges if b == "CLEANING_UP"}
    assert into_cleanup == {"CONNECTING", "PREPARING", "WAITING_FOR_INPUTS", "EXECUTING"}
    for kind in clara.NotificationKind:
        assert f"`{kind.value}`" in text, kind


def test_readme_links_the_docs_and_the_plugin_example() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in ("getting-started", "api", "lifecycle", "contract", "environment"):
        assert f"docs/{page}.md" in readme, page
        assert (DOCS / f"{page}.md").is_file(), page
    assert "clara_stage_runner" in readme and "clara_pipeline_runner" in readme


def test_every_test_the_reliability_fault_table_names_exists() -> None:
    """docs/reliability.md's fault table points at tests: each must be there, by that name."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    table = text.split("### Every fault, what happens, and the test that shows it", 1)[1]
    cited = re.findall(r"`((?:tests/[\w/]+/)?test_\w+\.py)(?:::(test_\w+)(\*)?)?`", table)
    assert len(cited) > 20, "the fault table cites no tests"
    missing = []
    for path, name, wildcard in cited:
        file = ROOT / path if path.startswith("tests/") else ROOT / "tests" / "reliability" / path
        if not file.is_file():
            missing.append(path)
            continue
        if name:
            pattern = rf"^def {name}\w*\(" if wildcard else rf"^def {name}\("
            if not re.search(pattern, file.read_text(), re.MULTILINE):
                missing.append(f"{path}::{name}{wildcard}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
