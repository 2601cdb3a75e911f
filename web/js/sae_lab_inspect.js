// SAE Inspect's widget: the generated image on the node; hover a pixel to list the features that fire there (id,
// activation, atlas label and preview, localization score), click one for its heatmap over the image, pin several
// to compare, scrub the steps, send a feature to the selected SAE Feature Steer node, open it in the SAE Atlas, or
// fill the node's mask widgets so the next run outputs its footprint as a MASK. The recording arrives once per run,
// as sparse codes (sae_core/observe/inspect.py), from the inspect route by the id the node issued.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { h } from "./sae_lab_atlas.js";
import { SHARED } from "./sae_lab_shared.js";

const WIDGET = "sae_lab_inspect";
const [MASK_FEATURES, MASK_STEP] = SHARED.inspectMaskWidgets;
const { bins: BINS, alpha: ALPHA, colors: BIN_COLORS } = SHARED.heatmap;
const MIN_WIDTH = 420;

// ------------------------------------------------------------------ the payload
function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

function typed(base64, Type) {
  const bytes = bytesOf(base64);
  return new Type(bytes.buffer, 0, bytes.byteLength / Type.BYTES_PER_ELEMENT); // little-endian, as sent
}

function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

// exported for bench/inspect_payload.py --browser, which times it in Chromium
export function decodeFrame(payload, frame) {
  const Ids = payload.id_bytes === 2 ? Uint16Array : Uint32Array;
  const values = Float32Array.from(typed(frame.values, Uint16Array), halfToFloat);
  const firedIds = typed(frame.fired_ids, Ids);
  const counts = typed(frame.fired_counts, Uint32Array);
  const fired = new Map();
  firedIds.forEach((id, i) => fired.set(id, counts[i]));
  return { ids: typed(frame.ids, Ids), values, fired };
}

const frameKey = (pass, image, step) => `${pass}|${image}|${step}`;

// ------------------------------------------------------------------ drawing
// One colour per bin as sae_core.render paints heatmaps; the lowest bin stays transparent.
function paintMap(canvas, map, gw, gh) {
  canvas.width = gw;
  canvas.height = gh;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(gw, gh);
  let lo = Infinity, hi = -Infinity;
  for (const v of map) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  map.forEach((value, p) => {
    const v = hi > lo ? (value - lo) / (hi - lo) : 0;
    const bin = Math.min(Math.floor(v * BINS), BINS - 1);
    if (bin === 0) return;
    pixels.data.set([...BIN_COLORS[bin], Math.round(255 * ALPHA)], 4 * p);
  });
  ctx.putImageData(pixels, 0, 0);
}

class Inspector {
  constructor(node) {
    this.node = node;
    this.payload = null;
    this.frames = new Map();
    this.labels = {};
    this.pass = "positive";
    this.image = 0;
    this.stepIndex = 0;
    this.shown = null; // the feature whose heatmap overlays the image
    this.pinned = [];
    this.position = null; // the grid position listed
    this.locked = false; // a click on the image keeps its position listed while the mouse moves away
    this.steerNodes = [];
    this.build();
  }

