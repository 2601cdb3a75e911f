"""What a user sees in the real ComfyUI frontend, in headless Chromium: the main example workflows on the canvas,
the SAE Atlas grid, a feature's detail view and SAE Top Features after a tiny run, as screenshots, with the checks
that pixels and the DOM allow (no text overflowing its box in the sidebar, no "null"/"undefined" shown, every row
of a node's table visible, no console error or 404 from this pack).

tests/comfyui/test_browser.py runs it at small size; for the README's pictures (docs/images/):

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfyui/screenshots.py docs/images

Needs the Debian chromium package (/usr/bin/chromium) and the playwright Python package (its driver only).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent, HERE.parents[1]):  # run as a script: the test helpers and the pack importable
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import comfy_harness  # noqa: E402,F401  (first: COMFYUI_PATH on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from checkpoint_writers import write_unbox  # noqa: E402
from PIL import Image  # noqa: E402
from server_harness import ComfyServer, tiny_prompt, workflow_server  # noqa: E402

from sae_core import SparseCode, load_sae  # noqa: E402
from sae_core.atlas.feature_atlas import Example, FeatureAtlas  # noqa: E402
from sae_core.atlas.label_import import import_label_file  # noqa: E402
from sae_core.frontend import SIDEBAR_TAB  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
WORKFLOWS = HERE.parents[1] / "example_workflows"
EXPLORE = WORKFLOWS / "sdxl_turbo_explore.json"
CANVAS_SHOTS = ("sdxl_turbo_explore", "sdxl_turbo_paint_feature", "sd15_saeuron_style_unlearning",
                "flux_schnell_build_and_steer_sae")
PACK_URL = re.compile(r"/extensions/sae-lab/|/sae_lab/")

STRIPES, FUR = 5, 11  # the tiny atlas: feature 5 fires on the left half of every example
TINY_ATLAS = "tiny.atlas"
PAPER_RUN = "unet.down_blocks.2.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001/final"
PAPER_ATLAS = f"surokpro2__sdxl-saes/{PAPER_RUN}.atlas"
CARTOON, TIGER, EVIL = 4998, 4977, 2301
PREVIEW_COLORS = {CARTOON: (230, 40, 200), TIGER: (40, 200, 60)}  # downloaded already; EVIL is not


# ------------------------------------------------------------------ the scene
def build_tiny_atlas(folder: Path) -> None:
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


def paper_atlas_with_labels_and_previews(models: Path) -> None:
    """The paper's down.2.1 SAE where Load SAE puts it (unless already placed), labels imported from a public-style
    JSON file, and two of its published previews already in the cache beside it (the server runs offline)."""
    repo = models / "sae" / "surokpro2__sdxl-saes"
    if not (repo / PAPER_RUN).exists():
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


def scene_server(base: Path) -> ComfyServer:
    """A server that runs the example workflows on tiny models (offline), with the tiny and the paper atlas."""
    server = workflow_server(base)
    build_tiny_atlas(base / "models" / "sae" / TINY_ATLAS)
    paper_atlas_with_labels_and_previews(base / "models")
    return server


# ------------------------------------------------------------------ the page
@dataclass
class Watch:
    """Console messages, failed requests and uncaught errors that come from this pack."""

    problems: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self._pack(f"uncaught: {exc}\n{exc.stack}", exc.stack or ""))
        page.on("response", lambda r: self._pack(f"HTTP {r.status} {r.url}", r.url) if r.status >= 400 else None)
        page.on("requestfailed", lambda r: self._pack(f"request failed: {r.url} ({r.failure})", r.url))

    def _console(self, message) -> None:
        location = message.location.get("url", "") if message.location else ""
        self.console.append(f"{message.type}: {message.text} ({location})")
        if message.type == "error":
            self._pack(f"console error: {message.text} ({location})", f"{location} {message.text}")

    def _pack(self, text: str, where: str) -> None:
        if PACK_URL.search(where) or "SAE Lab" in where or "sae_lab" in where:
            self.problems.append(text)


def open_page(playwright, url: str, viewport: tuple[int, int] = (1400, 900)):
    """A fresh profile on the frontend, its welcome dialog closed, with a Watch on ``page.watch``."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.watch = Watch()
    page.watch.attach(page)
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.SAELab", timeout=120_000)
    # a fresh user gets a welcome/templates dialog; close it like a person would. Found by role (frontend
    # 1.49+) or by PrimeVue's mask (older frontends)
    dialogs = page.locator("[role=dialog], .p-dialog-mask")
    for _ in range(20):
        page.wait_for_timeout(500)
        if dialogs.count() == 0:
            break
        page.keyboard.press("Escape")
    return browser, page


