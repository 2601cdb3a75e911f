"""Diffusion-transformer examples: Flux.1 schnell (build an SAE, steer with it, see where it fires), SD3.5 medium
(steer a feature and unlearn a concept) and Qwen-Image (paint a feature), each loaded as users load them."""
from __future__ import annotations

from ..build import SPECS, Graph, register
from .explore import SPECS as _explore_specs  # noqa: F401  (SAERecordActivations', SAEFeatureHeatmap's specs)
from .train import _widget_input
from .unlearn import SPECS as _unlearn_specs  # noqa: F401  (SAEConceptProfile's, SAEUnlearnConcept's specs)

SPECS.update({
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "TripleCLIPLoader": ([], [("CLIP", "CLIP")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    "ModelSamplingSD3": ([("model", "MODEL")], [("MODEL", "MODEL")]),
    "ModelSamplingAuraFlow": ([("model", "MODEL")], [("MODEL", "MODEL")]),
})

FLUX_SCHNELL = "flux1-schnell.safetensors"
SD35_MEDIUM = "sd3.5_medium.safetensors"
QWEN_IMAGE = "qwen_image_fp8_e4m3fn.safetensors"
SD35_SAE = "sd35_medium_block12.safetensors"   # an SAE on SD3.5 medium's joint block 12 (transformer_blocks.12)
QWEN_SAE = "qwen_image_block30.safetensors"    # an SAE on Qwen-Image's transformer_blocks.30

FLUX_PROMPTS = "\n".join([
    "a photo of a red fox in the snow",
    "a watercolor painting of a harbour at dawn",
    "a bowl of ramen on a wooden table, studio light",
    "a cyberpunk street at night, neon signs, rain",
    "an astronaut riding a horse on the moon",
    "a close-up portrait of an old fisherman, film photo",
])


def prompts(g: Graph, clip: tuple[int, int], positive: str, negative: str, negative_title: str = "Negative",
            x: int = 380) -> tuple[int, int]:
    pos = g.add("CLIPTextEncode", [positive], pos=(x, 0), size=(400, 130), title="Positive", clip=clip)
    neg = g.add("CLIPTextEncode", [negative], pos=(x, 170), size=(400, 100), title=negative_title, clip=clip)
    return pos, neg


def sample_decode_save(g: Graph, model: tuple[int, int], pos: int, neg: int, latent: int, vae: tuple[int, int],
                       prefix: str, settings: list, x: int, y: int = 0) -> tuple[int, int]:
    """KSampler (settings: seed, control, steps, cfg, sampler, scheduler, denoise) -> VAE Decode -> Save Image."""
    sampler = g.add("KSampler", settings, pos=(x, y), size=(320, 270), model=model, positive=(pos, 0),
                    negative=(neg, 0), latent_image=(latent, 0))
    decode = g.add("VAEDecode", pos=(x + 360, y), size=(200, 50), samples=(sampler, 0), vae=vae)
    g.add("SaveImage", [prefix], pos=(x + 360, y + 90), size=(420, 460), images=(decode, 0))
    return sampler, decode


def flux_loaders(g: Graph) -> tuple[int, int, int]:
    """Flux.1 schnell as users load it: UNETLoader, DualCLIPLoader (clip_l + t5xxl, type flux), VAELoader."""
    unet = g.add("UNETLoader", [FLUX_SCHNELL, "default"], pos=(0, 0), size=(320, 90))
    clip = g.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"],
                 pos=(0, 130), size=(320, 130))
    vae = g.add("VAELoader", ["ae.safetensors"], pos=(0, 300), size=(320, 60))
    return unet, clip, vae


@register("flux_schnell_build_and_steer_sae")
def flux_schnell_build_and_steer_sae() -> dict:
    g = Graph()
    unet, clip, vae = flux_loaders(g)
    pos, neg = prompts(g, (clip, 0), "a photo of a red fox in the snow, golden hour", "",
                       negative_title="Negative (unused at cfg 1)")
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1], pos=(380, 310), size=(320, 110))
    collect = g.add("SAECollectActivations",
                    [FLUX_PROMPTS, "single.9", "diff", "flux_schnell_single9", 4, 1.0, "euler", "simple", 0, 1024,
                     1024, "positive", "bf16", "", "", 8, 256],
                    pos=(820, 0), size=(420, 600), title="Collect block updates at single.9",
                    model=(unet, 0), clip=(clip, 0))
    train = g.add("SAETrain",
                  ["", "flux_schnell_single9", 2048, 16, "topk", 512, 200, 1e-3, 0, True, "", 256, 1 / 32,
                   10_000_000, 0.01, 0.2, "median", 20],
                  pos=(1280, 0), size=(400, 520), title="Train a small TopK SAE", dataset=(collect, 0))
    _widget_input(g, train, "dataset")
    g.add("SAESave", ["flux/flux_schnell_single9", True], pos=(1720, 0), size=(340, 110), sae=(train, 0))
    g.add("SaveImage", ["sae_flux_loss_curve"], pos=(1720, 150), size=(420, 330), images=(train, 1))
    steer = g.add("SAEFeatureSteer", ["0", "add", 10.0, "", 0.0, 1.0, "positive"], pos=(1280, 560),
                  size=(400, 300), title="Add feature 0 of the new SAE", model=(unet, 0), sae=(train, 0))
    record = g.add("SAERecordActivations", [""], pos=(1280, 900), size=(400, 100),
                   title="Record the steered block", model=(steer, 0), sae=(train, 0))
    _, decode = sample_decode_save(g, (record, 0), pos, neg, latent, (vae, 0), "sae_flux_steered",
                                   [42, "fixed", 4, 1.0, "euler", "simple", 1.0], x=1720, y=560)
    heat = g.add("SAEFeatureHeatmap", ["0", -1, False, "positive", "jet", 0.6, 3, -1, "nearest"],
                 pos=(2500, 560), size=(360, 400), title="Where feature 0 fires",
                 recording=(record, 1), image=(decode, 0))
    g.add("SaveImage", ["sae_flux_heatmap"], pos=(2900, 560), size=(420, 460), images=(heat, 0))
    g.add("Note", [
        "Build your own SAE on Flux.1 schnell, steer with it and see where its feature fires.\n\n"
        "Files: models/diffusion_models/flux1-schnell.safetensors (black-forest-labs/FLUX.1-schnell); "
        "models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors (comfyanonymous/flux_text_encoders; "
        "t5xxl_fp8_e4m3fn.safetensors needs half the memory); models/vae/ae.safetensors. Older ComfyUI reads "
        "models/unet and models/clip too.\n\n"
        "1. SAE Collect Activations samples each prompt with schnell's settings (4 steps, cfg 1, euler / simple, "
        "1024 px) and stores the update of the single-stream block single.9 (single_transformer_blocks.9, 3072 "
        "wide), image tokens only: 4096 per step at 1024 px, of which positions_per_image keeps a random 256 "
        "(bf16: 1.5 MB per prompt and step). It writes output/sae_datasets/flux_schnell_single9; re-running skips "
        "finished shards. Flux.1 has double.0-18 and single.0-37; double.12 is another good block.\n"
        "2. SAE Train fits a small TopK SAE (checkpoints in output/sae_runs, resumes after Cancel); SAE Save "
        "writes models/sae/flux/flux_schnell_single9.safetensors for Load SAE.\n"
        "3. SAE Feature Steer adds feature 0 of the new SAE (its block comes from the SAE); SAE Record "
        "Activations after it records the steered block, and the heatmap shows where feature 0 fires in the "
        "result. Rank the features with SAE Top Features and steer others.\n\n"
        "These settings are tiny so the example runs in minutes. A real SAE: thousands of prompts "
        "(prompts_file), 4 x 3072 = 12288 latents, k 32-64, batch 4096, lr 1e-4, tens of thousands of steps, "
        "on the command line:\npython -m sae_core train --data output/sae_datasets/flux_schnell_single9 "
        "--out models/sae/flux/flux_schnell_single9.safetensors --latents 12288 --k 32 --batch 4096 --lr 1e-4 "
        "--steps 30000\nFlux dev: 20-30 steps, cfg 1 and FluxGuidance 3.5 (guidance is embedded, not CFG)."],
        pos=(0, 620), size=(760, 560))
    return g.to_json()