  build() {
    this.step = h("input", { type: "range", min: "0", max: "0", value: "0", testid: "sae-inspect-step",
                             oninput: () => { this.stepIndex = Number(this.step.value); this.render(); } });
    this.stepLabel = h("span", { testid: "sae-inspect-step-label" });
    this.passSelect = h("select", { testid: "sae-inspect-pass",
                                    onchange: () => { this.pass = this.passSelect.value; this.render(); } });
    this.imageSelect = h("select", { testid: "sae-inspect-image",
                                     onchange: () => { this.image = Number(this.imageSelect.value); this.render(); } });
    this.picture = h("img", { class: "sae-inspect-picture", testid: "sae-inspect-picture", alt: "generated image",
                              draggable: "false" });
    this.overlay = h("canvas", { class: "sae-inspect-overlay", testid: "sae-inspect-overlay" });
    // pointer events: their coordinates are fractional (a mouse event's are whole pixels, a pixel off on a
    // picture drawn smaller than its size); a click keeps the point the pointer last moved to, when it is there
    const near = (a, b) => a && Math.abs(a.clientX - b.clientX) < 1 && Math.abs(a.clientY - b.clientY) < 1;
    this.stage = h("div", { class: "sae-inspect-stage",
                            onpointermove: (e) => { this.pointer = e; this.hover(e, false); },
                            onclick: (e) => this.hover(near(this.pointer, e) ? this.pointer : e, true) },
                   this.picture, this.overlay);
    this.where = h("div", { class: "sae-inspect-where", testid: "sae-inspect-where" },
                   "Hover the image to see the features that fire there; click it to keep that pixel.");
    this.list = h("div", { class: "sae-inspect-list", testid: "sae-inspect-list" });
    this.pins = h("div", { class: "sae-inspect-pins", testid: "sae-inspect-pinned" });
    this.message = h("div", { class: "sae-inspect-message", testid: "sae-inspect-message" });
    // the body's height is its content's (the widget's element is stretched to the height the node gives it)
    this.body = h("div", { class: "sae-inspect-body" },
      h("div", { class: "sae-inspect-controls" }, "step ", this.step, this.stepLabel, " pass ", this.passSelect,
        " image ", this.imageSelect),
      this.stage, this.where, this.list, this.pins, this.message);
    this.root = h("div", { class: "sae-inspect", testid: "sae-inspect" }, this.body);
    // a click in this widget may select this node (and deselect the rest): remember the Steer nodes selected
    // before it, kept until others are selected
    this.root.addEventListener("pointerdown", () => {
      const selected = window.SAELab?.selectedSteerNodes?.() ?? [];
      if (selected.length) this.steerNodes = selected;
    }, true);
  }

