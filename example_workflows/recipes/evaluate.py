"""Tuning unlearning as SAeUron does: a settings sweep scored by a CLIP zero-shot classifier."""
from __future__ import annotations

from ..build import SD15, SPECS, Graph, register
from .unlearn import SAEURON_REPO, SUBJECTS, _lines

SPECS.update({
    "CLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")]),
    "SAEClassifyCLIP": ([("clip_vision", "CLIP_VISION"), ("clip", "CLIP"), ("image", "IMAGE")],
                        [("classifier", "SAE_CLASSIFIER"), ("predictions", "STRING")]),
    "SAEClassifierCheckpoint": ([("image", "IMAGE")], [("classifier", "SAE_CLASSIFIER"), ("predictions", "STRING")]),
    "SAEUnlearningSweep": ([("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("sae", "SAE"),
                            ("concept", "SAE_CONCEPT"), ("classifier", "SAE_CLASSIFIER"),
                            ("cross_classifier", "SAE_CLASSIFIER"), ("concept_2", "SAE_CONCEPT"),
                            ("concept_3", "SAE_CONCEPT"), ("concept_4", "SAE_CONCEPT")],
                           [("grid", "IMAGE"), ("feature_table", "STRING"), ("sweep", "SAE_SWEEP")]),
    "SAEUnlearningScores": ([("sweep", "SAE_SWEEP")], [("scores", "STRING"), ("best", "STRING"), ("chart", "IMAGE"),
                                                       ("percentile", "FLOAT"), ("multiplier", "FLOAT")]),
})

CLIP_FULL = "openai_clip-vit-large-patch14.safetensors"  # OpenAI's CLIP ViT-L/14 model.safetensors, renamed
STYLES = ["Van Gogh", "Monet", "Picasso", "Watercolor"]


