"""Overhead of SAE patches on one sampling step of the full-size SDXL U-Net (random fp32 weights).

Built with ComfyUI's own classes (needs COMFYUI_PATH), 512x512, cfg 1, one euler step, batch 1.
Patched: the four paper SAE shapes (1280 -> 5120, k 10) on down.2.1, mid.0, up.0.0, up.0.1,
- idle: strength 0 (an installed patch that edits nothing; target <= 1.03x the unpatched step);
- active: scaling one feature in every block (a full SAE encode per block call), for reference.
Runs are interleaved; the median and the minimum of each variant are reported. Needs ~12 GiB of memory and a few minutes on CPU.

    COMFYUI_PATH=/path/to/ComfyUI python bench/patch_overhead.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from comfy_setup import full_sdxl, setup_comfy

BLOCKS = ["unet.down_blocks.2.attentions.1", "unet.mid_block.attentions.0",
          "unet.up_blocks.0.attentions.0", "unet.up_blocks.0.attentions.1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_comfy()
    import nodes
    from sae_lab_pack.nodes.steer import SAEFeatureSteer
    from sae_lab_pack.sae_core import SparseAutoencoder

    model = full_sdxl()
    saes = [SparseAutoencoder(1280, 5120, 10, hookpoint=h, input_kind="diff") for h in BLOCKS]

    def patched(strength: float, mode: str):
        m = model
        for sae in saes:
            m = SAEFeatureSteer.execute(m, sae, "17", mode, strength).result[0]
        return m

    variants = {"unpatched": model, "patched, idle": patched(0.0, "add"), "patched, active": patched(2.0, "scale")}
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    negative = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    latent = {"samples": torch.zeros(1, 4, 64, 64)}

    def step(m) -> float:
        start = time.perf_counter()
        nodes.common_ksampler(m, 0, 1, 1.0, "euler", "normal", positive, negative, latent, disable_noise=False)
        return time.perf_counter() - start

    step(model)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, m in variants.items():
            times[name].append(step(m))
    base_median, base_min = statistics.median(times["unpatched"]), min(times["unpatched"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one SDXL step at 512x512, cfg 1")
    print("ratios against unpatched; min is the steadier figure on a shared machine")
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(f"{name:18} median {median:6.2f} s (ratio {median / base_median:.3f})   min {best:6.2f} s "
              f"(ratio {best / base_min:.3f})   runs: {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