  async load(entry) {
    const response = await api.fetchApi(`${SHARED.inspectRoutes.recording}?${new URLSearchParams({ id: entry.id })}`);
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.error || response.statusText);
    this.payload = payload;
    this.labels = payload.labels ?? {};
    this.frames = new Map(payload.frames.map((f) => [frameKey(f.pass, f.image, f.step), decodeFrame(payload, f)]));
    this.images = entry.images;
    this.pass = payload.passes.includes(this.pass) ? this.pass : payload.passes[0];
    this.image = Math.min(this.image, payload.batch - 1);
    this.stepIndex = Math.min(this.stepIndex, payload.steps.length - 1);
    this.pinned = [];
    this.shown = null;
    this.position = null;
    this.locked = false;
    this.step.max = String(payload.steps.length - 1);
    this.step.value = String(this.stepIndex);
    this.passSelect.replaceChildren(...payload.passes.map((p) => h("option", { value: p }, p)));
    this.passSelect.value = this.pass;
    this.imageSelect.replaceChildren(...Array.from({ length: payload.batch }, (_, i) => h("option", { value: i }, i)));
    this.imageSelect.value = String(this.image);
    this.list.replaceChildren();
    this.where.textContent = "Hover the image to see the features that fire there; click it to keep that pixel.";
    this.render();
  }

  get frame() {
    const p = this.payload;
    return p ? this.frames.get(frameKey(this.pass, this.image, p.steps[this.stepIndex])) : null;
  }

  featureMap(feature, frame = this.frame) {
    const [gh, gw] = this.payload.grid;
    const k = this.payload.k;
    const map = new Float32Array(gh * gw);
    for (let p = 0; p < gh * gw; p++) {
      for (let j = 0; j < k; j++) {
        if (frame.ids[p * k + j] === feature) map[p] = Math.max(frame.values[p * k + j], 0);
      }
    }
    return map;
  }

  // image pixel under the mouse -> grid position, as sae_core.observe.inspect.Inspection.position maps it
  hover(event, click) {
    if (!this.payload) return;
    if (this.locked && !click) return;
    const r = this.picture.getBoundingClientRect();
    const [height, width] = this.payload.image_size;
    const x = Math.floor(((event.clientX - r.left) / r.width) * width);
    const y = Math.floor(((event.clientY - r.top) / r.height) * height);
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    const [gh, gw] = this.payload.grid;
    this.position = Math.floor((y * gh) / height) * gw + Math.floor((x * gw) / width);
    this.pixel = [x, y];
    if (click) this.locked = !this.locked || this.lockedAt !== this.position;
    this.lockedAt = this.locked ? this.position : null;
    this.renderList();
  }

  label(id) {
    return this.labels[String(id)] ?? "";
  }

  previewUrl(id) {
    return api.apiURL(`${SHARED.routes.preview}?${new URLSearchParams({ atlas: this.payload.atlas, id,
                                                                         ...SHARED.previewMissing })}`);
  }

  render() {
    const p = this.payload;
    if (!p) return;
    const step = p.steps[this.stepIndex];
    this.stepLabel.textContent = ` ${step} (${this.stepIndex + 1} of ${p.steps.length})`;
    const image = this.images?.[this.image] ?? this.images?.[0];
    if (image) {
      const url = api.apiURL(`/view?${new URLSearchParams({ filename: image.filename, subfolder: image.subfolder ?? "",
                                                            type: image.type ?? "temp" })}`);
      if (this.picture.dataset.src !== url) { this.picture.src = url; this.picture.dataset.src = url; }
    }
    this.drawOverlay();
    this.renderList();
    this.renderPins();
  }

  drawOverlay() {
    const [gh, gw] = this.payload.grid;
    this.overlay.dataset.feature = this.shown ?? "";
    if (this.shown === null) {
      this.overlay.width = gw;
      this.overlay.height = gh;
      return;
    }
    paintMap(this.overlay, this.featureMap(this.shown), gw, gh);
  }

  fraction(id) {
    const [gh, gw] = this.payload.grid;
    return (this.frame.fired.get(id) ?? 0) / (gh * gw);
  }

  renderList() {
    const p = this.payload;
    if (!p || this.position === null) return;
    const frame = this.frame;
    const [gh, gw] = p.grid;
    const row = Math.floor(this.position / gw);
    const col = this.position % gw;
    this.where.textContent = `pixel (${this.pixel[0]}, ${this.pixel[1]}) · cell (${row}, ${col}) of ${gh}×${gw} · ` +
      `step ${p.steps[this.stepIndex]} · ${this.pass}${this.locked ? " · kept (click the image to release)" : ""}`;
    const rows = [];
    for (let j = 0; j < p.k; j++) {
      const value = frame.values[this.position * p.k + j];
      if (value > 0) rows.push([frame.ids[this.position * p.k + j], value]);
    }
    rows.sort((a, b) => b[1] - a[1]);
    this.list.replaceChildren(...(rows.length ? rows.map(([id, value]) => this.featureRow(id, value))
      : [h("div", { class: "sae-inspect-empty" }, "No feature fires here at this step.")]));
  }

  featureRow(id, value) {
    const fraction = this.fraction(id);
    const label = this.label(id);
    return h("div", { class: `sae-inspect-row${this.shown === id ? " sae-inspect-shown" : ""}`,
                      testid: `sae-inspect-feature-${id}`, "data-feature": id, "data-activation": value,
                      "data-fraction": fraction, title: "Click to overlay its heatmap",
                      onclick: () => this.show(id) },
      this.payload.previews ? h("img", { class: "sae-inspect-preview", src: this.previewUrl(id), alt: "",
                                         loading: "lazy", onerror: (e) => e.target.remove() }) : null,
      h("span", { class: "sae-inspect-id" }, `#${id}`),
      h("span", { class: "sae-inspect-act" }, value.toFixed(3)),
      h("span", { class: "sae-inspect-frac", title: "fraction of the image where it fires at this step" },
        `${(100 * fraction).toFixed(1)}%`),
      h("span", { class: "sae-inspect-label" }, label || "\u00a0"),
      this.button("Pin", `sae-inspect-pin-${id}`, () => this.pin(id)),
      this.button("Steer", `sae-inspect-steer-${id}`, () => this.steer(id)),
      this.button("Mask", `sae-inspect-mask-${id}`, () => this.mask(id)),
      this.payload.atlas ? this.button("Atlas", `sae-inspect-atlas-${id}`,
                                       () => window.SAELab?.openFeature(this.payload.atlas, id)) : null);
  }

  button(text, testid, action) {
    return h("button", { class: "sae-inspect-button", testid, onclick: (e) => { e.stopPropagation(); action(); } },
             text);
  }

  show(id) {
    this.shown = this.shown === id ? null : id;
    this.drawOverlay();
    this.renderList();
    this.renderPins();
  }

  pin(id) {
    if (!this.pinned.includes(id)) this.pinned.push(id);
    this.shown = id;
    this.render();
  }

  renderPins() {
    const [gh, gw] = this.payload.grid;
    this.pins.replaceChildren(...this.pinned.map((id) => {
      const canvas = h("canvas", { class: "sae-inspect-pin-map" });
      paintMap(canvas, this.featureMap(id), gw, gh);
      const label = this.label(id);
      return h("figure", { class: `sae-inspect-pin${this.shown === id ? " sae-inspect-shown" : ""}`,
                           testid: `sae-inspect-pinned-${id}`, onclick: () => this.show(id) },
        h("div", { class: "sae-inspect-pin-stage" },
          this.picture.src ? h("img", { src: this.picture.src, alt: "" }) : null, canvas),
        h("figcaption", {}, `#${id} ${(100 * this.fraction(id)).toFixed(1)}%${label ? ` ${label}` : ""}`,
          this.button("×", `sae-inspect-unpin-${id}`, () => {
            this.pinned = this.pinned.filter((f) => f !== id);
            if (this.shown === id) this.shown = null;
            this.render();
          })));
    }));
  }

  say(text) {
    this.message.textContent = text;
  }

  steer(id) {
    const nodes = this.steerNodes.filter((n) => app.graph.getNodeById(n.id) === n); // not removed since
    const count = window.SAELab?.sendToSteer?.(id, nodes) ?? 0;
    this.say(count ? `Feature ${id} set on ${count} SAE Feature Steer node${count > 1 ? "s" : ""}.`
      : `Select an "SAE Feature Steer" node on the canvas first, then click Steer again.`);
  }

  mask(id) {
    const features = this.pinned.length ? [...new Set([...this.pinned, id])] : [id];
    const step = this.payload.steps[this.stepIndex];
    for (const [name, value] of [[MASK_FEATURES, features.join(", ")], [MASK_STEP, step]]) {
      const widget = this.node.widgets?.find((w) => w.name === name);
      if (widget) { widget.value = value; widget.callback?.(value); }
    }
    app.graph.setDirtyCanvas(true, true);
    this.say(`mask_features = ${features.join(", ")} at step ${step}: queue again and the mask output is their ` +
             "footprint.");
  }

  labelSaved({ atlas, id, label }) {
    if (!this.payload || atlas !== this.payload.atlas) return;
    if (label) this.labels[String(id)] = label;
    else delete this.labels[String(id)];
    this.renderList();
    this.renderPins();
  }
}