def close_sidebar(page) -> None:
    page.evaluate(f"() => app.extensionManager.sidebarTab.activeSidebarTabId === '{SIDEBAR_TAB}' && "
                  f"app.extensionManager.sidebarTab.toggleSidebarTab('{SIDEBAR_TAB}')")
    page.wait_for_selector(".sae-lab-panel", state="detached")


def open_sidebar(page) -> None:
    """Open the SAE Atlas afresh (it lists the atlases when it opens)."""
    close_sidebar(page)
    page.evaluate(f"() => app.extensionManager.sidebarTab.toggleSidebarTab('{SIDEBAR_TAB}')")
    page.wait_for_selector(".sae-lab-panel .sae-content > *")


def show_atlas(page, atlas: str, query: str = "") -> None:
    """The grid of ``atlas`` (filtered by ``query``), once its cards and their pictures have loaded."""
    page.wait_for_selector(f"[data-testid=sae-atlas-select] option[value='{atlas}']", state="attached")
    page.fill("[data-testid=sae-atlas-search]", query)
    page.select_option("[data-testid=sae-atlas-select]", atlas)
    page.wait_for_function(f"""() => document.querySelector('[data-testid=sae-atlas-select]').value === '{atlas}'
        && document.querySelector('.sae-grid [data-testid^=sae-feature-]')""")
    settle_images(page)


def settle_images(page) -> None:
    page.wait_for_function("() => Array.from(document.querySelectorAll('.sae-lab-panel img')).every(i => i.complete)",
                           timeout=30_000)
    page.wait_for_timeout(300)


def load_workflow(page, path: Path) -> None:
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", json.loads(path.read_text()))
    page.wait_for_timeout(500)


# ------------------------------------------------------------------ checks
SIDEBAR_CHECK = """() => {
  const panel = document.querySelector('.sae-lab-panel');
  if (!panel) return ['no SAE Atlas panel'];
  const box = panel.getBoundingClientRect();
  const problems = [];
  const name = (el) => `${el.tagName.toLowerCase()}.${el.className || ''}[${(el.textContent || el.value || '')
    .trim().slice(0, 50)}]`;
  if (panel.scrollWidth > panel.clientWidth + 1)
    problems.push(`the panel scrolls sideways (${panel.scrollWidth} > ${panel.clientWidth})`);
  const measure = document.createElement('canvas').getContext('2d');
  const textWidth = (el, text) => {
    const s = getComputedStyle(el);
    measure.font = `${s.fontWeight} ${s.fontSize} ${s.fontFamily}`;
    return measure.measureText(text).width;
  };
  for (const el of panel.querySelectorAll('*')) {
    if (!el.getClientRects().length) continue;  // not displayed
    const style = getComputedStyle(el);
    const ownText = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    const r = el.getBoundingClientRect();
    if ((ownText || ['SELECT', 'INPUT', 'BUTTON', 'IMG', 'CANVAS'].includes(el.tagName))
        && (r.right > box.right + 1 || r.left < box.left - 1)) problems.push(`${name(el)} sticks out of the panel`);
    const ellipsis = style.textOverflow === 'ellipsis' && el.closest('[title]');
    if (ownText && !ellipsis && style.overflowX !== 'visible' && el.scrollWidth > el.clientWidth + 1)
      problems.push(`${name(el)} is cut (${el.scrollWidth} > ${el.clientWidth})`);
    const pad = (s) => parseFloat(s.paddingLeft) + parseFloat(s.paddingRight);
    if (el.tagName === 'SELECT' && el.selectedOptions[0]
        && textWidth(el, el.selectedOptions[0].textContent) > el.clientWidth - pad(style) - 18 && !el.title)
      problems.push(`select shows "${el.selectedOptions[0].textContent}" cut, with no title`);
    if (el.tagName === 'INPUT' && el.placeholder && !el.value
        && textWidth(el, el.placeholder) > el.clientWidth - pad(style) - 24)
      problems.push(`input placeholder "${el.placeholder}" is cut`);
  }
  // the pictures of the cards of one grid row line up: same top, same size (an image or a placeholder)
  const rows = new Map();
  for (const card of panel.querySelectorAll('.sae-card')) {
    const key = Math.round(card.getBoundingClientRect().top);
    rows.set(key, [...(rows.get(key) || []), card.firstElementChild.getBoundingClientRect()]);
  }
  for (const [top, pictures] of rows) {
    const spread = (f) => Math.max(...pictures.map(f)) - Math.min(...pictures.map(f));
    if (spread((r) => r.top) > 1 || spread((r) => r.height) > 1 || spread((r) => r.bottom) > 1)
      problems.push(`the card pictures of the grid row at ${top}px do not line up`);
  }
  const shown = panel.innerText;
  const bad = shown.match(/\\b(null|undefined|NaN)\\b|\\[object /);
  if (bad) problems.push(`the panel shows "${bad[0]}": ${shown.slice(Math.max(0, bad.index - 60), bad.index + 20)}`);
  return problems;
}"""

