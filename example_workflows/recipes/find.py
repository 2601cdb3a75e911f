"""Find features by contrast: a concept slider driven by words (profile -> find features -> steer)."""
from __future__ import annotations

from ..build import SPECS, Graph, register, sample_and_save, turbo_base, unbox_sae
from .unlearn import SPECS as _unlearn_specs  # noqa: F401  (SAEConceptProfile's spec)

SPECS.update({
    "SAEFindFeatures": ([("concept", "SAE_CONCEPT"), ("sae", "SAE")],
                        [("feature_ids", "STRING"), ("table", "STRING"), ("chart", "IMAGE")]),
})

WINTER = ["a snowy street in a small town, winter", "a house covered in snow, winter", "a forest in deep snow",
          "a frozen lake with snow on the shore"]
SUMMER = ["a street in a small town, summer", "a house on a sunny day", "a green forest in summer",
          "a lake on a warm sunny day"]


@register("sdxl_turbo_find_and_steer_concept")
def find_and_steer() -> dict:
    g = Graph()
    ckpt, pos, neg, latent = turbo_base(g, "a street in a small town at noon")
    sae = unbox_sae(g, "down_blocks.2.attentions.1")
    profile = g.add("SAEConceptProfile", ["\n".join(WINTER), "\n".join(SUMMER), "winter", "", 1, 1.0,
                                          "euler_ancestral", "sgm_uniform", 0, 512, 512, 4],
                    pos=(0, 600), size=(420, 520), title="Concept: winter vs summer",
                    model=(ckpt, 0), clip=(ckpt, 1), sae=(sae, 0))
    find = g.add("SAEFindFeatures", [5, "target", "concept", ""], pos=(460, 600), size=(340, 190),
                 title="Features of 'winter'", concept=(profile, 0), sae=(sae, 0))
    g.add("PreviewImage", pos=(460, 790), size=(420, 300), title="How much more they fire on winter prompts",
          images=(find, 2))
    steer = g.add("SAEFeatureSteer", ["0", "add", 6.0, "", 0.0, 1.0, "positive"], pos=(820, 0), size=(400, 300),
                  title="Winter slider (strength)", model=(ckpt, 0), sae=(sae, 0), features=(find, 0))
    sample_and_save(g, (steer, 0), pos, neg, latent, ckpt, "sae_concept_slider")
    g.add("Note", [
        "A concept slider driven by words.\n\n"
        "1. SAE Concept Profile samples the target prompts (winter scenes) and the other prompts (the same scenes "
        "in summer) and records how much every SAE feature fires on each.\n"
        "2. SAE Find Features ranks the features that fire more on the target prompts and outputs their ids.\n"
        "3. SAE Feature Steer adds them (mode add) while generating a new prompt: its strength is the slider. "
        "Try 2, 6, 12; negative strengths push away from the concept; direction 'other' gives the summer features.\n\n"
        "Write prompt pairs that differ in the concept only. 8-20 prompts per set give steadier features; the "
        "profile runs once and is cached (save it with SAE Save Concept to reuse it). The ids also link to the "
        "SAE Atlas sidebar when this SAE has an atlas."],
        pos=(1260, 600), size=(460, 340))
    return g.to_json()
