"""Shared by the ComfyUI benchmarks: import ComfyUI from COMFYUI_PATH and build a full-size SDXL U-Net."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def setup_comfy():
    """Put COMFYUI_PATH on sys.path (CPU mode) and import this repository as ComfyUI would; returns it."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location("sae_lab_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["sae_lab_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


def full_sdxl(seed: int = 0):
    """The full-size SDXL U-Net (2.6 B parameters, ~10 GiB fp32) with random weights, in a ModelPatcher."""
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                   "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "dtype": torch.float32,
                   "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
                   "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
                   "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
                   "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
                   "use_temporal_attention": False, "use_temporal_resblock": False}
    model = comfy.supported_models.SDXL(unet_config).get_model({}, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=g) / param[0].numel() ** 0.5)
            else:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