NODE_TEXT_CHECK = """(nodeId) => {
  const node = app.graph.getNodeById(nodeId);
  const problems = [];
  const ds = app.canvas.ds;
  const c = app.canvas.canvas.getBoundingClientRect();
  const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
  const rect = {left: (node.pos[0] + ds.offset[0]) * ds.scale + c.left,
                top: (node.pos[1] - title + ds.offset[1]) * ds.scale + c.top};
  rect.right = rect.left + node.size[0] * ds.scale;
  rect.bottom = (node.pos[1] + node.size[1] + ds.offset[1]) * ds.scale + c.top;
  const pre = node.widgets?.find((w) => w.name === 'sae_lab_text')?.element;
  const links = node.widgets?.find((w) => w.name === 'sae_lab_links')?.element;
  if (!pre) return ['no table on the node'];
  const p = pre.getBoundingClientRect();
  const rows = pre.textContent.split('\\n').length;
  const line = parseFloat(getComputedStyle(pre).lineHeight);
  if (pre.scrollHeight > pre.clientHeight + 1)
    problems.push(`the table scrolls: ${pre.clientHeight}px shown of ${pre.scrollHeight}px (${rows} rows)`);
  if (pre.clientHeight + 1 < rows * line)
    problems.push(`the table box (${pre.clientHeight}px) is lower than its ${rows} rows (${rows * line}px)`);
  if (p.bottom > rect.bottom + 2 || p.right > rect.right + 2) problems.push(`the table sticks out of its node`);
  if (links) {
    const l = links.getBoundingClientRect();
    const items = Array.from(links.children);
    if (l.bottom > rect.bottom + 2) problems.push('the feature links stick out of the node');
    if (l.top < p.bottom - 1) problems.push('the feature links overlap the table');
    const used = items.length ? Math.max(...items.map((a) => a.getBoundingClientRect().bottom)) - l.top : 0;
    if (l.height - used > 2 * line + 8)
      problems.push(`the feature links box has ${Math.round(l.height - used)}px of blank space`);
  }
  return problems;
}"""


CHART_NODES = """() => {
  const ds = app.canvas.ds;
  const c = app.canvas.canvas.getBoundingClientRect();
  const ours = (n) => n && String(n.type).startsWith('SAE');
  const fed = (n) => (n.inputs || []).some((i) => {
    const link = i.link != null ? (app.graph.links?.[i.link] ?? app.graph.links?.get?.(i.link)) : null;
    return link && ours(app.graph.getNodeById(link.origin_id));
  });
  return app.graph._nodes.filter((n) => n.type === 'PreviewImage' && fed(n)).map((n) => ({
    id: n.id, left: (n.pos[0] + ds.offset[0]) * ds.scale + c.left, top: (n.pos[1] + ds.offset[1]) * ds.scale + c.top,
    width: n.size[0] * ds.scale, height: n.size[1] * ds.scale, scale: ds.scale}));
}"""


def chart_node_problems(page, shot: Path) -> list[str]:
    """By the pixels of a screenshot: a chart (white) shown by an image node fills the node down to its size caption,
    with no blank band under it."""
    picture = np.asarray(Image.open(shot).convert("L"), np.float32)
    problems = []
    for node in page.evaluate(CHART_NODES):
        x0, y0 = int(node["left"]) + 4, int(node["top"])
        x1, y1 = int(node["left"] + node["width"]) - 4, int(node["top"] + node["height"])
        if x0 < 0 or y0 < 0 or x1 > picture.shape[1] or y1 > picture.shape[0]:
            continue  # not entirely on the screen
        white_rows = np.where((picture[y0:y1, x0:x1] > 235).mean(1) > 0.5)[0]
        if not len(white_rows):
            problems.append(f"image node {node['id']} shows no chart")
            continue
        blank = (y1 - y0) - white_rows.max()
        if blank > 40 * node["scale"]:
            problems.append(f"image node {node['id']} leaves {blank}px blank under its chart")
    return problems


