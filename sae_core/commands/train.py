"""``train``: fit a TopK / BatchTopK SAE on collected activations; runs as is or under torchrun (DDP).

    python -m sae_core train --data output/sae_datasets/my_dataset --out models/sae/my_sae.safetensors
    torchrun --nproc_per_node 4 -m sae_core train --data ... --out ... --batch 4096
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..blocks.patch import INPUT_KINDS
from ..cli import command
from ..errors import SAEInputError


def _args(p: argparse.ArgumentParser) -> None:
    from ..train.config import add_cli_arguments

    p.add_argument("--data", required=True, help="dataset folder (made by SAE Collect Activations), a folder of "
                                                 "(N, d_in) .safetensors/.npy arrays, or one such file")
    p.add_argument("--out", required=True, help="the trained SAE, a native .safetensors file; the checkpoint, "
                                                "logs (.log.jsonl/.log.csv) and loss plot (.loss.png) go beside it")
    p.add_argument("--block", help="which block of a dataset holding several (any notation: down.2.1, ...)")
    add_cli_arguments(p.add_argument_group("training settings (the SAE Train node offers the same)"))
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, help="CPU threads per process")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out")
    g.add_argument("--checkpoint", help="checkpoint path (default: beside --out, FILE.checkpoint.pt)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("what the SAE records about itself (defaults come from the dataset)")
    g.add_argument("--hookpoint", help="e.g. unet.up_blocks.0.attentions.1, up.0.1 or transformer.transformer_blocks.3")
    g.add_argument("--input-kind", choices=list(INPUT_KINDS), help="the block update (diff) or the block output")
    g.add_argument("--model-family", help="sdxl, sd15, flux, sd3, qwen_image...")
    g.add_argument("--name", help="name stored in the file (default: the file name)")


class TrainingBar:
    """tqdm's bar over the training steps (installed with huggingface_hub), FVU, L0 and dead latents beside it;
    stderr that is not a terminal (a log file) gets a line every 10 s instead of a redraw every 0.25 s."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr,
                        mininterval=0.25 if sys.stderr.isatty() else 10.0)

    def update(self, done: int, total: int, metrics: dict) -> None:
        self.bar.total = total
        self.bar.set_postfix(fvu=f"{metrics.get('fvu', float('nan')):.4f}", L0=f"{metrics.get('l0', 0):.1f}",
                             dead=f"{100 * metrics.get('dead_fraction', 0):.1f}%", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


@command("train", "train a TopK/BatchTopK SAE on activations (CPU, CUDA, or torchrun for several GPUs)", _args)
def _train(args: argparse.Namespace) -> int:
    import torch

    from ..blocks.names import diffusers_name, hookpoint_of
    from ..train import ActivationSource, RunFiles, train_sae
    from ..train.config import from_cli
    from ..train.distributed import init_from_env, shutdown

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise SAEInputError(f"--out {args.out!r} must end in .safetensors (the native SAE format)")
    if out.exists() and not (args.force or args.resume):
        raise SAEInputError(f"--out {args.out!r} exists; pass --force to overwrite it or --resume to continue its run")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = from_cli(args).validate()
    hookpoint = args.hookpoint
    if hookpoint and diffusers_name(hookpoint):
        hookpoint = hookpoint_of(diffusers_name(hookpoint))
    meta = {"hookpoint": hookpoint, "input_kind": args.input_kind, "model_family": args.model_family,
            "name": args.name or out.stem}
    source = ActivationSource.open(args.data, block=args.block, chunk_rows=config.chunk_rows)
    dist, device = init_from_env(args.device)
    try:
        files = RunFiles.beside(out, args.checkpoint)
        total = config.total_steps(source.total_rows)
        progress = TrainingBar(total) if dist.is_main and not args.quiet else None
        if dist.is_main:
            print(f"data: {source.describe()}", file=sys.stderr)
            print(f"training {config.n_latents} latents, k={config.k} ({config.activation}), "
                  f"batch {config.batch_size}, "
                  f"{total} steps on {device}" + (f" x {dist.world_size} processes" if dist.enabled else ""),
                  file=sys.stderr)
        result = train_sae(config, source, files=files, resume=args.resume, device=device, dist=dist, sae_meta=meta,
                           on_step=progress.update if progress else None)
        if progress:
            progress.close()
        if dist.is_main:
            last = result.history[-1] if result.history else {}
            print(f"wrote {out}: {result.sae.describe()}; FVU {last.get('fvu', float('nan')):.4f}, "
                  f"dead {100 * last.get('dead_fraction', 0):.1f}%", file=sys.stderr)
    finally:
        shutdown()
    return 0
