"""One vocabulary for Python and the browser: the routes, UI keys, sidebar tab and heatmap colours are written in
sae_core/frontend.py only; web/js/sae_lab_shared.js is generated from it and the other scripts read it from there."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from sae_core import frontend, render

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [p for p in (REPO / "web" / "js").glob("*.js") if p != frontend.JS_FILE]


def test_the_shared_script_is_up_to_date():
    assert frontend.JS_FILE.read_text() == frontend.js_source(), "run: python -m sae_core.frontend"


def test_the_shared_script_holds_what_python_says(tmp_path):
    written = frontend.write_js(tmp_path / "shared.js").read_text()
    body = written[written.index("Object.freeze(") + len("Object.freeze("): written.rindex(");")]
    shared = json.loads(body)
    assert shared["routes"] == frontend.ATLAS_ROUTES and all(p.startswith(frontend.ATLAS_PREFIX + "/")
                                                             for p in shared["routes"].values())
    assert shared["ui"] == {"text": "text", "features": frontend.UI_FEATURES, "atlas": frontend.UI_ATLAS,
                            "inspect": frontend.UI_INSPECT}
    assert shared["inspectRoutes"] == frontend.INSPECT_ROUTES and all(
        p.startswith(frontend.INSPECT_PREFIX + "/") for p in shared["inspectRoutes"].values())
    assert shared["heatmap"]["bins"] == render.HEATMAP_BINS and shared["heatmap"]["alpha"] == render.HEATMAP_ALPHA


def test_no_script_or_node_spells_the_routes_or_ui_keys_again():
    # (importing the sidebar's module, "./sae_lab_atlas.js", is not spelling its UI key)
    spelled = re.compile(r"/sae_lab/|sae_lab_features|sae_lab_atlas\b(?!\.js)|\"sae-lab-atlas\"|SAEFeatureSteer")
    offenders = [p.relative_to(REPO).as_posix() for p in SCRIPTS + list((REPO / "nodes").glob("*.py"))
                 if p.name != "steer.py" and spelled.search(p.read_text())]
    assert offenders == []
    for script in SCRIPTS:
        assert 'from "./sae_lab_shared.js"' in script.read_text(), script.name


def test_the_steer_node_named_is_a_real_node():
    assert f'node_id="{frontend.STEER_NODE}"' in (REPO / "nodes" / "steer.py").read_text()
    observe = (REPO / "nodes" / "observe.py").read_text()
    assert f'node_id="{frontend.INSPECT_NODE}"' in observe
    assert all(f'"{name}"' in observe for name in frontend.INSPECT_MASK_WIDGETS)


def test_the_browser_bin_colours_are_those_overlay_heatmap_paints():
    """A map with one value per bin, overlaid with alpha 1 on black: each cell has exactly the shared bin colour."""
    bins = render.HEATMAP_BINS
    heat = (np.arange(bins, dtype=np.float64) + 0.5)[None, :] / bins
    painted = render.overlay_heatmap(np.zeros((1, bins, 3), np.uint8), heat, alpha=1.0, normalized=True)
    colors = frontend.heatmap_bin_colors()
    assert len(colors) == bins
    for b in range(1, bins):  # bin 0 stays transparent
        assert painted[0, b].tolist() == colors[b]
    assert painted[0, 0].tolist() == [0, 0, 0]


def test_the_inspector_message_carries_the_id_and_the_images():
    images = [{"filename": "a.png", "subfolder": "", "type": "temp"}]
    assert frontend.inspect_ui("abc", images) == {frontend.UI_INSPECT: [{"id": "abc", "images": images}]}


def test_feature_tables_carry_the_keys_the_frontend_reads():
    shown = frontend.feature_table_ui("rank feature", [np.int64(5), 11], "x.atlas")
    assert shown == {"text": ("rank feature",), frontend.UI_FEATURES: [5, 11], frontend.UI_ATLAS: ("x.atlas",)}
    assert all(type(f) is int for f in shown[frontend.UI_FEATURES])