const STYLE = `
.sae-inspect { position: relative; font-size: 11px; color: var(--fg-color); box-sizing: border-box; min-width: 0;
  overflow: hidden; }
.sae-inspect-body { display: flex; flex-direction: column; gap: 4px; }
.sae-inspect * { box-sizing: border-box; }
.sae-inspect-controls { display: flex; align-items: center; gap: 4px; flex-wrap: wrap; }
.sae-inspect-controls input[type=range] { flex: 1 1 80px; min-width: 60px; }
.sae-inspect select { background: var(--comfy-input-bg); color: var(--input-text); border: 1px solid var(--border-color);
  border-radius: 4px; font-size: 11px; }
.sae-inspect-stage { position: relative; width: 100%; cursor: crosshair; line-height: 0; }
.sae-inspect-picture { width: 100%; height: auto; display: block; user-select: none; }
.sae-inspect-overlay { position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated;
  pointer-events: none; }
.sae-inspect-where, .sae-inspect-message { opacity: 0.85; overflow-wrap: anywhere; }
/* a fixed height, so that hovering does not resize the node */
.sae-inspect-list { display: flex; flex-direction: column; gap: 2px; height: 180px; overflow: auto; }
.sae-inspect-row { display: flex; align-items: center; gap: 6px; padding: 1px 4px; border-radius: 3px; cursor: pointer;
  background: var(--comfy-input-bg); min-width: 0; }
.sae-inspect-row.sae-inspect-shown { outline: 1px solid #3a7bd5; }
.sae-inspect-id { font-weight: bold; min-width: 42px; } .sae-inspect-act, .sae-inspect-frac { min-width: 40px;
  font-family: monospace; text-align: right; }
.sae-inspect-label { flex: 1 1 auto; min-width: 0; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.sae-inspect-preview { width: 20px; height: 20px; object-fit: cover; border-radius: 2px; }
.sae-inspect-button { background: var(--comfy-menu-bg); color: var(--fg-color); border: 1px solid var(--border-color);
  border-radius: 3px; padding: 0 4px; font-size: 10px; cursor: pointer; }
.sae-inspect-pins { display: flex; flex-wrap: wrap; gap: 4px; }
.sae-inspect-pin { margin: 0; width: 96px; cursor: pointer; }
.sae-inspect-pin.sae-inspect-shown { outline: 1px solid #3a7bd5; }
.sae-inspect-pin-stage { position: relative; width: 96px; line-height: 0; }
.sae-inspect-pin-stage img { width: 100%; height: auto; display: block; }
.sae-inspect-pin-stage canvas { position: absolute; inset: 0; width: 100%; height: 100%; image-rendering: pixelated; }
.sae-inspect-pin figcaption { font-size: 10px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
`;

