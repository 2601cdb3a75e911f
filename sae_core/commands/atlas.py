"""``atlas``: build or extend an SAE's feature atlas from a collected activation dataset (no ComfyUI needed)."""
from __future__ import annotations

import argparse
import sys

from ..cli import command


def _atlas_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="activation dataset folder (from SAE Collect Activations)")
    p.add_argument("--sae", required=True, help="the SAE (file, folder or hf://...)")
    p.add_argument("--block", help="block to read when the dataset holds several (any notation)")
    p.add_argument("--out", help="atlas folder (default: beside the SAE, x.safetensors -> x.atlas)")
    p.add_argument("--top-n", type=int, default=8, help="examples kept per feature (default 8)")
    p.add_argument("--step", type=int, default=-1, help="sampling step to read, -1 = mean over steps")


@command("atlas", "build a feature atlas from a collected activation dataset", _atlas_args)
def _atlas(args: argparse.Namespace) -> int:
    from ..atlas.feature_atlas import atlas_dir_for
    from ..atlas.from_dataset import build_atlas_from_dataset
    from ..errors import SAEInputError
    from ..sae.formats import load_sae

    sae = load_sae(args.sae)
    if args.out is None and sae.source_path is None:
        raise SAEInputError("the SAE has no file to put the atlas beside; pass --out FOLDER")
    folder = args.out or atlas_dir_for(sae.source_path)

    def progress(done: int, total: int) -> None:
        print(f"\ratlas: shard {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    atlas = build_atlas_from_dataset(args.data, sae, folder, block=args.block, top_n=args.top_n, step=args.step,
                                     progress=progress)
    fired = int((atlas.top_gens[:, 0] >= 0).sum())
    print(f"{folder}: {atlas.next_id} generations seen, {fired} of {atlas.n_latents} features have examples")
    return 0
