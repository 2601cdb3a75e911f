"""Every node of the pack has a help page where the frontend asks first: web/docs/<NodeId>/en.md (both frontends,
1.27 and 1.49, request /extensions/<pack>/docs/<NodeId>/<locale>.md and only then fall back to <NodeId>.md)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "web" / "docs"


def node_ids() -> set[str]:
    return {m for path in (REPO / "nodes").glob("*.py") for m in re.findall(r'node_id="(\w+)"', path.read_text())}


def test_every_node_has_a_help_page_in_the_layout_the_frontend_asks_for_first():
    ids = node_ids()
    assert len(ids) >= 15
    pages = {p.parent.name for p in DOCS.glob("*/en.md")}
    assert ids <= pages, f"missing help pages: {sorted(ids - pages)}"
    assert pages <= ids, f"help pages of no node: {sorted(pages - ids)}"
    flat = sorted(p.name for p in DOCS.glob("*.md"))
    assert not flat, f"help pages in the fallback layout (the frontend 404s on <NodeId>/en.md first): {flat}"
    for node_id in ids:
        text = (DOCS / node_id / "en.md").read_text()
        assert text.startswith("# ") and len(text) > 400, node_id


def test_texts_say_transformer_block_where_dits_work_too():
    """A block of a U-Net or a DiT is a transformer block: no help page or node text calls it a U-Net block."""
    texts = list(DOCS.glob("*/en.md")) + [p for p in (REPO / "nodes").glob("*.py") if 'node_id="' in p.read_text()]
    offending = [p.relative_to(REPO).as_posix() for p in texts
                 if re.search(r"U-?Net (transformer )?blocks?\b", p.read_text(), re.IGNORECASE)]
    assert not offending, f"say 'transformer block' in {offending}"