function inspectorOf(node) {
  if (!node.saeInspector) {
    const inspector = new Inspector(node);
    node.saeInspector = inspector;
    // as tall as its content: the picture at the node's width, the list and the pins under it. A widget whose
    // node is off the screen is hidden and measures 0: then the last height measured holds.
    let height = 132;
    const needed = () => {
      const measured = inspector.body.offsetHeight;
      if (measured > 0) height = measured + 12;
      return height;
    };
    node.addDOMWidget(WIDGET, "sae_lab", inspector.root, { serialize: false, hideOnZoom: false, margin: 4,
                                                           getMinHeight: needed, getMaxHeight: needed });
    // the picture loading, pins, a wider node, or the node coming into view: fit the node to its content again
    new ResizeObserver(() => { if (inspector.body.offsetHeight > 0) fit(node); }).observe(inspector.body);
  }
  return node.saeInspector;
}

function fit(node) {
  requestAnimationFrame(() => {
    const size = [Math.max(node.size[0], MIN_WIDTH), node.computeSize([node.size[0], node.size[1]])[1]];
    if (size[0] === node.size[0] && size[1] === node.size[1]) return;
    node.setSize(size);
    node.setDirtyCanvas?.(true, true);
  });
}

app.registerExtension({
  name: "sae_lab.inspect",
  setup() {
    document.head.append(h("style", {}, STYLE));
    window.addEventListener(SHARED.labelEvent, (event) => {
      for (const node of app.graph?._nodes ?? []) node.saeInspector?.labelSaved(event.detail);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== SHARED.inspectNode) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const entry = message?.[SHARED.ui.inspect]?.[0];
      if (!entry) return;
      const inspector = inspectorOf(this);
      inspector.load(entry).then(() => fit(this)).catch((err) => inspector.say(err.message));
    };
  },
});