def sidebar_problems(page) -> list[str]:
    return page.evaluate(SIDEBAR_CHECK)


def node_text_problems(page, node_id) -> list[str]:
    return page.evaluate(NODE_TEXT_CHECK, node_id)


# ------------------------------------------------------------------ a tiny run shown on the canvas
def run_in_page(page, server: ComfyServer, workflow: Path, timeout: float = 600, edit=None) -> dict:
    """Load ``workflow`` on the canvas and run it on the tiny models for this page's client, so that the frontend
    gets the executed messages and shows the outputs on the nodes as it does after Queue. ``edit(prompt)`` may
    change the API prompt first (more steps, say)."""
    load_workflow(page, workflow)
    client_id = page.evaluate("() => app.api?.clientId ?? app.api?.initialClientId ?? "
                              "sessionStorage.getItem('clientId')")
    prompt = tiny_prompt(workflow, server.object_info)
    if edit is not None:
        edit(prompt)
    status, answer = server.post("/prompt", {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())})
    assert status == 200, answer
    entry = _wait(server, answer, timeout)
    page.wait_for_timeout(1500)
    return entry


def _wait(server: ComfyServer, answer: dict, timeout: float) -> dict:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        history = server.get(f"/history/{answer['prompt_id']}")
        entry = history.get(answer["prompt_id"])
        if entry and entry.get("status", {}).get("completed") is not None:
            assert entry["status"].get("status_str") != "error", json.dumps(entry["status"])[:3000]
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"the tiny run did not finish in {timeout}s")


def nodes_of(page, node_type: str) -> list:
    return page.evaluate(f"() => app.graph._nodes.filter((n) => n.type === '{node_type}').map((n) => n.id)")


def same_row(page, node_id, types: tuple[str, ...]) -> list:
    """The nodes of these types beside ``node_id`` (their tops within 120 px of its top)."""
    return page.evaluate("""([id, types]) => {
        const y = app.graph.getNodeById(id).pos[1];
        return app.graph._nodes.filter((n) => types.includes(n.type) && Math.abs(n.pos[1] - y) < 120).map((n) => n.id);
    }""", [node_id, list(types)])


def dismiss_toasts(page) -> None:
    """Close the frontend's notices (missing model files of a workflow, job done): they cover the canvas."""
    for _ in range(10):
        buttons = page.locator(".p-toast-close-button, [data-testid=error-overlay-dismiss]")
        if buttons.count() == 0:
            break
        buttons.first.click(force=True)
        page.wait_for_timeout(150)


def frame_nodes(page, node_ids: list) -> None:
    """Zoom the canvas onto some nodes (as a user would), at most 100 %."""
    page.evaluate("""(ids) => {
        const nodes = ids.map((id) => app.graph.getNodeById(id));
        const x0 = Math.min(...nodes.map((n) => n.pos[0])) - 20, y0 = Math.min(...nodes.map((n) => n.pos[1])) - 80;
        const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 20;
        const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 20;
        const c = app.canvas.canvas.getBoundingClientRect();
        const ds = app.canvas.ds;
        ds.scale = Math.min(1, c.width / (x1 - x0), c.height / (y1 - y0));
        ds.offset[0] = -x0 + (c.width / ds.scale - (x1 - x0)) / 2;
        ds.offset[1] = -y0;
        app.canvas.setDirty(true, true);
    }""", node_ids)
    page.wait_for_timeout(400)


# ------------------------------------------------------------------ SAE Inspect on the canvas
def steps(count: int):
    """An ``edit`` for ``run_in_page``: every KSampler at ``count`` steps (the inspector's slider has steps)."""
    def edit(prompt: dict) -> None:
        for node in prompt.values():
            if node["class_type"] == "KSampler":
                node["inputs"]["steps"] = count
    return edit


