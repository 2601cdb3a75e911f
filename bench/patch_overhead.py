"""Overhead of SAE patches on one sampling step of the full-size SDXL U-Net (random fp32 weights).

Built with ComfyUI's own classes (needs COMFYUI_PATH), 512x512, cfg 1, one euler step, batch 1.
Patched: the four paper SAE shapes (1280 -> 5120, k 10) on down.2.1, mid.0, up.0.0, up.0.1,
- idle: strength 0 (an installed patch that edits nothing; target <= 1.03x the unpatched step);
- active: scaling one feature in every block (a full SAE encode per block call), for reference.
Runs are interleaved; the median and the minimum of each variant are reported. Needs ~12 GiB of memory.

    COMFYUI_PATH=/path/to/ComfyUI python bench/patch_overhead.py [--repeats 5]
"""
from __future__ import annotations

import argparse

import torch
from comfy_setup import PAPER_BLOCKS, full_sdxl, interleaved, report, setup_comfy, step_timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_comfy()
    from sae_lab_pack.nodes.steer import SAEFeatureSteer
    from sae_lab_pack.sae_core import SparseAutoencoder

    model = full_sdxl()
    saes = [SparseAutoencoder(1280, 5120, 10, hookpoint=h, input_kind="diff") for h in PAPER_BLOCKS]

    def patched(strength: float, mode: str):
        m = model
        for sae in saes:
            m = SAEFeatureSteer.execute(m, sae, "17", mode, strength).result[0]
        return m

    variants = {"unpatched": model, "patched, idle": patched(0.0, "add"), "patched, active": patched(2.0, "scale")}
    times = interleaved(variants, step_timer("sdxl", cfg=1.0), args.repeats)
    report(times, f"torch {torch.__version__}, {torch.get_num_threads()} threads; one SDXL step at 512x512, cfg 1")


if __name__ == "__main__":
    main()
