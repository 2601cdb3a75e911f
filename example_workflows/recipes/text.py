"""Text-encoder examples (SAE Text Steer / SAE Text Features on SD1.5's CLIP-L, Concept Steerers; SDXL's CLIP-G;
Flux's T5; collecting CLIP-L activations and training an SAE on them)."""
from __future__ import annotations

from ..build import NEGATIVE, SD15, SDXL_TURBO, SPECS, Graph, register, sample_and_save
from .train import _widget_input

SPECS["SAECollectTextActivations"] = ([("clip", "CLIP")], [("dataset", "STRING"), ("info", "STRING")])

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


SDXL_CLIP_G_SAE = "sdxl_clip_g30.safetensors"
SDXL_PROMPT = "a photo of a lighthouse on a cliff at sunset"


@register("sdxl_text_features")
def sdxl_text_features() -> dict:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", [SDXL_TURBO], pos=(0, 0), size=(320, 100))
    sae = g.add("SAELoader", [SDXL_CLIP_G_SAE, "", ""], pos=(0, 150), size=(420, 130),
                title="Your SAE on CLIP-G layer 30 (text_encoder_2)")
    features = g.add("SAETextFeatures", [SDXL_PROMPT, 5, "clip_g.30"], pos=(460, 0), size=(400, 300),
                     title="Which CLIP-G features fire on which token", clip=(ckpt, 1), sae=(sae, 0))
    g.add("PreviewImage", pos=(460, 340), size=(400, 300), images=(features, 0))
    steer = g.add("SAETextSteer", ["scale", "", "", 1.0, "clip_g.30", ""], pos=(900, 0), size=(400, 330),
                  title="Double the prompt's top CLIP-G features", clip=(ckpt, 1), sae=(sae, 0),
                  features=(features, 2))
    pos = g.add("CLIPTextEncode", [SDXL_PROMPT], pos=(1340, 0), size=(400, 130), title="Positive (steered CLIP)",
                clip=(steer, 0))
    neg = g.add("CLIPTextEncode", [NEGATIVE], pos=(1340, 170), size=(400, 100), title="Negative (input CLIP)",
                clip=(ckpt, 1))
    latent = g.add("EmptyLatentImage", [512, 512, 1], pos=(1340, 310), size=(320, 110))
    sample_and_save(g, (ckpt, 0), pos, neg, latent, ckpt, "sae_sdxl_text_features", x=1780)
    g.add("Note", [
        "SDXL has two text encoders: CLIP-L (text_encoder, 768 wide, clip_l.N) and CLIP-G (text_encoder_2, 1280 "
        "wide, 32 layers, clip_g.N); its conditioning is both concatenated, the pooled vector CLIP-G's.\n\n"
        "SAE Text Features reads CLIP-G layer 30 (text_encoder_2.text_model.encoder.layers.30) of the prompt: a "
        "token x top-features table on the node, a chart, and the prompt's top feature ids, which go straight into "
        "SAE Text Steer (scale 1 doubles them; -1 removes them; ablate, add and clamp as SAE Feature Steer). "
        "CLIP-L is left as it is.\n\n"
        "No SDXL text-encoder SAE is published: train one with the sd15_collect_text_train recipe's nodes (layers "
        "clip_g.30 on an SDXL checkpoint) and save it as models/sae/sdxl_clip_g30.safetensors."],
        pos=(0, 330), size=(420, 330))
    return g.to_json()


TEXT_PROMPTS = "\n".join([
    "a photo of a cat on a sofa", "a watercolor painting of a harbour at dawn", "a red sports car in the rain",
    "a bowl of ramen on a wooden table", "snowy mountains under a starry sky", "a portrait of an old fisherman",
    "a cyberpunk street at night, neon lights", "a field of sunflowers in summer",
])


@register("sd15_collect_text_train")
def sd15_collect_text_train() -> dict:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", [SD15], pos=(0, 0), size=(320, 100))
    collect = g.add("SAECollectTextActivations", [TEXT_PROMPTS, "clip_l.9", "sd15_clip_l9", "fp16", "", False, 256,
                                                  64],
                    pos=(360, 0), size=(420, 460), title="Collect CLIP-L layer 9 (no sampling)", clip=(ckpt, 1))
    train = g.add("SAETrain",
                  ["", "sd15_clip_l9", 3072, 32, "topk", 512, 200, 4e-4, 0, True, "clip_l.9", 256, 1 / 32,
                   10_000_000, 0.01, 0.2, "median", 20],
                  pos=(820, 0), size=(400, 520), title="Train a TopK SAE (Concept Steerers: x4, k 32)",
                  dataset=(collect, 0))
    _widget_input(g, train, "dataset")
    g.add("SAESave", ["text/sd15_clip_l9", True], pos=(1260, 0), size=(340, 110), sae=(train, 0))
    g.add("SaveImage", ["sae_text_loss_curve"], pos=(1260, 150), size=(420, 330), images=(train, 1))
    g.add("SAETextFeatures", ["a photo of a cat on a sofa", 5, ""], pos=(1260, 520), size=(400, 300),
          title="What the new SAE reads in a prompt", clip=(ckpt, 1), sae=(train, 0))
    g.add("Note", [
        "Concept Steerers' data, your way: SAE Collect Text Activations encodes each prompt with the CLIP (no "
        "sampling: thousands of prompts a minute on a GPU) and stores CLIP-L layer 9's output, one row per token "
        "(start, end and padding tokens left out). Put thousands of captions in a .txt in the input folder and name "
        "it in prompts_file; re-running continues the dataset.\n\n"
        "SAE Train trains on it as on any dataset; the SAE's hookpoint is text_encoder.text_model.encoder.layers.9, "
        "so SAE Text Features (here, on a prompt) and SAE Text Steer find the layer with their layer input empty: "
        "load models/sae/text/sd15_clip_l9.safetensors in the sd15_text_concept_slider workflow to steer with "
        "it.\n\n"
        "The text atlas (top prompts per feature, the firing token marked, in the SAE Atlas sidebar): python -m "
        "sae_core atlas --data output/sae_datasets/sd15_clip_l9 --sae models/sae/text/sd15_clip_l9.safetensors"],
        pos=(0, 150), size=(320, 460))
    return g.to_json()
