"""The ResponseHeader codes: exactly the documented table, and the mock's own apart from it."""

from __future__ import annotations

import re
from pathlib import Path

from server_mock._errors import DOCUMENTED_CODES, ErrorCode

ROOT = Path(__file__).resolve().parents[2]

# "RPC Error Codes", Clara Deploy SDK 0.7.2 / 0.7.4 / 0.8.1 (sdk/platform/public/docs/
# error-codes.html): every code the docs define, by the name the docs give it.
DOCUMENTED = {
    "Invalid Pipeline ID": -0x1000,
    "Missing/Invalid Pipeline": -0x1001,
    "Pipeline Store Error": -0x1002,
    "Pipeline List Error": -0x1003,
    "Pipeline Update Error": -0x1004,
    "Pipeline Definition Error": -0x1100,
    "Pipeline Load Error": -0x1101,
    "Invalid Job ID": -0x2000,
    "Missing/Invalid Job": -0x2001,
    "Job Store Error": -0x2002,
    "Jobs List Error": -0x2003,
    "Invalid Job Name": -0x2100,
}
RANGES = {"pipelines": 0x1000, "jobs": 0x2000, "payloads": 0x3000, "models": 0x4000}


def test_documented_codes_have_their_documented_value_and_meaning() -> None:
    assert {name: int(code) for code, name in DOCUMENTED_CODES.items()} == DOCUMENTED


def test_the_mocks_own_codes_never_reuse_a_documented_number() -> None:
    documented = set(DOCUMENTED.values())
    for code in ErrorCode:
        if code in DOCUMENTED_CODES:
            continue
        magnitude = -int(code)
        assert code not in documented, code
        if magnitude < 0x1000:
            continue  # the generic codes (INTERNAL, UNSUPPORTED)
        service = magnitude & 0xF000
        assert service in RANGES.values(), code
        assert magnitude & 0x800, f"{code.name} = -{magnitude:#x} lacks the mock's 0x800 bit"
    assert len({int(c) for c in ErrorCode}) == len(ErrorCode)  # no aliases


def test_the_platform_api_page_lists_every_code_with_its_value() -> None:
    text = (ROOT / "docs" / "platform-api.md").read_text()
    rows = dict(re.findall(r"^\| `(-0x[0-9a-f]+)` \| `(\w+)` \|", text, re.MULTILINE))
    assert {name: int(value, 16) for value, name in rows.items()} == {
        code.name: int(code) for code in ErrorCode
    }
