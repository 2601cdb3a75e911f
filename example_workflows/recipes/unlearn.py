"""Concept unlearning examples (SAeUron): build a concept profile, suppress its features, compare."""
from __future__ import annotations

from ..build import SD15, SPECS, Graph, register, sample_and_save, turbo_base, unbox_sae

_EXTRA = [("concept_2", "SAE_CONCEPT"), ("concept_3", "SAE_CONCEPT"), ("concept_4", "SAE_CONCEPT")]
SPECS.update({
    "SAEConceptProfile": ([("model", "MODEL"), ("clip", "CLIP"), ("sae", "SAE")],
                          [("concept", "SAE_CONCEPT"), ("preview", "STRING"), ("chart", "IMAGE")]),
    "SAEUnlearnConcept": ([("model", "MODEL"), ("sae", "SAE"), ("concept", "SAE_CONCEPT"), *_EXTRA],
                          [("MODEL", "MODEL"), ("preview", "STRING"), ("chart", "IMAGE")]),
    "SAESaveConcept": ([("concept", "SAE_CONCEPT")], [("concept", "SAE_CONCEPT")]),
    "SAELoadConcept": ([("sae", "SAE")], [("concept", "SAE_CONCEPT"), ("info", "STRING")]),
})

SAEURON_REPO = "bcywinski/SAeUron"
SUBJECTS = ["a dog", "a house by a lake", "a bowl of fruit"]


def _lines(template: str, subjects=SUBJECTS) -> str:
    return "\n".join(template.format(s) for s in subjects)


@register("sd15_saeuron_style_unlearning")
def sd15_style_unlearning() -> dict:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", [SD15], pos=(0, 0), size=(320, 100))
    sae = g.add("SAELoader", ["none", SAEURON_REPO, "unet.up_blocks.1.attentions.2"], pos=(0, 150), size=(420, 130),
                title="SAeUron style SAE (up.1.2)")
    target = _lines("A painting of {} in Van Gogh style.")
    others = "\n".join(template.format(s) for template, s in zip(
        ["A painting of {} in Monet style.", "A photo of {}.", "A pencil sketch of {}."],
        SUBJECTS))
    profile = g.add("SAEConceptProfile", [target, others, "van gogh", "", 3, 7.5, "euler", "normal", 0, 256, 256, 4],
                    pos=(0, 330), size=(420, 520), title="Concept profile: Van Gogh style",
                    model=(ckpt, 0), clip=(ckpt, 1), sae=(sae, 0))
    saved = g.add("SAESaveConcept", ["styles/van_gogh", False], pos=(460, 330), size=(320, 110),
                  concept=(profile, 0))
    unlearn = g.add("SAEUnlearnConcept", [99.999, -1.0, 0.0, 1.0, "both"], pos=(460, 480), size=(320, 250),
                    title="Unlearn Van Gogh style", model=(ckpt, 0), sae=(sae, 0), concept=(saved, 0))
    g.add("PreviewImage", pos=(460, 770), size=(420, 300), title="What is suppressed (features x steps)",
          images=(unlearn, 2))
    pos = g.add("CLIPTextEncode", ["A painting of a sailing boat at sunset in Van Gogh style."], pos=(840, 0),
                size=(400, 130), title="Positive", clip=(ckpt, 1))
    neg = g.add("CLIPTextEncode", ["blurry, low quality"], pos=(840, 170), size=(400, 100), title="Negative",
                clip=(ckpt, 1))
    latent = g.add("EmptyLatentImage", [512, 384, 1], pos=(840, 310), size=(320, 110))
    common = dict(steps=5, cfg=7.0, sampler="dpmpp_2m", scheduler="karras", seed=7)
    sample_and_save(g, (unlearn, 0), pos, neg, latent, ckpt, "saeuron_unlearned", x=1280, **common)
    g.add("Note", [
        "Concept unlearning with SAeUron: the style is removed by suppressing the few SAE features that are "
        "specific to it, only where they fire.\n\n"
        "1. Build a profile. target_prompts show the concept (here Van Gogh style) on varied subjects; other_prompts "
        "show the same subjects without it (other styles, photos). The profile node samples every prompt and records "
        "how much each SAE feature fires at each step. It runs once (cached) and SAE Save Concept keeps it in "
        "models/sae_concepts, so next time use SAE Load Concept instead.\n"
        "Real-world settings: 10-20 prompts per set, 20-50 steps (the paper records 50), 512 x 512 and the cfg you "
        "generate with; and 20-30 steps in the KSampler. The small values here only keep the example quick.\n\n"
        "2. Tune the unlearning. percentile 99.999 + multiplier -1 are the paper's style settings (1-3 features per "
        "step). If the style survives, lower the percentile (99.99, 99.95) or make the multiplier more negative; if "
        "other content suffers, raise the percentile. The chart shows which features are suppressed at which steps.\n\n"
        "3. Compare with the same seed: connect the KSampler's model to the checkpoint to see the original. "
        "The paper's "
        "SAE was trained on the UnlearnCanvas fine-tune of SD1.5; base SD1.5 works, with weaker features."],
        pos=(1280, 600), size=(460, 520))
    return g.to_json()


