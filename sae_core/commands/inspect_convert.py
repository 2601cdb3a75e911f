"""``inspect`` and ``convert``: what an SAE checkpoint holds, and turning it into the native format."""
from __future__ import annotations

import argparse
import json

from ..cli import command
from ..sae.model import STREAMS


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="SAE file or folder, or hf://owner/repo[/subfolder]")
    p.add_argument("--hookpoint", help="pick one SAE from a folder holding several")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("inspect", "show what an SAE checkpoint holds", _inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    from ..sae.formats import load_sae

    sae = load_sae(args.path, hookpoint=args.hookpoint)
    info = sae.info()
    info["published_as"] = sae.extra.get("known_repo")  # the table of known checkpoints' entry, if any
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    print(sae.describe())
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"  {key:<{width}}  {value}")
    return 0


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="SAE file or folder in any supported format")
    p.add_argument("dst", help="output .safetensors (native format)")
    p.add_argument("--hookpoint", help="pick one SAE from a folder holding several")
    p.add_argument("--set-hookpoint", help="record this hookpoint (e.g. unet.up_blocks.0.attentions.1)")
    p.add_argument("--set-input-kind", choices=["diff", "output"], help="record what the SAE encodes")
    p.add_argument("--set-model-family", help="record the model family (sdxl, sd15, ...)")
    p.add_argument("--set-stream", choices=list(STREAMS), help="record which tokens the SAE encodes")


@command("convert", "convert an SAE to the native single-file format", _convert_args)
def _convert(args: argparse.Namespace) -> int:
    from ..blocks.names import diffusers_name, hookpoint_of
    from ..sae.formats import load_sae
    from ..sae.formats.native import save

    sae = load_sae(args.src, hookpoint=args.hookpoint)
    if args.set_hookpoint:
        name = diffusers_name(args.set_hookpoint)
        sae.hookpoint = hookpoint_of(name) if name else args.set_hookpoint
    if args.set_input_kind:
        sae.input_kind = args.set_input_kind
    if args.set_model_family:
        sae.model_family = args.set_model_family
    if args.set_stream:
        sae.stream = args.set_stream
    save(sae, args.dst, extra={"converted_from": sae.source_format})
    print(f"wrote {args.dst}: {sae.describe()}")
    return 0
