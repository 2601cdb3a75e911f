"""Cost of SAeUron unlearning and of profile recording, at the block and on one sampling step of the
full-size SD1.5 U-Net.

Random fp32 weights, built with ComfyUI's own classes (needs COMFYUI_PATH); 512x512, cfg 7.5 (batch of
two passes), one euler step, at SAeUron's style block up.1.2 with an SAE of the paper's shape
(1280 -> 20480, k 32). Variants, interleaved, median reported as a ratio to the unpatched step:
- unlearn, idle: a profile whose thresholds are never reached (encode, compare, return y unchanged);
- unlearn, editing: thresholds below every activation, so the full edit runs at every position
  (the paper's percentile 99.999 selects 1 feature per step; this run forces 3);
- recording: the patch SAE Concept Profile installs (encode + position-average).
First the block alone (its forward vs forward + patch, many interleaved repeats: tight ratios), then
whole sampling steps (``--step-repeats 0`` skips them; on a busy CPU their spread hides a few percent).

    COMFYUI_PATH=/path/to/ComfyUI python bench/unlearn_overhead.py [--repeats 20] [--step-repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch
from comfy_setup import full_sd15, interleaved, report, setup_comfy, step_timer

HOOK = "unet.up_blocks.1.attentions.2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="block-level repeats")
    parser.add_argument("--step-repeats", type=int, default=3, help="whole-step repeats (0: skip)")
    args = parser.parse_args()
    setup_comfy()
    from sae_lab_pack.nodes.patching import install_block_patch, model_block_layout
    from sae_lab_pack.sae_core import SparseAutoencoder
    from sae_lab_pack.sae_core.blocks.context import CallContext
    from sae_lab_pack.sae_core.blocks.unet import patched_output
    from sae_lab_pack.sae_core.edits.unlearn import ConceptSelection, StepSelection, UnlearnPatch
    from sae_lab_pack.sae_core.observe.concept_recorder import ConceptRecordPatch

    model = full_sd15()
    sae = SparseAutoencoder(1280, 20480, 32, hookpoint=HOOK, input_kind="output")
    block = model_block_layout(model).resolve(HOOK)
    features = torch.tensor([11, 4096, 20000])

    def unlearn(threshold: float):
        step = StepSelection(features, torch.ones(3, dtype=torch.float64), torch.full((3,), threshold),
                             torch.full((3,), -1.0))

        class _Profile:  # only sigmas are read by the patch
            sigmas = (14.6,)
            name = "bench"

        return UnlearnPatch(sae, [ConceptSelection(_Profile(), 99.999, -1.0, (step,))])

    recorder = ConceptRecordPatch(sae)
    patches = {"unlearn, idle": unlearn(1e30), "unlearn, editing": unlearn(-1.0), "recording": recorder}

    # ---- the block alone: SAeUron's up.1.2 at 512 px (16 x 16 positions), both CFG passes
    module = model.model.diffusion_model.get_submodule(block.comfy)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1280, 16, 16, generator=g)
    context = torch.randn(2, 77, 768, generator=g)
    ctx = CallContext((0, 1), 14.6, (14.6, 0.0))
    with torch.inference_mode():
        y = module(x, context=context, transformer_options={})

        def block_time(patch) -> float:
            start = time.perf_counter()
            out = module(x, context=context, transformer_options={})
            if patch is not None:
                patched_output(patch, x, out, ctx)
            return time.perf_counter() - start

        for p in patches.values():
            patched_output(p, x, y, ctx)  # warm-up
        block_times = interleaved({"block forward": None, **patches}, block_time, args.repeats)
    report(block_times, f"torch {torch.__version__}, {torch.get_num_threads()} threads; SD1.5 up.1.2 block, "
           f"2 x 16 x 16 positions; SAE 1280 -> 20480, k 32; {args.repeats} runs", scale=1000, unit="ms")
    if args.step_repeats <= 0:
        return
    variants = {"unpatched": model, **{name: install_block_patch(model, block, p, "bench")
                                       for name, p in patches.items()}}
    times = interleaved(variants, step_timer("sd15", cfg=7.5), args.step_repeats)
    report(times, "one SD1.5 step at 512x512, cfg 7.5; SAE 1280 -> 20480, k 32 at up.1.2")


if __name__ == "__main__":
    main()
