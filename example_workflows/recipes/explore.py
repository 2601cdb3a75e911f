"""Exploring examples: record what the paper's SAEs see during a generation, rank and overlay features."""
from __future__ import annotations

from ..build import SPECS, Graph, register, sample_and_save, turbo_base, unbox_sae

SPECS.update({
    "SAERecordActivations": ([("model", "MODEL"), ("sae", "SAE")],
                             [("MODEL", "MODEL"), ("recording", "SAE_RECORDING")]),
    "SAETopFeatures": ([("recording", "SAE_RECORDING"), ("latent", "LATENT"), ("image", "IMAGE")],
                       [("table", "STRING"), ("chart", "IMAGE"), ("feature_ids", "STRING")]),
    "SAEFeatureHeatmap": ([("recording", "SAE_RECORDING"), ("image", "IMAGE")],
                          [("heatmaps", "IMAGE"), ("mask", "MASK")]),
    "SAEFeatureTimeline": ([("recording", "SAE_RECORDING"), ("latent", "LATENT"), ("image", "IMAGE")],
                           [("chart", "IMAGE"), ("table", "STRING")]),
    "SAEInspect": ([("recording", "SAE_RECORDING"), ("image", "IMAGE")], [("mask", "MASK")]),
})


def drop_unlinked(g: Graph, node_id: int, names: set[str]) -> None:
    """Remove optional sockets left unconnected (as the frontend saves them) and renumber link slots."""
    node = g.nodes[node_id - 1]
    node["inputs"] = [i for i in node["inputs"] if i["link"] is not None or i["name"] not in names]
    slots = {i["link"]: n for n, i in enumerate(node["inputs"]) if i["link"] is not None}
    for link in g.links:
        if link[3] == node_id:
            link[4] = slots[link[0]]


def find(g: Graph, type_: str) -> int:
    return next(n["id"] for n in g.nodes if n["type"] == type_)


@register("sdxl_turbo_explore")
def explore() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "a red fox in a snowy forest at sunrise, photo")
    sae_comp = unbox_sae(g, "down_blocks.2.attentions.1", pos=(0, 460))
    sae_style = unbox_sae(g, "up_blocks.0.attentions.1", pos=(0, 620))
    rec_comp = g.add("SAERecordActivations", [""], pos=(820, 0), size=(360, 100), title="Record down.2.1 (composition)",
                     model=(ckpt, 0), sae=(sae_comp, 0))
    rec_style = g.add("SAERecordActivations", [""], pos=(820, 140), size=(360, 100), title="Record up.0.1 (style)",
                      model=(rec_comp, 0), sae=(sae_style, 0))
    sample_and_save(g, (rec_style, 0), pos, neg, latent, ckpt, "sae_explore", x=1220)
    sampler, decode = find(g, "KSampler"), find(g, "VAEDecode")

    for row, (rec, name) in enumerate(((rec_comp, "down.2.1"), (rec_style, "up.0.1"))):
        y = 600 + row * 520
        top = g.add("SAETopFeatures", [10, -1, "positive", 0], pos=(1220, y), size=(420, 420),
                    title=f"Top features at {name}", recording=(rec, 1), latent=(sampler, 0))
        drop_unlinked(g, top, {"image"})
        g.add("PreviewImage", pos=(1680, y), size=(420, 300), title=f"Top features at {name} (chart)",
              images=(top, 1))
        heat = g.add("SAEFeatureHeatmap", ["top 6", -1, False, "positive", "jet", 0.6, 3, -1, "nearest"],
                     pos=(2140, y), size=(360, 400), title=f"Top 6 heatmaps at {name}",
                     recording=(rec, 1), image=(decode, 0))
        g.add("SaveImage", [f"sae_explore_heatmaps_{name.replace('.', '')}"], pos=(2540, y), size=(520, 460),
              images=(heat, 0))

    g.add("SAEInspect", ["", -1], pos=(1220, 1640), size=(560, 760), title="Inspect down.2.1 (hover the image)",
          recording=(rec_comp, 1), image=(decode, 0))

    g.add("Note", [
        "Explore: which SAE features fire while SDXL Turbo draws this image, and where (Unpacking SDXL Turbo).\n\n"
        "Two recorders are chained on the model: down.2.1 (composition) and up.0.1 (colour, light, style). "
        "They do not change the image. After sampling, Top Features ranks features by mean activation over the "
        "block's positions (table on the node, bar chart, and the ids ready to paste into SAE Feature Steer); "
        "Feature Heatmap overlays the top 6 on the image; SAE Inspect (below them) lists what fires at the pixel "
        "under the mouse: click a feature for its heatmap, pin several, scrub the steps, send one to a selected "
        "SAE Feature Steer node or turn it into a MASK.\n\n"
        "Try: change the seed or prompt and queue again (the recording follows the new run); put feature ids "
        "in the heatmap's 'features' (e.g. '4998, 2301'); use its MASK output as the mask of a steer node to "
        "paint another feature exactly where one fires; with SDXL base (several steps, cfg > 1) add "
        "SAE Feature Timeline and try step and pass.\n\n"
        "Put a recorder after a steer node on the same block to see the steer's effect."],
        pos=(820, 280), size=(360, 420))
    return g.to_json()
