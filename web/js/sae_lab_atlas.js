// SAE Lab feature browser: a sidebar panel over the feature atlases saved beside the SAEs in models/sae.
// Browse features as a grid of their published previews or top examples, search labels, categories and ids, sort,
// open a feature to see its preview, labels and top examples with heatmaps, edit its label (yours wins over an
// imported one), export the labels, and send the feature to the selected "SAE Feature Steer" node.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { SHARED } from "./sae_lab_shared.js";

const TAB_ID = SHARED.sidebarTab;
const ROUTES = SHARED.routes;
const STEER_NODE = SHARED.steerNode;
const PAGE = 120;
const state = { atlas: "", query: "", sort: "firing_rate", detail: null, root: null, message: "", shown: 0, seq: 0 };

// An element with attributes ("on..." listeners, "testid" -> data-testid) and children; the inspector uses it too.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2).toLowerCase(), value);
    else if (key === "testid") node.dataset.testid = value;
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  fill(node, children);
  return node;
}

// Appends children, skipping null/undefined (DOM's append would show them as the text "null").
function fill(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

async function getJSON(path, params = {}) {
  const response = await api.fetchApi(`${ROUTES[path]}?${new URLSearchParams(params)}`);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function thumbnailUrl(generation) {
  return api.apiURL(`${ROUTES.thumbnail}?${new URLSearchParams({ atlas: state.atlas, gen: generation })}`);
}

function previewUrl(id) {
  // a picture that is not there answers an empty 204, not a 404 the browser would log as an error
  return api.apiURL(`${ROUTES.preview}?${new URLSearchParams({ atlas: state.atlas, id, ...SHARED.previewMissing })}`);
}

function exportUrl(format) {
  return api.apiURL(`${ROUTES.labels}?${new URLSearchParams({ atlas: state.atlas, format })}`);
}

// A feature's published picture (downloaded by the server on first view); a placeholder saying why when there is
// none: offline and not downloaded yet, or not published.
function previewImage(id, preview, large = false) {
  const img = h("img", { src: previewUrl(id), loading: "lazy", alt: `preview of feature ${id}`,
                         class: large ? "sae-preview sae-preview-large" : "sae-preview", testid: `sae-preview-${id}` });
  img.addEventListener("error", () => {
    img.replaceWith(h("div", { class: large ? "sae-noimg sae-placeholder sae-preview-large" : "sae-noimg sae-placeholder",
                               testid: `sae-placeholder-${id}` },
      preview.online ? "No preview published" : "Offline: preview not downloaded yet"));
  }, { once: true });
  return img;
}

// The colouring of sae_core.render.overlay_heatmap, from the shared file: one colour per bin, lowest bin transparent.
const { bins: BINS, alpha: ALPHA, colors: BIN_COLORS } = SHARED.heatmap;

function heatmapCanvas(example, size = 160) {
  const [gh, gw] = example.grid;
  const scale = size / Math.max(gh, gw);
  const canvas = h("canvas", { width: Math.round(gw * scale), height: Math.round(gh * scale), class: "sae-heat" });
  const ctx = canvas.getContext("2d");
  const values = example.map.flat();
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const draw = () => {
    for (let r = 0; r < gh; r++) {
      for (let c = 0; c < gw; c++) {
        const v = hi > lo ? (example.map[r][c] - lo) / (hi - lo) : 0;
        const bin = Math.min(Math.floor(v * BINS), BINS - 1);
        if (bin === 0) continue;
        const [R, G, B] = BIN_COLORS[bin];
        ctx.fillStyle = `rgba(${R},${G},${B},${ALPHA})`;
        ctx.fillRect(c * scale, r * scale, Math.ceil(scale), Math.ceil(scale));
      }
    }
  };
  if (example.has_thumbnail) {
    const img = new Image();
    img.onload = () => { ctx.drawImage(img, 0, 0, canvas.width, canvas.height); draw(); };
    img.onerror = draw;
    img.src = thumbnailUrl(example.generation);
  } else {
    ctx.fillStyle = "#444";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    draw();
  }
  return canvas;
}

// A text atlas's example: the prompt's tokens, each tinted by the feature's activation on it (the heatmap's bins),
// the token it fires on most marked.
function tokenStrip(example) {
  const values = example.map.flat();
  const hi = Math.max(...values, 0);
  const peak = values.indexOf(hi);
  return h("div", { class: "sae-tokens sae-wrap" }, example.tokens.map((text, i) => {
    const bin = hi > 0 ? Math.min(Math.floor((Math.max(values[i], 0) / hi) * BINS), BINS - 1) : 0;
    const [R, G, B] = BIN_COLORS[bin];
    return h("span", { class: i === peak && hi > 0 ? "sae-token sae-token-peak" : "sae-token",
                       testid: i === peak && hi > 0 ? "sae-token-peak" : undefined,
                       title: values[i].toFixed(3),
                       style: bin ? `background: rgba(${R},${G},${B},${ALPHA})` : undefined }, text);
  }));
}

function selectedSteerNodes() {
  return Object.values(app.canvas?.selected_nodes ?? {}).filter(
    (node) => node.comfyClass === STEER_NODE || node.type === STEER_NODE);
}

// Puts a feature into SAE Feature Steer nodes (the selected ones unless given); how many got it. The inspector
// calls it too (window.SAELab.sendToSteer).
function sendToSteer(id, nodes = selectedSteerNodes()) {
  for (const node of nodes) {
    const widget = node.widgets?.find((w) => w.name === "features");
    if (widget) {
      widget.value = String(id);
      widget.callback?.(widget.value);
    }
  }
  if (nodes.length) app.graph.setDirtyCanvas(true, true);
  return nodes.length;
}

function useFeature(id) {
  const nodes = selectedSteerNodes();
  if (!sendToSteer(id, nodes)) {
    setMessage(`Select an "SAE Feature Steer" node on the canvas first, then click Use again.`);
    return;
  }
  setMessage(`Feature ${id} set on ${nodes.length} SAE Feature Steer node${nodes.length > 1 ? "s" : ""}.`);
}

// Replaces an element's children (null/undefined skipped).
function show(parent, ...children) {
  parent.replaceChildren();
  fill(parent, children);
}

function setMessage(text) {
  state.message = text;
  const box = state.root?.querySelector(".sae-message");
  if (box) box.textContent = text;
}

async function saveLabel(id, text) {
  const response = await api.fetchApi(ROUTES.label, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ atlas: state.atlas, id, label: text }),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  window.dispatchEvent(new CustomEvent(SHARED.labelEvent, { detail: { atlas: state.atlas, id, label: data.label } }));
  setMessage(data.label ? `Saved label "${data.label}" for feature ${id}.`
    : `Cleared your label of feature ${id} (an imported label, if any, shows again).`);
}

function labelLine(info) {
  if (!info) return null;
  const parts = [info.category, info.confidence && `${info.confidence} confidence`,
                 info.source === "user" ? "your label" : `imported from ${info.source}`].filter(Boolean);
  return h("div", { class: "sae-stats sae-wrap", testid: "sae-label-info" }, parts.join(" · "),
    info.imported ? h("div", {}, `Imported label: "${info.imported.text}" (${info.imported.source}); clear yours to ` +
                                 "show it again") : null);
}

function renderDetail(panel, feature) {
  const labelInput = h("input", { type: "text", value: feature.label, maxlength: "120", testid: "sae-label-input",
                                  placeholder: "Name this feature" });
  const stats = feature.recorded
    ? `fires at ${(100 * feature.firing_rate).toFixed(3)}% of positions · mean activation when active ` +
      feature.mean_activation.toFixed(3)
    : "No run recorded in this atlas yet: SAE Build Atlas adds examples and statistics.";
  show(panel,
    h("div", { class: "sae-row" },
      h("button", { class: "sae-button", onclick: () => { state.detail = null; refresh(); } }, "← All features"),
      h("button", { class: "sae-button sae-primary", testid: "sae-use-feature", onclick: () => useFeature(feature.id) },
        `Use #${feature.id} in selected SAE Feature Steer`)),
    h("h3", { class: "sae-wrap" }, `Feature #${feature.id}`, feature.label ? ` — ${feature.label}` : ""),
    labelLine(feature.label_info),
    feature.preview ? previewImage(feature.id, feature.preview, true) : null,
    h("div", { class: "sae-stats sae-wrap" }, stats),
    h("div", { class: "sae-row" }, labelInput,
      h("button", { class: "sae-button", testid: "sae-label-save", onclick: async () => {
        try { await saveLabel(feature.id, labelInput.value); } catch (err) { setMessage(err.message); }
      } }, "Save label")),
    h("div", { class: "sae-message", testid: "sae-message" }, state.message),
    h("div", { class: "sae-examples" }, feature.examples.length ? feature.examples.map((example) =>
      h("figure", { class: example.tokens ? "sae-example sae-text-example" : "sae-example" },
        example.tokens ? tokenStrip(example) : heatmapCanvas(example),
        h("figcaption", { class: "sae-wrap" }, example.tokens ? `peak ${example.score.toFixed(3)}`
          : `${example.prompt || "(no prompt)"} · seed ${example.seed ?? "?"} · score ${example.score.toFixed(3)}`))) : h("p", { class: "sae-stats" }, "No example in this atlas fires this feature yet.")),
  );
}

// The card's last line: the firing rate once a run was recorded ("no runs yet" before), after the category if any.
function cardRate(row, recorded) {
  const rate = recorded ? `${(100 * row.firing_rate).toFixed(2)}%` : "no runs yet";
  return [row.category, rate].filter(Boolean).join(" · ");
}

function featureCard(row, preview, recorded) {
  const picture = preview ? previewImage(row.id, preview)
    : row.top_token ? h("div", { class: "sae-noimg sae-placeholder sae-token-card" }, row.top_token.trim())
    : row.top_generation >= 0 ? h("img", { src: thumbnailUrl(row.top_generation), loading: "lazy", alt: "" })
                              : h("div", { class: "sae-noimg" });
  return h("button", { class: "sae-card", testid: `sae-feature-${row.id}`,
                       title: [`#${row.id}`, row.label, cardRate(row, recorded)].filter(Boolean).join(" · "),
                       onclick: () => openFeature(state.atlas, row.id) },
    picture,
    h("div", { class: "sae-card-id" }, `#${row.id}`),
    h("div", { class: "sae-card-label" }, row.label || "\u00a0"),
    h("div", { class: "sae-card-rate" }, cardRate(row, recorded)));
}

async function showMore(grid, more, preview, recorded) {
  const seq = state.seq;
  const data = await getJSON("features", { atlas: state.atlas, q: state.query, sort: state.sort, limit: PAGE,
                                           offset: state.shown });
  if (seq !== state.seq) return; // the grid was replaced meanwhile
  grid.append(...data.features.map((row) => featureCard(row, preview, recorded)));
  state.shown += data.features.length;
  more.hidden = state.shown >= data.total;
}

// Typing in the search box starts a request per key: only the answer to the latest one is shown.
async function refresh() {
  const panel = state.root?.querySelector(".sae-content");
  if (!panel) return;
  const seq = ++state.seq;
  const current = () => seq === state.seq;
  if (!state.atlas) {
    show(panel, h("p", { class: "sae-wrap" }, "No feature atlas yet. Import a label set with the SAE Import Labels "
      + "node (or ", h("code", {}, "python -m sae_core labels import"), "), or build one from your runs with SAE "
      + "Build Atlas, and it appears here."));
    return;
  }
  try {
    if (state.detail !== null) {
      const feature = await getJSON("feature", { atlas: state.atlas, id: state.detail });
      if (current()) renderDetail(panel, feature);
      return;
    }
    const data = await getJSON("features", { atlas: state.atlas, q: state.query, sort: state.sort, limit: PAGE });
    if (!current()) return;
    const recorded = data.generations_seen > 0;
    const grid = h("div", { class: "sae-grid" }, data.features.map((row) => featureCard(row, data.preview, recorded)));
    state.shown = data.features.length;
    const more = h("button", { class: "sae-button", testid: "sae-more", onclick: () =>
      showMore(grid, more, data.preview, recorded).catch((err) => setMessage(err.message)) }, "Show more");
    more.hidden = state.shown >= data.total;
    show(panel,
      h("div", { class: "sae-stats sae-wrap", testid: "sae-atlas-stats" }, `${data.total} features · ${data.labelled} labelled · ` +
        `${data.generations_seen} generations seen`,
        data.preview ? ` · previews from ${data.preview.source}` : "",
        data.labelled ? h("span", {}, " · export labels: ",
          h("a", { href: exportUrl("json"), download: "", testid: "sae-export-json" }, "JSON"), " ",
          h("a", { href: exportUrl("csv"), download: "", testid: "sae-export-csv" }, "CSV")) : null),
      h("div", { class: "sae-message", testid: "sae-message" }, state.message),
      grid, more);
  } catch (err) {
    if (current()) show(panel, h("p", { class: "sae-error sae-wrap" }, err.message));
  }
}

async function openFeature(atlas, id) {
  if (atlas) state.atlas = atlas;
  state.detail = Number(id);
  const tabs = app.extensionManager?.sidebarTab;
  if (tabs && tabs.activeSidebarTabId !== TAB_ID) {
    tabs.toggleSidebarTab(TAB_ID); // renders the panel, which shows state.detail
    return;
  }
  const select = state.root?.querySelector("select.sae-atlas");
  if (select) select.value = state.atlas;
  state.showWhere?.();
  await refresh();
}

// "unet.down_blocks.2.attentions.1" -> "down_blocks.2.attentions.1": the block, without the model prefix
function shortBlock(hookpoint) {
  return hookpoint ? hookpoint.replace(/^(unet|transformer|model\.diffusion_model|diffusion_model)\./, "") : "?";
}

async function renderPanel(root) {
  state.root = root;
  root.classList.add("sae-lab-panel");
  const atlasSelect = h("select", { class: "sae-atlas", testid: "sae-atlas-select", onchange: (e) => {
    state.atlas = e.target.value; state.detail = null; refresh(); } });
  const search = h("input", { type: "search", placeholder: "Search or #id", testid: "sae-atlas-search",
                              title: "Search labels, categories, or a feature by #id",
                              oninput: (e) => { state.query = e.target.value; state.detail = null; refresh(); } });
  search.value = state.query; // the panel is rebuilt each time it opens: show the filter still applied
  const sort = h("select", { testid: "sae-atlas-sort", onchange: (e) => { state.sort = e.target.value; refresh(); } },
    h("option", { value: "firing_rate" }, "Most frequent"), h("option", { value: "mean_activation" }, "Strongest"),
    h("option", { value: "relevance" }, "Best match"), h("option", { value: "id" }, "By id"));
  sort.value = state.sort;
  const where = h("div", { class: "sae-stats sae-wrap", testid: "sae-atlas-where" });
  const showWhere = () => {
    const chosen = atlasSelect.selectedOptions[0];
    where.textContent = chosen?.dataset.where ?? "";
    atlasSelect.title = chosen?.textContent ?? "";
  };
  atlasSelect.addEventListener("change", showWhere);
  state.showWhere = showWhere;
  show(root, h("div", { class: "sae-header" }, h("h2", {}, "SAE feature atlas"), atlasSelect, where,
    h("div", { class: "sae-row" }, search, sort)), h("div", { class: "sae-content" }));
  try {
    const { atlases } = await getJSON("list");
    // the option shows the SAE's name and block; the line under the box the whole atlas path, wrapped
    fill(atlasSelect, atlases.map((a) => h("option", { value: a.name,
      "data-where": `${a.name}${a.meta?.hookpoint ? ` · ${a.meta.hookpoint}` : ""}` },
      `${a.meta?.name || a.name} (${shortBlock(a.meta?.hookpoint)})`)));
    if (!atlases.some((a) => a.name === state.atlas)) state.atlas = atlases[0]?.name ?? "";
    atlasSelect.value = state.atlas;
    showWhere();
  } catch (err) {
    setMessage(err.message);
  }
  await refresh();
}

const STYLE = `
.sae-lab-panel { padding: 8px; display: flex; flex-direction: column; gap: 8px; height: 100%; overflow: auto;
  box-sizing: border-box; min-width: 0; }
.sae-lab-panel * { box-sizing: border-box; }
.sae-lab-panel h2 { font-size: 1.05rem; margin: 0 0 6px; }
.sae-lab-panel h3 { margin: 6px 0; }
.sae-header { display: flex; flex-direction: column; gap: 4px; min-width: 0; }
.sae-wrap { overflow-wrap: anywhere; min-width: 0; }
.sae-lab-panel select, .sae-lab-panel input { background: var(--comfy-input-bg); color: var(--input-text);
  border: 1px solid var(--border-color); border-radius: 4px; padding: 4px 6px; min-width: 0; max-width: 100%; }
.sae-lab-panel select.sae-atlas { width: 100%; text-overflow: ellipsis; }
.sae-row { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; margin: 4px 0; min-width: 0; }
.sae-row input[type=search], .sae-row input[type=text] { flex: 1 1 120px; min-width: 0; }
.sae-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap: 6px; align-items: start; }
.sae-card { background: var(--comfy-menu-bg); border: 1px solid var(--border-color); border-radius: 6px;
  padding: 4px; color: var(--fg-color); cursor: pointer; text-align: left; display: flex; flex-direction: column;
  min-width: 0; font: inherit; }
.sae-card img, .sae-card .sae-noimg { display: block; width: 100%; height: auto; aspect-ratio: 1; object-fit: cover;
  border-radius: 4px; background: #333; margin: 0 0 2px; }
.sae-placeholder { display: flex; align-items: center; justify-content: center; text-align: center; font-size: 0.7rem;
  opacity: 0.8; padding: 4px; border: 1px dashed var(--border-color); }
.sae-preview-large { display: block; width: 100%; max-width: 320px; aspect-ratio: auto; border-radius: 6px; }
.sae-lab-panel a { color: var(--p-primary-color, #6ea8fe); }
.sae-card-id { font-weight: bold; font-size: 0.85rem; }
.sae-card-label, .sae-card-rate { font-size: 0.75rem; opacity: 0.8; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.sae-button { background: var(--comfy-input-bg); color: var(--fg-color); border: 1px solid var(--border-color);
  border-radius: 4px; padding: 4px 8px; cursor: pointer; max-width: 100%; overflow-wrap: anywhere; text-align: left; }
.sae-primary { border-color: #3a7bd5; }
.sae-examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 8px; }
.sae-example { margin: 0; min-width: 0; } .sae-example canvas { display: block; max-width: 100%; height: auto; }
.sae-example figcaption { font-size: 0.75rem; opacity: 0.85; }
.sae-text-example { grid-column: 1 / -1; } .sae-tokens { font-size: 0.85rem; line-height: 1.6; }
.sae-token { white-space: pre; border-radius: 3px; } .sae-token-peak { outline: 2px solid #e8b13a; font-weight: bold; }
.sae-token-card { font-size: 0.9rem; font-weight: bold; overflow-wrap: anywhere; }
.sae-stats, .sae-message { font-size: 0.8rem; opacity: 0.85; overflow-wrap: anywhere; } .sae-error { color: #e66; }
`;

app.registerExtension({
  name: "sae_lab.atlas",
  async setup() {
    document.head.append(h("style", {}, STYLE));
    window.SAELab = { ...window.SAELab, openFeature, sendToSteer, selectedSteerNodes };
    app.extensionManager?.registerSidebarTab?.({
      id: TAB_ID, icon: "pi pi-th-large", title: "SAE Atlas", tooltip: "SAE feature atlas", type: "custom",
      render: (element) => { renderPanel(element); },
      destroy: () => { state.root = null; state.showWhere = null; },
    });
  },
});
