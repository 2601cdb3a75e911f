// SAE Lab node decorations: show the text our nodes return (tables, what was loaded, summaries) on the node, sized so
// that every row shows; turn SAE Top Features' feature ids into links that open them in the SAE Atlas sidebar; and
// let long text values (hub subfolders) be read whole, from the node's width or the widget's tooltip.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { SHARED } from "./sae_lab_shared.js";

const TEXT_WIDGET = "sae_lab_text";
const LINKS_WIDGET = "sae_lab_links";
const FONT_PX = 11;
const LINE_PX = 15;
const PAD_PX = 4;
const MARGIN_PX = 4; // around a DOM widget: the frontend gives the element its height less twice this
const MAX_TEXT_ROWS = 40; // a longer text scrolls inside its box
const MAX_NODE_WIDTH = 720;
const TEXT_FONT = `${FONT_PX}px monospace`;

const measure = document.createElement("canvas").getContext("2d");
function textWidth(text, font) {
  measure.font = font;
  return measure.measureText(text).width;
}

// The height a box needs for its content, whatever height the frontend gave it.
function contentHeight(box) {
  const last = box.lastElementChild;
  if (!last) return box.textContent ? LINE_PX + 2 * PAD_PX : 0;
  return last.offsetTop + last.offsetHeight + PAD_PX;
}

function ensureDomWidget(node, name, make, height) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    // min = max = what the content needs: no row cut off, no blank band under it
    const needed = () => height() + 2 * MARGIN_PX;
    widget = node.addDOMWidget(name, "sae_lab", make(), { serialize: false, hideOnZoom: false, margin: MARGIN_PX,
                                                          getMinHeight: needed, getMaxHeight: needed });
  }
  return widget.element;
}

function textRows(pre) {
  return pre.textContent.split("\n");
}

function showText(node, text) {
  const pre = ensureDomWidget(node, TEXT_WIDGET, () => {
    const el = document.createElement("pre");
    el.dataset.testid = "sae-node-text";
    Object.assign(el.style, { margin: "0", padding: `${PAD_PX}px 6px`, font: TEXT_FONT, lineHeight: `${LINE_PX}px`,
      overflow: "auto", whiteSpace: "pre", background: "var(--comfy-input-bg)", boxSizing: "border-box",
      color: "var(--input-text)", borderRadius: "4px", userSelect: "text" });
    return el;
  }, () => Math.min(textRows(pre).length, MAX_TEXT_ROWS) * LINE_PX + 2 * PAD_PX + 2);
  pre.textContent = text;
  const widest = Math.max(...textRows(pre).map((row) => textWidth(row, TEXT_FONT)));
  return widest + 12 + 24; // the text's padding and the node's margins
}

function showFeatureLinks(node, atlas, ids) {
  const box = ensureDomWidget(node, LINKS_WIDGET, () => {
    const el = document.createElement("div");
    el.dataset.testid = "sae-feature-links";
    Object.assign(el.style, { position: "relative", display: "flex", flexWrap: "wrap", alignContent: "flex-start",
      columnGap: "6px", rowGap: "0", fontSize: `${FONT_PX}px`, lineHeight: `${LINE_PX}px`,
      padding: `${PAD_PX}px 4px`, boxSizing: "border-box", overflow: "hidden" });
    return el;
  }, () => Math.max(contentHeight(box), LINE_PX + 2 * PAD_PX));
  box.replaceChildren();
  const label = document.createElement("span");
  if (!atlas) {
    label.textContent = "No atlas for this SAE yet: build one with SAE Build Atlas to browse these features.";
    box.append(label);
    return;
  }
  label.textContent = "Open in SAE Atlas:";
  box.append(label);
  for (const id of ids) {
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = `#${id}`;
    link.dataset.feature = String(id);
    link.style.color = "var(--p-primary-color, #6ea8fe)";
    link.addEventListener("click", (event) => {
      event.preventDefault();
      window.SAELab?.openFeature(atlas, id);
    });
    box.append(link);
  }
}

