"""Test-only ComfyUI nodes: loaders of tiny models, standing in for real checkpoints that cannot be downloaded in
tests. Example workflows are run with their loaders swapped for these nodes (server_harness.tiny_prompt):
CheckpointLoaderSimple -> SAELabTestTinyCheckpoint, UNETLoader -> SAELabTestTinyDiffusionModel,
DualCLIPLoader / TripleCLIPLoader / CLIPLoader -> SAELabTestTinyTextEncoder, VAELoader -> SAELabTestTinyVAE,
CLIPVisionLoader -> SAELabTestTinyCLIPVision. Families ``sd15_clip``, ``sdxl_clip`` and ``flux_clip`` are the tiny
SD1.5 U-Net, SDXL U-Net and Flux with a real (tiny) ComfyUI CLIP-L / CLIP-L + CLIP-G / CLIP-L + T5 instead of the
bag-of-words text encoder, for the text-encoder workflows."""
import os
import sys

HELPERS = os.environ["SAE_LAB_TEST_HELPERS"]  # tests/comfyui; its parent holds the helpers shared with unit tests
sys.path[:0] = [HELPERS, os.path.dirname(HELPERS)]
import tiny_dit  # noqa: E402
import tiny_models  # noqa: E402

UNET_FAMILIES = ["sdxl", "sd15"]
DIT_FAMILIES = ["flux", "sd3", "qwen_image"]
# with a real tiny CLIP (text-encoder workflows)
REAL_CLIP_FAMILIES = {"sd15_clip": "sd15", "flux_clip": "flux", "sdxl_clip": "sdxl"}
FAMILIES = UNET_FAMILIES + DIT_FAMILIES + list(REAL_CLIP_FAMILIES)
TEXT_WORKFLOW_CLIP = {"width": 64, "layers": 12}  # the tiny U-Nets' context width, SD1.5's 12 layers


def _family_input():
    return {"required": {"family": (FAMILIES,)}}


def tiny_model(family):
    family = REAL_CLIP_FAMILIES.get(family, family)
    if family in UNET_FAMILIES:
        return tiny_models.build_unet(family)
    return tiny_dit.build_dit(family)


def tiny_text_encoder(family):
    if family in REAL_CLIP_FAMILIES:
        import tiny_text

        if family == "flux_clip":  # CLIP-L's pooled vector and T5's tokens at the tiny Flux's widths
            return tiny_text.build_flux_clip(clip_width=tiny_dit.POOLED, t5_width=tiny_dit.CONTEXT, t5_layers=24)
        if family == "sdxl_clip":  # CLIP-L + CLIP-G, their widths summing to the tiny SDXL's context
            return tiny_text.build_sdxl_clip()
        return tiny_text.build_sd1_clip(**TEXT_WORKFLOW_CLIP)
    if family in UNET_FAMILIES:
        return tiny_models.TinyTextEncoder()
    return tiny_models.TinyTextEncoder(context_dim=tiny_dit.CONTEXT, pooled_dim=tiny_dit.POOLED)


def tiny_vae(family):
    family = REAL_CLIP_FAMILIES.get(family, family)
    if family in UNET_FAMILIES:
        return tiny_models.build_vae()
    return tiny_dit.build_vae(family)


class SAELabTestTinyCheckpoint:
    CATEGORY = "SAE Lab/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _family_input()

    def load(self, family):
        return (tiny_model(family), tiny_text_encoder(family), tiny_vae(family))


class SAELabTestTinyDiffusionModel:
    """UNETLoader's stand-in."""
    CATEGORY = "SAE Lab/testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _family_input()

    def load(self, family):
        return (tiny_model(family),)


class SAELabTestTinyTextEncoder:
    """DualCLIPLoader's, TripleCLIPLoader's and CLIPLoader's stand-in."""
    CATEGORY = "SAE Lab/testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _family_input()

    def load(self, family):
        return (tiny_text_encoder(family),)


class SAELabTestTinyVAE:
    """VAELoader's stand-in."""
    CATEGORY = "SAE Lab/testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _family_input()

    def load(self, family):
        return (tiny_vae(family),)


class SAELabTestTinyCLIPVision:
    """CLIPVisionLoader's stand-in: ComfyUI's ClipVisionModel at a tiny width (tiny_models.build_clip_vision)."""
    CATEGORY = "SAE Lab/testing"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _family_input()

    def load(self, family):
        return (tiny_models.build_clip_vision(),)


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (SAELabTestTinyCheckpoint, SAELabTestTinyDiffusionModel,
                                                     SAELabTestTinyTextEncoder, SAELabTestTinyVAE,
                                                     SAELabTestTinyCLIPVision)}
