// SAE Lab node decorations: show the text our nodes return (tables, what was loaded, summaries) on the node,
// and turn SAE Top Features' feature ids into links that open them in the SAE Atlas sidebar.
import { app } from "../../../scripts/app.js";

const TEXT_WIDGET = "sae_lab_text";
const LINKS_WIDGET = "sae_lab_links";

function ensureDomWidget(node, name, make) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    widget = node.addDOMWidget(name, "sae_lab", make(), { serialize: false, hideOnZoom: false });
  }
  return widget.element;
}

function showText(node, text) {
  const pre = ensureDomWidget(node, TEXT_WIDGET, () => {
    const el = document.createElement("pre");
    el.dataset.testid = "sae-node-text";
    Object.assign(el.style, { margin: "0", padding: "4px 6px", fontSize: "11px", lineHeight: "1.3",
      overflow: "auto", maxHeight: "260px", whiteSpace: "pre", background: "var(--comfy-input-bg)",
      color: "var(--input-text)", borderRadius: "4px", userSelect: "text" });
    return el;
  });
  pre.textContent = text;
}

function showFeatureLinks(node, atlas, ids) {
  const box = ensureDomWidget(node, LINKS_WIDGET, () => {
    const el = document.createElement("div");
    el.dataset.testid = "sae-feature-links";
    Object.assign(el.style, { display: "flex", flexWrap: "wrap", gap: "4px", fontSize: "11px", padding: "2px 4px" });
    return el;
  });
  box.replaceChildren();
  if (!atlas) {
    box.textContent = "No atlas for this SAE yet: build one with SAE Build Atlas to browse these features.";
    return;
  }
  box.append("Open in SAE Atlas:");
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

app.registerExtension({
  name: "sae_lab.node_text",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.python_module?.includes("sae-lab") !== true && !String(nodeData?.name).startsWith("SAE")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(message?.text) ? message.text.join("\n") : null;
      if (text) showText(this, text);
      if (Array.isArray(message?.sae_lab_features)) {
        showFeatureLinks(this, message.sae_lab_atlas?.[0] || "", message.sae_lab_features);
      }
      this.setDirtyCanvas?.(true, true);
    };
  },
});