SNOW = ["a mountain cabin in deep snow, photo", "a city street covered in snow", "a pine forest in a snowstorm",
        "a snowy village square at dusk"]
NO_SNOW = ["a mountain cabin on a summer day, photo", "a city street on a dry sunny day", "a pine forest in summer",
           "a village square at dusk"]


@register("sd35_medium_steer_and_unlearn")
def sd35_medium_steer_and_unlearn() -> dict:
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", [SD35_MEDIUM], pos=(0, 0), size=(320, 100))
    clip = g.add("TripleCLIPLoader", ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"],
                 pos=(0, 140), size=(320, 130))
    shift = g.add("ModelSamplingSD3", [3.0], pos=(0, 310), size=(320, 60), model=(ckpt, 0))
    sae = g.add("SAELoader", [SD35_SAE, "", ""], pos=(0, 410), size=(340, 130), title="SAE on joint block 12")
    pos, neg = prompts(g, (clip, 0), "a mountain cabin in a snowy pine forest at sunrise, photo",
                       "blurry, low quality, deformed")
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1], pos=(380, 310), size=(320, 110))
    profile = g.add("SAEConceptProfile", ["\n".join(SNOW), "\n".join(NO_SNOW), "snow", "", 8, 4.5, "dpmpp_2m",
                                          "sgm_uniform", 0, 1024, 1024, 4],
                    pos=(0, 590), size=(420, 520), title="Concept profile: snow",
                    model=(shift, 0), clip=(clip, 0), sae=(sae, 0))
    unlearn = g.add("SAEUnlearnConcept", [99.9, -5.0, 0.0, 1.0, "both"], pos=(820, 0), size=(400, 250),
                    title="Unlearn 'snow'", model=(shift, 0), sae=(sae, 0), concept=(profile, 0))
    g.add("PreviewImage", pos=(460, 640), size=(420, 300), title="What is suppressed (features x steps)",
          images=(unlearn, 2))
    steer = g.add("SAEFeatureSteer", ["1234", "add", 6.0, "", 0.0, 1.0, "positive, negated on negative"],
                  pos=(820, 290), size=(400, 300), title="Add feature 1234 (put one of your SAE's)",
                  model=(unlearn, 0), sae=(sae, 0))
    sample_decode_save(g, (steer, 0), pos, neg, latent, (ckpt, 2), "sae_sd35_steered_unlearned",
                       [42, "fixed", 28, 4.5, "dpmpp_2m", "sgm_uniform", 1.0], x=1260)
    g.add("Note", [
        "SD3.5 medium: unlearn a concept (snow) and steer a feature with an SAE on joint block 12.\n\n"
        "Files: models/checkpoints/sd3.5_medium.safetensors (stabilityai/stable-diffusion-3.5-medium: MMDiT-X and "
        "VAE); models/text_encoders (or models/clip): clip_l.safetensors, clip_g.safetensors, "
        "t5xxl_fp16.safetensors (t5xxl_fp8_e4m3fn.safetensors needs half the memory). With the all-in-one "
        "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors, use the checkpoint's CLIP instead.\n"
        "models/sae/sd35_medium_block12.safetensors: an SAE trained on joint block 12 (transformer_blocks.12, 1536 "
        "wide; SD3.5 medium has joint.0-23). Train one as in flux_schnell_build_and_steer_sae, with this model, "
        "blocks 'joint.12', 28 steps, cfg 4.5 and positions_per_image 256.\n\n"
        "1. SAE Concept Profile samples the target prompts (snowy scenes) and the other prompts (the same scenes "
        "without snow) and records how much every feature fires at every step; SAE Unlearn Concept suppresses the "
        "features specific to snow, only where they fire (percentile 99.9 and multiplier -5 for objects and "
        "weather; -1 and 99.999 for styles). Save the profile with SAE Save Concept to reuse it.\n"
        "2. SAE Feature Steer adds one feature on top, on the positive pass and negated on the negative one. "
        "1234 is a placeholder: find your SAE's features with SAE Top Features, SAE Find Features or the SAE Atlas. "
        "Set its strength to 0 to see the unlearning alone.\n\n"
        "Good settings: 1024 x 1024 (0.25-2 MP, sides multiples of 64), 28-40 steps, cfg 4-5, dpmpp_2m or euler "
        "with sgm_uniform, ModelSamplingSD3 shift 3. The profile: 10-20 prompts per set, the cfg you generate "
        "with and 20-28 steps (8 here keeps the example quick)."],
        pos=(1260, 600), size=(520, 560))
    return g.to_json()


