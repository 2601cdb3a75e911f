"""``python -m headless <job> ...``: parse the options, import ComfyUI, join the process group, load the model
with ComfyUI's loaders (or a workflow's upstream nodes), run the job's node code on this rank's share."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from .comfy_import import comfyui_root, import_comfyui, load_node_pack, load_pack

JOBS = {"collect": "headless.collect", "profile": "headless.profile", "sweep": "headless.sweep"}
DESCRIPTIONS = {"collect": "Sample prompts and store what chosen blocks compute, as an SAE training dataset in "
                           "output/sae_datasets (SAE Collect Activations; ranks take shards of prompts).",
                "profile": "Record a concept profile (SAE Concept Profile; ranks take sampler batches) and save it "
                           "in models/sae_concepts (SAE Save Concept).",
                "sweep": "SAeUron's settings sweep (SAE Unlearning Sweep; ranks take runs): the grid, the feature "
                         "table and the scores in output/sae_sweeps."}


def common_parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=add_help, prog="python -m headless")
    where = parser.add_argument_group("ComfyUI and its folders")
    where.add_argument("--comfyui", help="The ComfyUI checkout to import (default: COMFYUI_PATH, else the current "
                                         "directory when it is one).")
    where.add_argument("--output-directory", help="ComfyUI's output folder (datasets go to its sae_datasets); "
                                                  "default: the checkout's output/.")
    where.add_argument("--input-directory", help="ComfyUI's input folder (prompts_file is read from there only).")
    where.add_argument("--extra-model-paths-config", action="append", default=[],
                       help="An extra_model_paths.yaml, as ComfyUI's --extra-model-paths-config (repeatable).")
    where.add_argument("--custom-node", action="append", default=[],
                       help="A custom node folder whose loader nodes the workflow uses (repeatable).")
    where.add_argument("--device", default="auto", help="auto (CUDA when present: cuda:LOCAL_RANK), cpu or cuda.")
    model = parser.add_argument_group("the model (or give --workflow)")
    model.add_argument("--workflow", type=Path,
                       help="An API-format workflow (Export (API)) holding the job's node: its widget values and "
                            "upstream loaders are used; options given here win.")
    model.add_argument("--checkpoint", help="A checkpoint name in models/checkpoints (CheckpointLoaderSimple).")
    model.add_argument("--unet", help="A diffusion model name in models/diffusion_models (UNETLoader).")
    model.add_argument("--weight-dtype", default="default", help="UNETLoader's weight_dtype.")
    model.add_argument("--clip", help="A text encoder name in models/text_encoders (CLIPLoader), with --unet.")
    model.add_argument("--clip-type", default="stable_diffusion", help="CLIPLoader's type (e.g. sdxl, flux).")
    model.add_argument("--vae", help="A VAE name in models/vae (VAELoader), for sweep; else the checkpoint's.")
    model.add_argument("--sae", help="An SAE name in models/sae (Load SAE), for profile and sweep.")
    model.add_argument("--concept", help="A profile name in models/sae_concepts (SAE Load Concept), for sweep.")
    return parser


def _loaders(options: argparse.Namespace) -> tuple[dict, dict]:
    """The loader nodes the model options ask for, and the job node's sockets they feed."""
    nodes, links = {}, {}
    if options.checkpoint:
        nodes["headless_checkpoint"] = {"class_type": "CheckpointLoaderSimple",
                                        "inputs": {"ckpt_name": options.checkpoint}}
        links = {"model": ["headless_checkpoint", 0], "clip": ["headless_checkpoint", 1],
                 "vae": ["headless_checkpoint", 2]}
    loaders = {"unet": ("model", "UNETLoader", {"unet_name": options.unet, "weight_dtype": options.weight_dtype}),
               "clip": ("clip", "CLIPLoader", {"clip_name": options.clip, "type": options.clip_type}),
               "vae": ("vae", "VAELoader", {"vae_name": options.vae}),
               "sae": ("sae", "SAELoader", {"sae_name": options.sae})}
    for option, (socket, class_type, inputs) in loaders.items():
        if getattr(options, option):
            nodes[f"headless_{option}"] = {"class_type": class_type, "inputs": inputs}
            links[socket] = [f"headless_{option}", 0]
    return nodes, links


