"""Text-encoder examples (SAE Text Steer / SAE Text Features on SD1.5's CLIP-L, Concept Steerers)."""
from __future__ import annotations

from ..build import NEGATIVE, SD15, Graph, register, sample_and_save

STEERERS_SAE = "text_encoder.text_model.encoder.layers.9_k32_hidden3072_auxk32_bs4096_lr0.0004/final"


@register("sd15_text_concept_slider")
def text_concept_slider() -> dict:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", [SD15], pos=(0, 0), size=(320, 100))
    sae = g.add("SAELoader", [STEERERS_SAE, "", ""], pos=(0, 150), size=(420, 130),
                title="Concept Steerers SAE (CLIP-L layer 9)")
    steer = g.add("SAETextSteer", ["concept", "snowy winter landscape", "0", 1.0, "", ""], pos=(460, 0),
                  size=(400, 330), title="Concept slider: + snowy winter", clip=(ckpt, 1), sae=(sae, 0))
    pos = g.add("CLIPTextEncode", ["a photo of a village street with houses and trees"], pos=(900, 0),
                size=(400, 130), title="Positive (steered CLIP)", clip=(steer, 0))
    neg = g.add("CLIPTextEncode", [NEGATIVE], pos=(900, 170), size=(400, 100), title="Negative (input CLIP)",
                clip=(ckpt, 1))
    latent = g.add("EmptyLatentImage", [512, 512, 1], pos=(900, 310), size=(320, 110))
    sample_and_save(g, (ckpt, 0), pos, neg, latent, ckpt, "sae_text_concept", steps=8, cfg=7.5,
                    sampler="dpmpp_2m", scheduler="karras", x=1340)
    features = g.add("SAETextFeatures", ["a photo of a village street with houses and trees", 5, ""],
                     pos=(460, 380), size=(400, 300), title="Which features fire on which token",
                     clip=(ckpt, 1), sae=(sae, 0))
    g.add("PreviewImage", pos=(900, 460), size=(400, 300), images=(features, 0))
    g.add("Note", [
        "Concept Steerers (Kim & Ghadiyaram 2025): steer the text encoder, not the U-Net.\\n\\n"
        "The concept prompt is encoded by the SAE at CLIP-L layer 9 without top-k; its decoded code is added, "
        "times the strength, on every token of the prompt. Strength is a slider: 0 changes nothing, 1-4 add the "
        "concept, negative values remove it (erase 'nudity' with -1 to -4).\\n\\n"
        "The negative prompt is encoded with the input CLIP, untouched. Set 'words' to edit only those words' "
        "tokens; switch mode to add / scale / ablate / clamp and paste feature ids from SAE Text Features.\\n\\n"
        "Concept Steerers publishes no checkpoints: train one (their code) or collect and train your own; put "
        "the run folder in models/sae (rename it if its name holds a ':' time)."],
        pos=(0, 330), size=(420, 360))
    return g.to_json()


FLUX_T5_SAE = "text_encoder.text_model.encoder.layers.22_k64_hidden65536_auxk64_bs4096_lr0.0004/final"


@register("flux_text_t5_steer")
def flux_text_t5_steer() -> dict:
    from .dit import flux_schnell_loaders, prompts, sample_decode_save

    g = Graph()
    unet, clip, vae = flux_schnell_loaders(g)
    sae = g.add("SAELoader", [FLUX_T5_SAE, "", ""], pos=(0, 400), size=(420, 130),
                title="Concept Steerers SAE (T5 block 22)")
    steer = g.add("SAETextSteer", ["concept", "a watercolor painting", "0", 2.0, "", ""], pos=(460, 0),
                  size=(400, 330), title="Steer T5 towards: a watercolor painting", clip=(clip, 0), sae=(sae, 0))
    pos, neg = prompts(g, (steer, 0), "a photo of a red fox in the snow, golden hour", "",
                       negative_title="Negative (unused at cfg 1)", x=900)
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1], pos=(900, 310), size=(320, 110))
    sample_decode_save(g, (unet, 0), pos, neg, latent, (vae, 0), "sae_flux_text_steer",
                       [42, "fixed", 4, 1.0, "euler", "simple", 1.0], x=1340)
    g.add("Note", [
        "Concept Steerers on Flux: steer the T5 text encoder at block 22 (text_encoder_2.encoder.block.22, "
        "t5.22).\n\n"
        "Their Flux run names call this layer text_encoder.text_model.encoder.layers.22: on Flux's CLIP, whose "
        "T5 is 4096 wide like the SAE, SAE Text Steer reads that name as t5.22.\n\n"
        "The concept prompt's SAE code (no top-k) is added on every T5 token; Flux's pooled vector comes from "
        "CLIP-L and is untouched. Strength 0 changes nothing; negative values remove the concept.\n\n"
        "Concept Steerers publishes no checkpoints: put your run folder in models/sae (renamed if its name holds "
        "a ':' time)."],
        pos=(460, 380), size=(400, 300))
    return g.to_json()
