"""Cost of recording SAE activations on one sampling step of the full-size SDXL U-Net (random fp32 weights).

Built with ComfyUI's own classes (needs COMFYUI_PATH), 512x512, cfg 1, one euler step, batch 1.
Recorded: the four paper SAE shapes (1280 -> 5120, k 10) on down.2.1, mid.0, up.0.0, up.0.1, through
SAE Record Activations (target: <= 1.15x the unpatched step). Runs are interleaved; the median and the
minimum are reported. Needs ~12 GiB of memory and a few minutes on CPU. Because a shared CPU makes whole-step times
noisy, it also reports the time spent inside the recording patches themselves during the recorded runs
(encode + top-k + store), as a share of those runs: the overhead measured without a second run.

    COMFYUI_PATH=/path/to/ComfyUI python bench/record_overhead.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch
from comfy_setup import PAPER_BLOCKS, full_sdxl, interleaved, report, setup_comfy, step_timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_comfy()
    from sae_lab_pack.nodes.observe import SAERecordActivations
    from sae_lab_pack.sae_core import SparseAutoencoder
    from sae_lab_pack.sae_core.observe.recording import RecordPatch

    inside = [0.0]
    original_call = RecordPatch.__call__

    def timed_call(self, view, ctx):
        start = time.perf_counter()
        try:
            return original_call(self, view, ctx)
        finally:
            inside[0] += time.perf_counter() - start

    RecordPatch.__call__ = timed_call

    model = full_sdxl()
    recorded, recordings = model, []
    for hook in PAPER_BLOCKS:
        recorded, recording = SAERecordActivations.execute(
            recorded, SparseAutoencoder(1280, 5120, 10, hookpoint=hook, input_kind="diff"), "").result
        recordings.append(recording)

    step = step_timer("sdxl", cfg=1.0)
    step(recorded)  # warm-up of the recorded variant too, before counting time inside the patches
    inside[0] = 0.0
    times = interleaved({"unpatched": model, "recording 4 blocks": recorded}, step, args.repeats)
    assert all(len(r.calls) == 1 for r in recordings), "every block should have been recorded once per run"
    report(times, f"torch {torch.__version__}, {torch.get_num_threads()} threads; one SDXL step at 512x512, cfg 1")
    recorded_total = sum(times["recording 4 blocks"])
    print(f"inside the recording patches: {inside[0]:.2f} s of {recorded_total:.2f} s recorded "
          f"({100 * inside[0] / recorded_total:.1f}%, i.e. ratio {recorded_total / (recorded_total - inside[0]):.3f})")
    print(f"recorded per run: {sum(r.nbytes() for r in recordings) / 1e3:.1f} kB over {len(recordings)} blocks")


if __name__ == "__main__":
    main()