def _setup(options: argparse.Namespace):
    """Process group first (it picks the device), then ComfyUI on that device, its folders, the pack."""
    from sae_core.train.distributed import init_from_env

    share, device = init_from_env(options.device)
    import_comfyui(comfyui_root(options.comfyui), cpu=device.type == "cpu")
    import folder_paths

    if options.output_directory:
        folder_paths.set_output_directory(str(Path(options.output_directory).resolve()))
    if options.input_directory:
        folder_paths.set_input_directory(str(Path(options.input_directory).resolve()))
    if options.extra_model_paths_config:
        from utils.extra_config import load_extra_path_config

        for config in options.extra_model_paths_config:
            load_extra_path_config(config)
    load_pack()
    return share


def _graph(options: argparse.Namespace, node_id: str, sockets: list[str], required: list[str]) -> tuple[dict, str]:
    """The workflow's graph (or an empty one) with the job node's sockets linked to the loaders asked for."""
    from .workflow import find_node, read_workflow

    graph = read_workflow(options.workflow) if options.workflow else {}
    job = find_node(graph, node_id) if graph else "job"
    graph.setdefault(job, {"class_type": node_id, "inputs": {}})
    nodes, links = _loaders(options)
    graph.update(nodes)
    if options.concept:
        sae = links.get("sae") or graph[job]["inputs"].get("sae")
        graph["headless_concept"] = {"class_type": "SAELoadConcept",
                                     "inputs": {"concept_name": options.concept, "sae": sae}}
        links["concept"] = ["headless_concept", 0]
    graph[job]["inputs"].update({name: link for name, link in links.items() if name in sockets})
    missing = [name for name in required if name not in graph[job]["inputs"]]
    if missing:
        raise SystemExit(f"{node_id}: no {', '.join(missing)}: give --workflow, or --checkpoint (or --unet and "
                         f"--clip), and --sae / --vae / --concept as the job needs")
    return graph, job


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    known, _ = common_parser(add_help=False).parse_known_args(argv)
    if not argv or argv[0] not in JOBS:
        common_parser(add_help=True).print_help()
        print(f"\njobs: {', '.join(JOBS)} (python -m headless <job> --help)")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    share = _setup(known)
    job = importlib.import_module(JOBS[argv[0]])
    from sae_lab_pack.sae_core.errors import SAEError

    from .options import add_node_options, node_values, socket_inputs
    from .workflow import GraphRunner, node_classes

    node = job.NODE
    parser = common_parser(add_help=True)
    parser.prog, parser.description = f"python -m headless {argv[0]}", DESCRIPTIONS[argv[0]]
    add_node_options(parser, node)
    if hasattr(job, "add_job_options"):
        job.add_job_options(parser)
    options = parser.parse_args(argv[1:])
    try:
        node_id = node.define_schema().node_id
        graph, job_id = _graph(options, node_id, socket_inputs(node), socket_inputs(node, required_only=True))
        extra = {}
        for folder in options.custom_node:
            extra.update(load_node_pack(folder))
        runner = GraphRunner(graph, node_classes(extra))
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            inputs = runner.inputs(job_id)
            sockets = {name: inputs[name] for name in socket_inputs(node) if name in inputs}
            values = node_values(node, {k: v for k, v in inputs.items() if k not in sockets}, options)
            print(job.run(sockets, values, options, share.rank, share.world_size), flush=True)
    except SAEError as exc:  # no barrier: the launcher stops the other ranks
        print(f"{node.node_name()}: {exc}", file=sys.stderr, flush=True)
        return 2
    from sae_core.train.distributed import shutdown

    shutdown()
    return 0
