"""Every node of the pack has a help page in web/docs/<NodeId>.md (ComfyUI shows it from the node's ?)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_node_has_a_help_page():
    node_ids = {m for path in (REPO / "nodes").glob("*.py") for m in re.findall(r'node_id="(\w+)"', path.read_text())}
    assert len(node_ids) >= 15
    pages = {p.stem for p in (REPO / "web" / "docs").glob("*.md")}
    assert node_ids <= pages, f"missing help pages: {sorted(node_ids - pages)}"
    for node_id in node_ids:
        text = (REPO / "web" / "docs" / f"{node_id}.md").read_text()
        assert text.startswith("# ") and len(text) > 400, node_id
