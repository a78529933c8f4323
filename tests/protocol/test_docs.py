"""docs/PROTOCOL.md's frame tables are the ones the code defines."""

from __future__ import annotations

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_protocol_doc_frame_tables_match_the_code() -> None:
    tables = runpy.run_path(str(ROOT / "scripts" / "protocol_tables.py"))["main"]()
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    begin = doc.index("-->\n", doc.index("<!-- frames:begin")) + 4
    end = doc.index("<!-- frames:end -->")
    assert doc[begin:end].strip() == tables.strip(), "run scripts/protocol_tables.py"