# the whole picture is on the inspector's widget (not clipped by a node still at its size before the picture)
INSPECTOR_SHOWN = """(id) => {
    const i = app.graph.getNodeById(id)?.saeInspector;
    if (!i?.payload || !i.picture.complete || !i.picture.naturalWidth) return false;
    const p = i.picture.getBoundingClientRect(), w = i.root.getBoundingClientRect();
    const inside = (x, y) => i.stage.contains(document.elementFromPoint(x, y));
    return p.height > 50 && p.bottom <= w.bottom + 1 && inside(p.left + 1, p.top + 1)
        && inside(p.right - 1, p.bottom - 1);
}"""

# what a person would see cut or misplaced on the inspector: the picture, the overlay over it, the rows' buttons
INSPECTOR_CHECK = """(id) => {
    const i = app.graph.getNodeById(id).saeInspector, problems = [];
    const box = (e) => e.getBoundingClientRect(), w = box(i.root), p = box(i.picture), o = box(i.overlay);
    if (p.bottom > w.bottom + 1 || p.right > w.right + 1) problems.push('the picture is cut by the widget');
    if (Math.abs(o.left - p.left) > 1 || Math.abs(o.top - p.top) > 1 || Math.abs(o.width - p.width) > 1
        || Math.abs(o.height - p.height) > 1) problems.push('the heatmap overlay is not over the picture');
    for (const b of i.root.querySelectorAll('.sae-inspect-row .sae-inspect-button')) {
        if (box(b).right > w.right + 1) problems.push(`button ${b.dataset.testid} is cut off`);
    }
    if (!i.root.querySelector('.sae-inspect-row')) problems.push('no feature listed');
    return problems;
}"""


def show_inspector(page, node_id) -> None:
    """Frame SAE Inspect once its widget has the recording and the picture (framed twice: in view, the node fits
    itself to the picture)."""
    page.wait_for_function("(id) => { const i = app.graph.getNodeById(id)?.saeInspector; "
                           "return i?.payload && i.picture.complete && i.picture.naturalWidth > 0; }",
                           arg=node_id, timeout=30_000)
    for _ in range(2):
        frame_nodes(page, [node_id])
        page.wait_for_function(INSPECTOR_SHOWN, arg=node_id, timeout=10_000)


def hover_inspector(page, node_id, x: int, y: int, click: bool = False) -> list[tuple[int, float, float]]:
    """Move the mouse over image pixel (x, y) of the inspector (click: keep it); the features it lists then
    (id, activation, fraction of the image), as the rows carry them."""
    point = page.evaluate("""([id, x, y]) => {
        const i = app.graph.getNodeById(id).saeInspector;
        const r = i.picture.getBoundingClientRect();
        const [height, width] = i.payload.image_size;
        return [r.left + (x + 0.5) * r.width / width, r.top + (y + 0.5) * r.height / height];
    }""", [node_id, x, y])
    (page.mouse.click if click else page.mouse.move)(*point)
    page.wait_for_function("(text) => document.querySelector('[data-testid=sae-inspect-where]').textContent"
                           ".startsWith(text)", arg=f"pixel ({x}, {y})", timeout=5_000)
    return [tuple(row) for row in page.evaluate("""() => Array.from(document.querySelectorAll('.sae-inspect-row'))
        .map((r) => [Number(r.dataset.feature), Number(r.dataset.activation), Number(r.dataset.fraction)])""")]


def inspector_problems(page, node_id) -> list[str]:
    return page.evaluate(INSPECTOR_CHECK, node_id)


# ------------------------------------------------------------------ the screenshots
@dataclass
class Shots:
    paths: dict[str, Path] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)


