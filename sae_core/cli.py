"""``python -m sae_core``: inspect and convert SAEs (more subcommands register themselves in COMMANDS)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from .errors import SAEError

# name -> (help, add_arguments, run); run returns the exit code.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="SAE file or folder, or hf://owner/repo[/subfolder]")
    p.add_argument("--hookpoint", help="pick one SAE from a folder holding several")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("inspect", "show what an SAE checkpoint holds", _inspect_args)
def _inspect(args: argparse.Namespace) -> int:
    from .formats import load_sae

    sae = load_sae(args.path, hookpoint=args.hookpoint)
    info = sae.info()
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


@command("convert", "convert an SAE to the native single-file format", _convert_args)
def _convert(args: argparse.Namespace) -> int:
    from .blocks import diffusers_name, hookpoint_of
    from .formats import load_sae
    from .formats.native import save

    sae = load_sae(args.src, hookpoint=args.hookpoint)
    if args.set_hookpoint:
        name = diffusers_name(args.set_hookpoint)
        sae.hookpoint = hookpoint_of(name) if name else args.set_hookpoint
    if args.set_input_kind:
        sae.input_kind = args.set_input_kind
    if args.set_model_family:
        sae.model_family = args.set_model_family
    save(sae, args.dst, extra={"converted_from": sae.source_format})
    print(f"wrote {args.dst}: {sae.describe()}")
    return 0


def _load_plugins() -> None:
    """Subcommands that live with their feature (training, atlas) register on import."""
    import importlib

    for module in ("sae_core.train.cli", "sae_core.atlas_cli"):
        try:
            importlib.import_module(module.replace("sae_core", __package__, 1))
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__):
                continue
            raise


def main(argv: list[str] | None = None) -> int:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="python -m sae_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except SAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
