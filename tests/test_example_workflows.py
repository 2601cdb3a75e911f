"""The example workflows on disk are exactly what example_workflows/build.py produces, and well formed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from example_workflows import build

FOLDER = Path(build.__file__).resolve().parent
RENDERED = build.render_all()


@pytest.mark.parametrize("filename", sorted(RENDERED))
def test_workflow_file_is_up_to_date(filename):
    assert (FOLDER / filename).read_text() == RENDERED[filename], "run: python example_workflows/build.py"


def test_no_stray_workflow_files():
    assert sorted(p.name for p in FOLDER.glob("*.json")) == sorted(RENDERED)


@pytest.mark.parametrize("filename", sorted(RENDERED))
def test_links_are_consistent_and_every_workflow_explains_itself(filename):
    wf = json.loads(RENDERED[filename])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[dst]["inputs"][dst_slot]["type"] == nodes[src]["outputs"][src_slot]["type"] == kind
    assert any(n["type"] == "Note" and len(n["widgets_values"][0]) > 100 for n in wf["nodes"])
    assert any(n["type"].startswith("SAE") for n in wf["nodes"])