def take(page, server: ComfyServer, out_dir: Path, canvas_workflows=CANVAS_SHOTS) -> Shots:
    """Every screenshot, with the problems the DOM checks found in each (empty lists when all is well)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = Shots()

    def shot(name: str, problems: list[str], sidebar: bool = False) -> None:
        """The whole window, or the sidebar with the icon bar left of it (the canvas beside it says nothing)."""
        path = out_dir / f"{name}.png"
        clip = None
        if sidebar:
            right = page.evaluate("() => document.querySelector('.sae-lab-panel').getBoundingClientRect().right")
            size = page.viewport_size
            clip = {"x": 0, "y": 0, "width": min(int(right) + 4, size["width"]), "height": size["height"]}
        page.screenshot(path=str(path), clip=clip)
        shots.paths[name], shots.problems[name] = path, problems

    close_sidebar(page)
    for stem in canvas_workflows:
        load_workflow(page, WORKFLOWS / f"{stem}.json")
        dismiss_toasts(page)
        shot(f"workflow_{stem}", [])
    open_sidebar(page)
    show_atlas(page, PAPER_ATLAS)
    shot("atlas_grid", sidebar_problems(page), sidebar=True)
    show_atlas(page, PAPER_ATLAS, "stripes")
    page.click(f"[data-testid=sae-feature-{TIGER}]")
    page.wait_for_selector("[data-testid=sae-label-info]")
    settle_images(page)
    shot("atlas_detail_labels", sidebar_problems(page), sidebar=True)
    page.click("text=← All features")
    show_atlas(page, TINY_ATLAS)
    shot("atlas_grid_runs", sidebar_problems(page), sidebar=True)
    page.click(f"[data-testid=sae-feature-{STRIPES}]")
    page.wait_for_selector("canvas.sae-heat")
    page.wait_for_timeout(500)
    shot("atlas_detail", sidebar_problems(page), sidebar=True)
    close_sidebar(page)

    run_in_page(page, server, EXPLORE, edit=steps(2))
    top = nodes_of(page, "SAETopFeatures")
    page.wait_for_function(f"() => app.graph.getNodeById({top[0]!r})?.widgets?.some((w) => w.name === "
                           "'sae_lab_text')", timeout=30_000)
    frame_nodes(page, same_row(page, top[0], ("SAETopFeatures", "PreviewImage", "SAEFeatureHeatmap", "SaveImage")))
    dismiss_toasts(page)
    shot("top_features", [p for node in top for p in node_text_problems(page, node)])
    shots.problems["top_features"] += chart_node_problems(page, shots.paths["top_features"])

    inspect = nodes_of(page, "SAEInspect")[0]
    show_inspector(page, inspect)
    height, width = page.evaluate("(id) => app.graph.getNodeById(id).saeInspector.payload.image_size", inspect)
    listed = hover_inspector(page, inspect, width // 2, height // 3, click=True)
    # the two most localized features pinned (the second's heatmap over the picture, both under it)
    for feature, _, _ in sorted(listed, key=lambda row: row[2])[:2][::-1]:
        page.click(f"[data-testid=sae-inspect-pin-{feature}]")
    frame_nodes(page, [inspect])  # taller now, with the pins
    page.wait_for_function(INSPECTOR_SHOWN, arg=inspect, timeout=10_000)
    dismiss_toasts(page)
    shot("inspect", inspector_problems(page, inspect))
    return shots


# screenshot -> the README's picture of it in docs/images/
README_IMAGES = {"top_features": "browser_top_features.png", "atlas_detail": "browser_atlas_detail.png",
                 "atlas_detail_labels": "browser_atlas_labels.png",
                 "workflow_sdxl_turbo_paint_feature": "browser_paint_workflow.png", "inspect": "browser_inspect.png"}
README_MAX_BYTES = 300_000


def save_small(source: Path, target: Path, max_bytes: int = README_MAX_BYTES) -> Path:
    """A screenshot as a 256-colour PNG (screens have few colours), halved until it is under ``max_bytes``."""
    picture = Image.open(source).convert("RGB")
    while True:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.png")
        picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(tmp, optimize=True)
        if tmp.stat().st_size <= max_bytes or picture.width < 400:
            tmp.replace(target)
            return target
        picture = picture.resize((picture.width * 3 // 4, picture.height * 3 // 4), Image.LANCZOS)


def main(argv: list[str]) -> int:
    """screenshots.py OUT_DIR: every screenshot into OUT_DIR; with --readme, also the README's pictures there."""
    import tempfile

    from playwright.sync_api import sync_playwright

    readme = "--readme" in argv
    argv = [a for a in argv if a != "--readme"]
    out = Path(argv[0]) if argv else Path("screenshots")
    with tempfile.TemporaryDirectory(prefix="sae_lab_shots_") as base, scene_server(Path(base)) as server, \
            sync_playwright() as p:
        browser, page = open_page(p, server.url)
        shots = take(page, server, Path(base) / "shots" if readme else out)
        browser.close()
        for name, path in shots.paths.items():
            print(f"{path}  {'; '.join(shots.problems[name]) or 'ok'}")
            if readme and name in README_IMAGES:
                print("  ->", save_small(path, out / README_IMAGES[name]))
    print("pack problems:", page.watch.problems or "none")
    return 1 if page.watch.problems or any(shots.problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
