"""Definitions the parser tests share: a valid two-operator example and a diamond."""

from __future__ import annotations

from typing import Any

import yaml

EXAMPLE = """\
api-version: 0.4.0
name: volume-segmentation
parameters: {}
operators:
- name: load-volume
  description: optional text
  container:
    image: clara-examples/load-volume
    tag: "0.1"
    command: ["python", "operators/load_volume.py"]
  variables:
    THRESHOLD: "100"
  input:
  - path: /input
  output:
  - path: /output
  - name: stats
    path: /stats
  timeout: 120
- name: segment
  container: {image: clara-examples/segment, tag: "0.1"}
  input:
  - from: load-volume
    path: /input
  - from: load-volume
    name: stats
    path: /stats
  output:
  - path: /output
"""


DIAMOND = """\
api-version: 0.4.0
name: diamond
operators:
- name: join
  container: {image: ex/join}
  input:
  - {from: right, path: /right}
  - {from: left, name: result, path: /left}
  output: [{path: /out}]
- name: right
  container: {image: ex/right}
  input: [{from: source, path: /in}]
  output: [{path: /out}]
- name: left
  container: {image: ex/left}
  input: [{from: source, path: /in}]
  output: [{name: result, path: /out}]
- name: source
  container: {image: ex/source}
  input: [{path: /in}]
  output: [{path: /out}]
- name: lonely
  container: {image: ex/lonely}
"""


def base() -> dict[str, Any]:
    """A fresh, valid definition as plain data (two operators, like EXAMPLE)."""
    return yaml.safe_load(EXAMPLE)  # type: ignore[no-any-return]


def dump(document: object) -> str:
    return yaml.safe_dump(document, sort_keys=False)