@register("qwen_image_steer_feature")
def qwen_image_steer_feature() -> dict:
    g = Graph()
    unet = g.add("UNETLoader", [QWEN_IMAGE, "default"], pos=(0, 0), size=(320, 90))
    clip = g.add("CLIPLoader", ["qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "default"], pos=(0, 130),
                 size=(320, 110))
    vae = g.add("VAELoader", ["qwen_image_vae.safetensors"], pos=(0, 280), size=(320, 60))
    shift = g.add("ModelSamplingAuraFlow", [3.1], pos=(0, 380), size=(320, 60), model=(unet, 0))
    sae = g.add("SAELoader", [QWEN_SAE, "", ""], pos=(0, 480), size=(420, 130), title="SAE on transformer_blocks.30")
    pos, neg = prompts(g, (clip, 0), "a cozy reading corner with an armchair, a lamp and a bookshelf, photo", "")
    latent = g.add("EmptySD3LatentImage", [1328, 1328, 1], pos=(380, 310), size=(320, 110))
    canvas = g.add("SolidMask", [0.0, 1328, 1328], pos=(0, 660), size=(260, 110), title="Canvas (empty)")
    brush = g.add("SolidMask", [1.0, 664, 1328], pos=(0, 800), size=(260, 110), title="Brush (right half)")
    area = g.add("MaskComposite", [664, 0, "add"], pos=(300, 700), size=(260, 130), title="Where to paint",
                 destination=(canvas, 0), source=(brush, 0))
    steer = g.add("SAEFeatureSteer", ["1234", "add", 8.0, "", 0.0, 1.0, "positive, negated on negative"],
                  pos=(820, 0), size=(400, 300), title="Paint feature 1234 (put one of your SAE's)",
                  model=(shift, 0), sae=(sae, 0), mask=(area, 0))
    sample_decode_save(g, (steer, 0), pos, neg, latent, (vae, 0), "sae_qwen_image_painted",
                       [42, "fixed", 20, 2.5, "euler", "simple", 1.0], x=1260)
    g.add("Note", [
        "Qwen-Image: paint an SAE feature onto the right half of the image.\n\n"
        "Files: models/diffusion_models/qwen_image_fp8_e4m3fn.safetensors, "
        "models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors and models/vae/qwen_image_vae.safetensors "
        "(all from Comfy-Org/Qwen-Image_ComfyUI); weight_dtype default.\n"
        "models/sae/qwen_image_block30.safetensors: an SAE trained on transformer_blocks.30 (3072 wide; Qwen-Image "
        "has block.0-59). Train one as in flux_schnell_build_and_steer_sae, with this model, blocks 'block.30', "
        "20 steps, cfg 2.5 and positions_per_image 256.\n\n"
        "SAE Feature Steer adds the feature only where the mask is (here the right half; draw your own with Load "
        "Image + mask editor). A mask of any size is averaged down to the block's token grid (16 px per token); "
        "text tokens are never edited. 1234 is a placeholder: find your SAE's features with SAE Top Features, "
        "SAE Find Features or the SAE Atlas. Strength 4-20 (units of the feature's mean activation; negative "
        "values push away); 'positive, negated on negative' pushes the CFG difference too, 'positive' is gentler. "
        "Several at once: '1234:8, 77:-4'.\n\n"
        "Good settings: 1328 x 1328 (or 1664 x 928, 1472 x 1140), 20-50 steps, cfg 2.5-4, euler / simple, "
        "ModelSamplingAuraFlow shift 3.1."],
        pos=(820, 340), size=(440, 520))
    return g.to_json()