def _van_gogh_profile() -> tuple[Graph, int, int, int]:
    """The SD1.5 checkpoint, SAeUron's style SAE and a Van Gogh profile against other styles (its name its class)."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", [SD15], pos=(0, 0), size=(320, 100))
    sae = g.add("SAELoader", ["none", SAEURON_REPO, "unet.up_blocks.1.attentions.2"], pos=(0, 150), size=(420, 130),
                title="SAeUron style SAE (up.1.2)")
    target = _lines("A painting of {} in Van Gogh style.")
    others = "\n".join(f"A painting of {s} in {style} style." for s, style in zip(SUBJECTS, STYLES[1:]))
    profile = g.add("SAEConceptProfile", [target, others, "Van Gogh", "", 3, 7.5, "euler", "normal", 0, 256, 256, 4],
                    pos=(0, 330), size=(420, 520), title="Concept profile: Van Gogh (its name is its class)",
                    model=(ckpt, 0), clip=(ckpt, 1), sae=(sae, 0))
    return g, ckpt, sae, profile


@register("sd15_tune_unlearning")
def sd15_tune_unlearning() -> dict:
    g, ckpt, sae, profile = _van_gogh_profile()
    vision = g.add("CLIPVisionLoader", [CLIP_FULL], pos=(460, 0), size=(360, 80), title="CLIP ViT-L/14 vision")
    classifier = g.add("SAEClassifyCLIP", ["\n".join(STYLES), "a painting in {} style", f"clip_vision/{CLIP_FULL}"],
                       pos=(460, 130), size=(360, 260), title="Style classifier (CLIP zero-shot)",
                       clip_vision=(vision, 0), clip=(ckpt, 1))
    prompts = "\n".join(["Van Gogh | A painting of a sailing boat at sunset in Van Gogh style.",
                         "Monet | A painting of a sailing boat at sunset in Monet style.",
                         "Picasso | A painting of a sailing boat at sunset in Picasso style."])
    sweep = g.add("SAEUnlearningSweep", [prompts, "", "0", "99.99, 99.999", "-1, -10, -30", 8, 7.5, "euler", "normal",
                                         512, 512, 3, "both", 160, False],
                  pos=(860, 0), size=(440, 700), title="Unlearning sweep (percentile x multiplier)",
                  model=(ckpt, 0), clip=(ckpt, 1), vae=(ckpt, 2), sae=(sae, 0), concept=(profile, 0),
                  classifier=(classifier, 0))
    g.add("SaveImage", ["sae_unlearning_sweep"], pos=(1340, 0), size=(520, 600), images=(sweep, 0))
    scores = g.add("SAEUnlearningScores", pos=(1340, 650), size=(360, 160), title="UA / IRA / CRA and the best setting",
                   sweep=(sweep, 2))
    g.add("PreviewImage", pos=(1740, 650), size=(420, 300), title="Scores at the best setting", images=(scores, 2))
    g.add("Note", [
        "Tune SAeUron's two knobs per concept (percentile, multiplier) the way the paper does: sweep them and pick the "
        "pair with the highest (UA + IRA) / 2.\n\n"
        "The sweep samples each prompt with the un-edited model and with the concept unlearned under every "
        "percentile x multiplier, and draws one grid: per prompt, rows = percentiles, columns = multipliers, the "
        "un-edited image first. Each prompt is labelled with the style it shows ('Van Gogh | ...'): the concept's "
        "own prompts give UA (1 - how often the classifier still sees Van Gogh), the others IRA (how often the other "
        "styles survive). SAE Unlearning Scores picks the best setting and outputs its percentile and multiplier for "
        "SAE Unlearn Concept.\n\n"
        "The classifier here is CLIP zero-shot: the CLIP ViT-L/14 vision model with SD1.5's own CLIP-L text model "
        "(the same CLIP). SD1.5 checkpoints lack CLIP-L's text projection, so it is read from the full OpenAI CLIP "
        "file: download model.safetensors of openai/clip-vit-large-patch14 into models/clip_vision as "
        f"{CLIP_FULL} (Load CLIP Vision reads its vision half). For the paper's numbers use UnlearnCanvas's own "
        "ViT classifiers with SAE Classifier Checkpoint (models/sae_classifiers, NAME.pth + NAME.json of classes), "
        "and python -m sae_core evaluate for its full protocol.\n\n"
        "Small values keep the example quick; the paper sweeps objects over percentiles 99.99, 99.995, 99.999 x "
        "multipliers -1 ... -30 (the sweep's defaults), with 20-50 steps and many prompts per class."],
        pos=(0, 900), size=(820, 420))
    return g.to_json()


SPECS.update({
    "SAEUnlearningAttack": ([("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("target_image", "IMAGE"),
                             ("classifier", "SAE_CLASSIFIER")],
                            [("adversarial_prompt", "STRING"), ("conditioning", "CONDITIONING"),
                             ("attacked_images", "IMAGE"), ("plain_images", "IMAGE"), ("asr", "FLOAT"),
                             ("info", "STRING")]),
})


@register("sd15_attack_unlearning")
def sd15_attack_unlearning() -> dict:
    g, ckpt, sae, profile = _van_gogh_profile()
    unlearn = g.add("SAEUnlearnConcept", [99.999, -1.0, 0.0, 1.0, "both"], pos=(460, 330), size=(320, 250),
                    title="Unlearn Van Gogh style", model=(ckpt, 0), sae=(sae, 0), concept=(profile, 0))
    prompt = "A painting of a sailing boat at sunset in Van Gogh style."
    pos = g.add("CLIPTextEncode", [prompt], pos=(460, 0), size=(400, 130), title="The concept's prompt",
                clip=(ckpt, 1))
    neg = g.add("CLIPTextEncode", [""], pos=(460, 170), size=(400, 100), title="Negative (empty)", clip=(ckpt, 1))
    latent = g.add("EmptyLatentImage", [256, 256, 1], pos=(900, 0), size=(320, 110))
    base = g.add("KSampler", [0, "fixed", 6, 7.5, "euler", "normal", 1.0], pos=(900, 150), size=(320, 270),
                 title="The un-edited model: the target", model=(ckpt, 0), positive=(pos, 0), negative=(neg, 0),
                 latent_image=(latent, 0))
    decode = g.add("VAEDecode", pos=(900, 460), size=(200, 50), samples=(base, 0), vae=(ckpt, 2))
    attack = g.add("SAEUnlearningAttack", [prompt, 5, 5, 0.01, 1, "prepend", 0, "fixed", "0", "", 6, 7.5, "euler",
                                           "normal", 256, 256, "Van Gogh"],
                   pos=(1260, 0), size=(420, 720), title="UnlearnDiffAtk against the unlearned model",
                   model=(unlearn, 0), clip=(ckpt, 1), vae=(ckpt, 2), target_image=(decode, 0))
    g.add("SaveImage", ["sae_attack_attacked"], pos=(1720, 0), size=(360, 380), title="Attacked prompt",
          images=(attack, 2))
    g.add("PreviewImage", pos=(1720, 420), size=(360, 380), title="Plain prompt (unlearned model)",
          images=(attack, 3))
    g.add("Note", [
        "Is the unlearned style really gone, or can a prompt bring it back? UnlearnDiffAtk (SAeUron section 7.2) "
        "optimises a few tokens prepended to the concept's prompt so that the unlearned model denoises the target "
        "image (here the un-edited model's picture of the prompt) as well as it can; the tokens are projected to "
        "real vocabulary tokens, so the attacked prompt is text anyone could type.\n\n"
        "The paper's settings: 5 tokens, 40 iterations, learning rate 0.01, one timestep per iteration, "
        "prepended; this example runs 5 iterations and 6 sampling steps to stay quick (real use: 40 and 20-50). "
        "The target image must have the attack's width x height.\n\n"
        "To score it, connect a classifier (SAE Classify (CLIP), as in the 'tune unlearning' example, or "
        "UnlearnCanvas's style ViT with SAE Classifier Checkpoint) and name the concept's class: the asr output is "
        "the fraction of attacked images in which the classifier still finds Van Gogh. Over folders of attacked "
        "images: python -m sae_core evaluate FOLDER --kind style --style-classifier ... --attack."],
        pos=(0, 900), size=(820, 330))
    return g.to_json()