// After new content: as wide as the table (within limits), then exactly as high as the widgets need.
function fitNode(node, width) {
  const w = Math.min(Math.max(node.size[0], width ?? 0), MAX_NODE_WIDTH);
  node.setSize([w, node.size[1]]);
  requestAnimationFrame(() => { // the links wrap at the new width: measure them once laid out
    node.setSize([node.size[0], node.computeSize([node.size[0], node.size[1]])[1]]);
    node.setDirtyCanvas?.(true, true);
  });
}

// A text widget shows its value cut at the node's edge: widen the node for it (within limits) and put the whole
// value in the widget's tooltip.
function fitTextWidgets(node) {
  let needed = 0;
  for (const widget of node.widgets ?? []) {
    if (widget.type !== "text" && widget.type !== "string" && widget.type !== "combo") continue;
    const value = String(widget.value ?? "");
    if (!value) continue;
    const label = widget.label ?? widget.name;
    needed = Math.max(needed, 1.15 * textWidth(`${label}    ${value}`, "12px Arial") + 70);
    const base = widget.sae_lab_tooltip ?? (widget.sae_lab_tooltip = widget.tooltip ?? widget.options?.tooltip ?? "");
    widget.tooltip = `${label}: ${value}${base ? `\n\n${base}` : ""}`;
  }
  if (needed > node.size[0]) node.setSize([Math.min(needed, MAX_NODE_WIDTH, roomToTheRight(node)), node.size[1]]);
}

// How wide a node may grow without covering a neighbour on its right (the user's layout stays readable).
function roomToTheRight(node) {
  const [x, y] = node.pos;
  const bottom = y + node.size[1];
  let room = MAX_NODE_WIDTH;
  for (const other of app.graph?._nodes ?? []) {
    if (other === node || other.pos[0] < x + node.size[0] - 1) continue;
    const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    if (other.pos[1] - title < bottom && other.pos[1] + other.size[1] > y - title) {
      room = Math.min(room, other.pos[0] - x - 10);
    }
  }
  return Math.max(room, node.size[0]);
}

function isOurs(nodeData) {
  return nodeData?.python_module?.includes("sae-lab") === true || String(nodeData?.name).startsWith("SAE");
}

function fedByUs(node) {
  return (node.inputs ?? []).some((input) => {
    const link = input.link != null ? app.graph.links?.[input.link] ?? app.graph.links?.get?.(input.link) : null;
    const origin = link ? app.graph.getNodeById(link.origin_id) : null;
    return origin && isOurs({ name: origin.comfyClass ?? origin.type, python_module: origin.constructor?.nodeData?.python_module });
  });
}

// An image node showing one of our charts or grids: as high as the picture at the node's width (the frontend fits
// the picture into the node, leaving the rest of a taller node blank).
function fitImageNode(node, image) {
  const params = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "",
                                       type: image.type ?? "output" });
  const img = new Image();
  img.onload = () => {
    const top = node.computeSize([node.size[0], 0])[1];
    const caption = 24; // the frontend writes the picture's size under it
    node.setSize([node.size[0], Math.round(top + (node.size[0] - 20) * (img.naturalHeight / img.naturalWidth) + caption)]);
    node.setDirtyCanvas?.(true, true);
  };
  img.src = api.apiURL(`/view?${params}`);
}

app.registerExtension({
  name: "sae_lab.node_text",
  setup() {
    api.addEventListener("executed", ({ detail }) => {
      const node = app.graph?.getNodeById(detail?.display_node ?? detail?.node);
      const images = detail?.output?.images;
      if (node && Array.isArray(images) && images.length === 1 && fedByUs(node)) fitImageNode(node, images[0]);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isOurs(nodeData)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const lines = message?.[SHARED.ui.text];
      const text = Array.isArray(lines) ? lines.join("\n") : null;
      const width = text ? showText(this, text) : undefined;
      if (Array.isArray(message?.[SHARED.ui.features])) {
        showFeatureLinks(this, message[SHARED.ui.atlas]?.[0] || "", message[SHARED.ui.features]);
      }
      if (text || message?.[SHARED.ui.features]) fitNode(this, width);
      this.setDirtyCanvas?.(true, true);
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      fitTextWidgets(this);
      return result;
    };
    const onWidgetChanged = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function () {
      const result = onWidgetChanged?.apply(this, arguments);
      fitTextWidgets(this);
      return result;
    };
  },
});
