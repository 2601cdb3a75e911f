"""The feature browser in a real ComfyUI frontend, driven by headless Chromium through Playwright.

Needs COMFYUI_PATH, the Debian chromium package (/usr/bin/chromium) and the playwright Python package
(its bundled driver; no browser download). Skipped, saying which is missing, otherwise.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import comfy_harness  # noqa: F401  (first: skips without COMFYUI_PATH)
from server_harness import ComfyServer

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser test")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium executable (apt-get install chromium) for the browser test", allow_module_level=True)

from checkpoint_writers import write_unbox  # noqa: E402
from PIL import Image  # noqa: E402

from sae_core import SparseCode, load_sae  # noqa: E402
from sae_core.atlas.feature_atlas import Example, FeatureAtlas  # noqa: E402
from sae_core.atlas.label_import import import_label_file  # noqa: E402

WORKFLOWS = sorted((comfy_harness.REPO / "example_workflows").glob("*.json"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
STRIPES, FUR = 5, 11


def build_atlas(folder) -> None:
    """A small atlas whose feature 5 fires on the left half of every example, with coloured thumbnails."""
    atlas = FeatureAtlas(32, top_n=3, meta={"name": "tiny", "hookpoint": "unet.down_blocks.2.attentions.1"})
    for i in range(6):
        values = torch.zeros(4, 4, 2)
        indices = torch.full((4, 4, 2), FUR)
        values[:, :2, 0], indices[..., 0] = 3.0 + i, STRIPES
        values[..., 1] = 0.5
        thumb = np.zeros((64, 64, 3), np.uint8)
        thumb[..., i % 3] = 200
        atlas.add(Example(SparseCode(values, indices), prompt=f"a tiger, photo {i}", seed=i, thumbnail=thumb))
    atlas.set_label(STRIPES, "tiger stripes")
    atlas.save(folder)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser_base")
    build_atlas(base / "models" / "sae" / "tiny.atlas")
    with ComfyServer(base, env={"HF_HUB_OFFLINE": "1"}) as running:  # previews come from the cache only
        yield running


@pytest.fixture(scope="module")
def page(server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        # the stock frontend logs its own errors on a fresh profile; keep the ones raised in this pack's script
        page.on("pageerror", lambda exc: errors.append(f"{exc}\n{exc.stack}") if "/extensions/sae-lab/" in (
            exc.stack or "") else None)
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.SAELab", timeout=120_000)
        # a fresh user gets a welcome/templates dialog; close it like a person would. Found by role (frontend
        # 1.49+) or by PrimeVue's mask (older frontends)
        dialogs = page.locator("[role=dialog], .p-dialog-mask")
        for _ in range(20):
            page.wait_for_timeout(500)
            if dialogs.count() == 0:
                break
            page.keyboard.press("Escape")
        page.errors = errors
        yield page
        browser.close()


def test_routes_answer_over_http(server):
    atlases = server.get("/sae_lab/atlas/list")["atlases"]
    assert [a["name"] for a in atlases] == ["tiny.atlas"]
    detail = server.get(f"/sae_lab/atlas/feature?atlas=tiny.atlas&id={STRIPES}")
    assert detail["label"] == "tiger stripes" and len(detail["examples"]) == 3
    status, answer = server.post("/sae_lab/atlas/label", {"atlas": "../../etc.atlas", "id": 1, "label": "x"})
    assert status in (400, 404) and "error" in answer
    status, answer = server.post("/sae_lab/atlas/label", {"atlas": "tiny.atlas", "id": 1, "label": "x" * 5000})
    assert status == 413


def test_browse_search_label_and_use_a_feature(server, page, tmp_path):
    node_id = page.evaluate("""() => {
        const node = LiteGraph.createNode("SAEFeatureSteer");
        app.graph.add(node);
        app.canvas.selectNode(node);
        return node.id;
    }""")
    page.click(".sae-lab-atlas-tab-button")
    page.wait_for_selector(f"[data-testid=sae-feature-{STRIPES}]", timeout=30_000)
    assert page.locator("[data-testid^=sae-feature-]").count() == 2  # features 5 and 11 fired

    page.fill("[data-testid=sae-atlas-search]", "stripes")
    page.wait_for_function("() => document.querySelectorAll('[data-testid^=sae-feature-]').length === 1")
    page.click(f"[data-testid=sae-feature-{STRIPES}]")
    page.wait_for_selector("[data-testid=sae-use-feature]")
    assert page.locator("canvas.sae-heat").count() == 3
    # the heatmap is drawn over the thumbnail: hot (red) on the left half where the feature fired
    left, right = page.evaluate("""() => {
        const c = document.querySelector("canvas.sae-heat");
        const px = (x, y) => Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data);
        return [px(10, c.height / 2), px(c.width - 10, c.height / 2)];
    }""")
    # top example: the blue thumbnail of photo 5; left = 60% jet red over blue, right = untouched blue
    assert left[0] > 90 and left[2] < 120
    assert right[0] < 30 and right[2] > 150

    page.fill("[data-testid=sae-label-input]", "stripes, orange and black")
    page.click("[data-testid=sae-label-save]")
    page.wait_for_function("() => document.querySelector('[data-testid=sae-message]').textContent.includes('Saved')")
    labels = json.loads((server.base / "models" / "sae" / "tiny.atlas" / "labels.json").read_text())
    assert labels == {str(STRIPES): "stripes, orange and black"}

    page.click("[data-testid=sae-use-feature]")
    value = page.evaluate(f"""() => app.graph.getNodeById({node_id}).widgets.find(w => w.name === "features").value""")
    assert value == str(STRIPES)
    page.screenshot(path=str(tmp_path / "atlas_panel.png"))
    shot = tmp_path / "atlas_panel.png"
    assert shot.stat().st_size > 10_000
    assert page.errors == []


def test_use_without_a_selected_steer_node_says_what_to_do(page):
    page.evaluate("() => app.canvas.deselectAllNodes()")
    page.click("[data-testid=sae-use-feature]")
    message = page.locator("[data-testid=sae-message]").text_content()
    assert "Select an \"SAE Feature Steer\" node" in message


def test_top_features_show_their_table_and_link_into_the_atlas(page):
    page.evaluate("() => app.extensionManager.sidebarTab.activeSidebarTabId === 'sae-lab-atlas' && "
                  "app.extensionManager.sidebarTab.toggleSidebarTab('sae-lab-atlas')")
    node_id = page.evaluate("""() => {
        const node = LiteGraph.createNode("SAETopFeatures");
        app.graph.add(node);
        node.onExecuted({text: ["rank  feature  mean", "   1       5  4.50"], sae_lab_features: [5, 11],
                         sae_lab_atlas: ["tiny.atlas"]});
        return node.id;
    }""")
    assert "feature  mean" in page.locator("[data-testid=sae-node-text]").text_content()
    page.locator("[data-testid=sae-feature-links] a[data-feature='11']").click()
    page.wait_for_function("() => document.querySelector('.sae-lab-panel h3')?.textContent.startsWith('Feature #11')")
    assert page.evaluate("() => app.extensionManager.sidebarTab.activeSidebarTabId") == "sae-lab-atlas"
    assert node_id is not None


PAPER_RUN = "unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001/final"
PAPER_ATLAS = f"surokpro2__sdxl-saes/{PAPER_RUN}.atlas"
CARTOON, TIGER, EVIL = 4998, 4977, 2301
PREVIEW_COLORS = {CARTOON: (230, 40, 200), TIGER: (40, 200, 60)}  # downloaded already; EVIL is not


def paper_sae_with_labels_and_previews(models):
    """The paper's down.2.1 SAE where Load SAE puts it, labels imported from a public-style JSON file, and two of its
    published previews already in the cache beside it (the server runs offline)."""
    repo = models / "sae" / "surokpro2__sdxl-saes"
    write_unbox(repo, hook="unet.down_blocks.2.attentions.1", d=16, n=5120, k=4)
    rows = [{"id": CARTOON, "label": "cartoon", "category": "composition", "confidence": "high", "meanActivation": 3.1},
            {"id": TIGER, "label": "tiger stripes", "category": "object", "confidence": "medium"},
            {"id": EVIL, "label": "evil face", "category": "mood", "confidence": "low"}]
    rows += [{"id": f, "label": f"office supplies {f}", "category": "object", "confidence": "high"}
             for f in range(0, 5120, 97)]
    labels = models.parent / "down.2.1.json"
    labels.write_text(json.dumps(rows))
    import_label_file(repo / f"{PAPER_RUN}.atlas", load_sae(repo / PAPER_RUN), labels)
    for feature, color in PREVIEW_COLORS.items():
        target = repo / f"{PAPER_RUN}.atlas" / "previews" / "down.2.1" / f"{feature}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 96), color).save(target, quality=95)


def _image_center(page, selector):
    page.wait_for_function(f"() => document.querySelector('{selector}')?.complete && "
                           f"document.querySelector('{selector}').naturalWidth > 0", timeout=30_000)
    return page.evaluate(f"""() => {{
        const img = document.querySelector('{selector}');
        const c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext("2d");
        ctx.drawImage(img, 0, 0);
        return Array.from(ctx.getImageData(c.width / 2, c.height / 2, 1, 1).data).slice(0, 3);
    }}""")


def test_imported_labels_and_cached_previews_show_in_the_sidebar(server, page):
    paper_sae_with_labels_and_previews(server.base / "models")
    names = [a["name"] for a in server.get("/sae_lab/atlas/list")["atlases"]]
    assert PAPER_ATLAS in names
    # open the sidebar afresh (it lists the atlases when it opens) and pick the paper SAE's atlas
    page.evaluate("() => app.extensionManager.sidebarTab.activeSidebarTabId === 'sae-lab-atlas' && "
                  "app.extensionManager.sidebarTab.toggleSidebarTab('sae-lab-atlas')")
    page.wait_for_selector(".sae-lab-panel", state="detached")
    page.evaluate("() => app.extensionManager.sidebarTab.toggleSidebarTab('sae-lab-atlas')")
    page.wait_for_selector(f"[data-testid=sae-atlas-select] option[value='{PAPER_ATLAS}']", state="attached")
    page.fill("[data-testid=sae-atlas-search]", "")  # an earlier search stays applied when the panel reopens
    page.select_option("[data-testid=sae-atlas-select]", PAPER_ATLAS)
    page.wait_for_function("() => document.querySelector('.sae-lab-panel .sae-stats')?.textContent"
                           ".startsWith('5120 features')")  # every feature has a published preview
    stats = page.locator(".sae-lab-panel .sae-stats").first.text_content()
    assert f"{3 + len(range(0, 5120, 97))} labelled" in stats and "surokpro2/sdxl_sae_images" in stats
    cards = ".sae-grid [data-testid^=sae-feature-]"
    page.wait_for_function(f"() => document.querySelectorAll('{cards}').length > 0")
    first_page = page.locator(cards).count()
    assert 0 < first_page < 5120
    page.click("[data-testid=sae-more]")  # the next page is appended
    page.wait_for_function(f"() => document.querySelectorAll('{cards}').length === {2 * first_page}")

    # search by label: the imported label, its category and its cached preview (checked by its pixels)
    page.fill("[data-testid=sae-atlas-search]", "cartoon")
    page.wait_for_function("() => document.querySelectorAll('.sae-grid [data-testid^=sae-feature-]').length === 1")
    card = page.locator(f"[data-testid=sae-feature-{CARTOON}]")
    assert "cartoon" in card.text_content() and "composition" in card.text_content()
    assert _image_center(page, f"[data-testid=sae-preview-{CARTOON}]") == pytest.approx(
        list(PREVIEW_COLORS[CARTOON]), abs=12)
    # search by category, and by id
    page.fill("[data-testid=sae-atlas-search]", "mood")
    page.wait_for_selector(f"[data-testid=sae-feature-{EVIL}]")
    # offline and not downloaded: a placeholder that says so
    placeholder = page.wait_for_selector(f"[data-testid=sae-placeholder-{EVIL}]")
    assert "Offline" in placeholder.text_content()
    page.fill("[data-testid=sae-atlas-search]", f"#{TIGER}")
    page.wait_for_function("() => document.querySelectorAll('.sae-grid [data-testid^=sae-feature-]').length === 1")
    assert _image_center(page, f"[data-testid=sae-preview-{TIGER}]") == pytest.approx(
        list(PREVIEW_COLORS[TIGER]), abs=12)

    # the detail view: label, category, confidence and source, the large preview
    page.click(f"[data-testid=sae-feature-{TIGER}]")
    page.wait_for_selector("[data-testid=sae-label-info]")
    info = page.locator("[data-testid=sae-label-info]").text_content()
    assert "object" in info and "medium confidence" in info and "imported from file down.2.1.json" in info
    assert page.locator("[data-testid=sae-label-input]").input_value() == "tiger stripes"
    assert "No run recorded" in page.locator(".sae-lab-panel").text_content()
    # a label written here wins over the imported one, which stays visible behind it
    page.fill("[data-testid=sae-label-input]", "orange stripes")
    page.click("[data-testid=sae-label-save]")
    page.wait_for_function("() => document.querySelector('[data-testid=sae-message]').textContent.includes('Saved')")
    detail = server.get(f"/sae_lab/atlas/feature?atlas={PAPER_ATLAS}&id={TIGER}")
    assert detail["label"] == "orange stripes" and detail["label_info"]["imported"]["text"] == "tiger stripes"
    exported = json.loads(urlopen_text(server, f"/sae_lab/atlas/labels?atlas={PAPER_ATLAS}&format=json"))
    assert {r["id"]: r["label"] for r in exported}[TIGER] == "orange stripes"
    assert page.errors == []


def urlopen_text(server, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        return response.read().decode()


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_in_the_frontend_with_every_widget_in_place(page, workflow):
    """What a user sees after opening the template: known nodes, and each widget holding its saved value."""
    saved = json.loads(workflow.read_text())
    loaded = page.evaluate("""async (wf) => {
        await app.loadGraphData(wf);
        return app.graph._nodes.map(n => ({id: n.id, type: n.type, known: !!LiteGraph.registered_node_types[n.type],
                                           values: (n.widgets || []).filter(w => w.serialize !== false)
                                                                    .map(w => w.value)}));
    }""", saved)
    by_id = {str(n["id"]): n for n in loaded}  # newer frontends read node ids back as strings
    for node in saved["nodes"]:
        shown = by_id[str(node["id"])]
        assert shown["known"], f"{node['type']} is not a registered node type"
        if node.get("widgets_values") is not None and node["type"] not in ("Note", "MarkdownNote"):
            assert shown["values"] == node["widgets_values"], f"{workflow.name}: {node['type']} widgets"
