"""Steering examples (SAE Feature Steer on SDXL Turbo with the paper's SAEs)."""
from __future__ import annotations

from ..build import Graph, register, sample_and_save, turbo_base, unbox_sae


@register("sdxl_turbo_paint_feature")
def paint_feature() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "a photo of a cozy living room with a sofa and a window")
    sae = unbox_sae(g, "down_blocks.2.attentions.1")
    canvas = g.add("SolidMask", [0.0, 512, 512], pos=(0, 600), size=(260, 110), title="Canvas (empty)")
    brush = g.add("SolidMask", [1.0, 256, 512], pos=(0, 740), size=(260, 110), title="Brush (right half)")
    area = g.add("MaskComposite", [256, 0, "add"], pos=(300, 640), size=(260, 130), title="Where to paint",
                 destination=(canvas, 0), source=(brush, 0))
    steer = g.add("SAEFeatureSteer", ["4998", "add", 10.0, "", 0.0, 1.0, "positive"], pos=(820, 0),
                  size=(400, 300), title="Paint feature 4998 (cartoon) at down.2.1",
                  model=(ckpt, 0), sae=(sae, 0), mask=(area, 0))
    sample_and_save(g, (steer, 0), pos, neg, latent, ckpt, "sae_paint")
    g.add("Note", [
        "Paint a feature onto an area (Unpacking SDXL Turbo, 'Paint').\n\n"
        "down.2.1 is the composition block. Feature 4998 draws a cartoon look; it is added only where the "
        "mask is (here the right half; draw your own with Load Image + mask editor).\n\n"
        "Try: other features from the paper's demo, 2301 (evil), 3747 (image frame); strength 5 to 40 "
        "(units of the feature's mean activation; negative values push the other way); "
        "several features at once: '4998:10, 3747:15'.\n\n"
        "Load SAE downloads the paper's SAE from the hub into models/sae the first time."],
        pos=(820, 340), size=(400, 280))
    return g.to_json()


@register("sdxl_turbo_ablate_feature")
def ablate_feature() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "a tiger resting in tall grass, golden hour")
    sae = unbox_sae(g, "up_blocks.0.attentions.1")
    steer = g.add("SAEFeatureSteer", ["4977", "ablate", 1.0, "", 0.0, 1.0, "positive"], pos=(820, 0),
                  size=(400, 300), title="Ablate feature 4977 (tiger stripes) at up.0.1",
                  model=(ckpt, 0), sae=(sae, 0))
    sample_and_save(g, (steer, 0), pos, neg, latent, ckpt, "sae_ablate")
    g.add("Note", [
        "Remove a feature where it fires (ablation).\n\n"
        "up.0.1 is the block that carries colour, light and style. Ablating feature 4977 (tiger stripes) "
        "removes exactly its decoded contribution and nothing else: the SAE's reconstruction error is kept.\n\n"
        "Try: mode 'scale' with strength 5 to amplify it instead (-1 is the same as ablation); "
        "features 90 (fur) or 2615 (twilight blur); add a mask to ablate only in one area."],
        pos=(820, 340), size=(400, 240))
    return g.to_json()


@register("sdxl_turbo_feature_icon")
def feature_icon() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "", negative="")
    sae = unbox_sae(g, "down_blocks.2.attentions.1")
    steer = g.add("SAEFeatureSteer", ["4998", "replace", 10.0, "", 0.0, 1.0, "positive"], pos=(820, 0),
                  size=(400, 300), title="Feature icon of 4998 at down.2.1",
                  model=(ckpt, 0), sae=(sae, 0))
    sample_and_save(g, (steer, 0), pos, neg, latent, ckpt, "sae_feature_icon")
    g.add("Note", [
        "Feature icon: what does a feature draw on its own?\n\n"
        "The block's whole update is replaced by the feature's direction (strength x its mean activation) "
        "on an empty prompt, as in the paper's demo. Works best at down.2.1 and up.0.1.\n\n"
        "Try: change the feature id to browse features one by one; set block to up.0.1 with the up.0.1 SAE."],
        pos=(820, 340), size=(400, 220))
    return g.to_json()
