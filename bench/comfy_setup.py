"""Shared by the ComfyUI benchmarks: import ComfyUI from COMFYUI_PATH, build full-size U-Nets with random
weights, time sampling steps of several model variants interleaved, and print ratios to a baseline."""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_BLOCKS = ["unet.down_blocks.2.attentions.1", "unet.mid_block.attentions.0",
                "unet.up_blocks.0.attentions.0", "unet.up_blocks.0.attentions.1"]  # Unpacking SDXL Turbo's four
_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "dtype": torch.float32, "in_channels": 4, "model_channels": 320,
           "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL_UNET = {**_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
             "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
SD15_UNET = {**_COMMON, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
             "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}


def setup_comfy(device: str = "cpu"):
    """Put COMFYUI_PATH on sys.path and import this repository as ComfyUI would; returns it. ComfyUI runs in CPU
    mode unless ``device`` is an accelerator: it picks its device and attention when model_management is first
    imported, which happens here, before the pack is loaded."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = torch.device(device).type == "cpu"
    import comfy.model_management  # noqa: F401

    if str(REPO) not in sys.path:  # after ComfyUI: its top-level `nodes` module, not this repository's nodes/
        sys.path.append(str(REPO))
    from headless.comfy_import import load_pack

    return load_pack()


def random_unet(family: str, seed: int = 0, unet_config: dict | None = None, device: str = "cpu",
                dtype: torch.dtype = torch.float32):
    """A U-Net of ``family`` (``unet_config``: the full-size one by default) with random weights made on
    ``device`` in ``dtype``, in a ModelPatcher that loads it there."""
    import comfy.model_patcher
    import comfy.supported_models

    config_cls, full = {"sdxl": (comfy.supported_models.SDXL, SDXL_UNET),
                        "sd15": (comfy.supported_models.SD15, SD15_UNET)}[family]
    device = torch.device(device)
    model = config_cls({**(unet_config or full), "dtype": dtype}).get_model({}, device=device)
    model.diffusion_model.to(device, dtype)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=g)
            else:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=device if device.type == "cpu" else torch.device("cpu"))


def full_sdxl(seed: int = 0):
    """The full-size SDXL U-Net (2.6 B parameters, ~10 GiB fp32) with random weights, in a ModelPatcher."""
    return random_unet("sdxl", seed)


def full_sd15(seed: int = 0):
    """The full-size SD1.5 U-Net (0.86 B parameters) with random weights, in a ModelPatcher."""
    return random_unet("sd15", seed)


def step_timer(family: str, cfg: float, size: int = 512, seed: int = 0, context: int | None = None,
               device: str = "cpu") -> Callable[[object], float]:
    """A function timing one euler step of a model at ``size`` px, as ComfyUI runs it (inference mode);
    ``context``: the text width, when not the family's."""
    import nodes

    g = torch.Generator().manual_seed(seed)
    width, extra = (2048, lambda: {"pooled_output": torch.randn(1, 1280, generator=g)}) if family == "sdxl" \
        else (768, dict)
    context = context or width
    positive = [[torch.randn(1, 77, context, generator=g), extra()]]
    negative = [[torch.zeros(1, 77, context), extra()]]
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}

    def step(model) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            nodes.common_ksampler(model, 0, 1, cfg, "euler", "normal", positive, negative, latent)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def interleaved(variants: dict[str, object], run: Callable[[object], float], repeats: int) -> dict[str, list[float]]:
    """``run`` each variant ``repeats`` times, round-robin, so that other load on the machine falls on all alike."""
    run(next(iter(variants.values())))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            times[name].append(run(variant))
    return times


def report(times: dict[str, list[float]], title: str, scale: float = 1.0, unit: str = "s") -> None:
    """Median and minimum of each variant, and their ratios to the first (the baseline)."""
    base = next(iter(times.values()))
    base_median, base_min = statistics.median(base), min(base)
    print(title)
    print("ratios against the first line; the minimum is the steadier figure on a shared machine")
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(f"{name:20} median {median * scale:8.2f} {unit} (ratio {median / base_median:.3f})   "
              f"min {best * scale:8.2f} {unit} (ratio {best / base_min:.3f})")
