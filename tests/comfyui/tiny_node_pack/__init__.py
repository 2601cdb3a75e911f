"""Test-only ComfyUI nodes: a loader of tiny models, standing in for real checkpoints that cannot be
downloaded in tests. Example workflows are run with CheckpointLoaderSimple swapped for this node."""
import os
import sys

sys.path.insert(0, os.environ["SAE_LAB_TEST_HELPERS"])
import tiny_models  # noqa: E402


class SAELabTestTinyCheckpoint:
    CATEGORY = "SAE Lab/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (["sdxl", "sd15"],)}}

    def load(self, family):
        return (tiny_models.build_unet(family), tiny_models.TinyTextEncoder(), tiny_models.build_vae())


NODE_CLASS_MAPPINGS = {"SAELabTestTinyCheckpoint": SAELabTestTinyCheckpoint}