@register("sdxl_turbo_object_suppression")
def sdxl_turbo_object_suppression() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "a photo of a dog playing with a ball in a park")
    sae = unbox_sae(g, "down_blocks.2.attentions.1")
    target = "\n".join(["a photo of a dog on a beach", "a dog sleeping on a sofa", "a dog running in the snow",
                        "a dog sitting in a park"])
    others = "\n".join(["a photo of a cat on a beach", "a cat sleeping on a sofa", "a horse running in the snow",
                        "a child sitting in a park"])
    profile = g.add("SAEConceptProfile", [target, others, "dog", "", 1, 1.0, "euler_ancestral", "sgm_uniform", 0,
                                          512, 512, 4],
                    pos=(0, 600), size=(420, 520), title="Concept profile: dog (object)",
                    model=(ckpt, 0), clip=(ckpt, 1), sae=(sae, 0))
    unlearn = g.add("SAEUnlearnConcept", [99.9, -5.0, 0.0, 1.0, "both"], pos=(820, 0), size=(400, 250),
                    title="Suppress 'dog' at down.2.1", model=(ckpt, 0), sae=(sae, 0), concept=(profile, 0))
    g.add("PreviewImage", pos=(460, 760), size=(420, 300), title="What is suppressed", images=(unlearn, 2))
    sample_and_save(g, (unlearn, 0), pos, neg, latent, ckpt, "sae_object_suppressed")
    sample_and_save(g, (ckpt, 0), pos, neg, latent, ckpt, "sae_object_original", x=2080)
    g.add("Note", [
        "Object suppression on SDXL Turbo with the paper's down.2.1 SAE (the composition block), using SAeUron's "
        "rule.\n\n"
        "The profile samples the target prompts (showing a dog) and the other prompts (same scenes, other subjects) "
        "with SDXL Turbo's settings (1 step, cfg 1) and keeps the SAE features most specific to dogs, per step. "
        "SAE Unlearn Concept scales those features down wherever they fire above their threshold; the rest of the "
        "block is kept exactly. The right-hand sampler shows the original image with the same seed.\n\n"
        "Objects need more than styles: percentile 99.9 keeps about 5 of the 5120 features here, multiplier -5 "
        "scales them (the paper tunes -1 to -30 per object). If the dog survives, lower the percentile or make the "
        "multiplier more negative; if the park changes too, raise the percentile. Try up.0.1 (style block) for "
        "textures and colours. Real-world: 10-20 prompts per set; save the profile with SAE Save Concept."],
        pos=(820, 300), size=(400, 380))
    return g.to_json()
