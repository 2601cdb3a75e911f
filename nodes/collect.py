"""SAE Collect Activations: sample prompts and store what chosen blocks compute, as an SAE training dataset."""
from __future__ import annotations

import re
from pathlib import Path

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..sae_core.blocks import hookpoint_of
from ..sae_core.collect import (DTYPES, STORE_PASSES, ActivationDatasetWriter, ActivationRecorder, collect,
                                fingerprint, parse_prompts, read_manifest, read_prompt_file)
from ..sae_core.errors import SAEError, SAEInputError
from .comfy_glue import install_block_patch, model_block_layout, node_error

NODE = "SAE Collect Activations"
DATASETS_DIR = "sae_datasets"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")


def dataset_dir(name: str, folder: str = "") -> Path:
    """``<folder or ComfyUI output/sae_datasets>/<name>``; the name is one plain folder name."""
    name = (name or "").strip()
    if not _NAME.match(name) or ".." in name:
        raise SAEInputError(f"dataset name {name!r} is not a plain folder name; use letters, digits, spaces, "
                            f"'.', '_' or '-' (e.g. my_dataset)")
    base = Path(folder.strip()).expanduser() if (folder or "").strip() else \
        Path(folder_paths.get_output_directory()) / DATASETS_DIR
    return base / name


def model_fingerprint(model) -> str:
    """Which weights (and which weight patches such as LoRAs) produced the activations."""
    diffusion_model = model.get_model_object("diffusion_model")
    patches = sorted((key, len(value)) for key, value in getattr(model, "patches", {}).items())
    return fingerprint(diffusion_model.named_parameters(), extra=[repr(patches)])


def _encode(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


class SAECollectActivations(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SAECollectActivations",
            display_name=NODE,
            category="SAE Lab/train",
            description=(
                "Samples each prompt and stores what the chosen U-Net transformer blocks compute (their update, as "
                "sdxl-unbox, or their output, as SAeUron), one row per position and step, as a dataset for SAE Train "
                "or `python -m sae_core train`. Shards are written as they finish: re-running skips finished work, "
                "and Cancel keeps every finished shard."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model whose blocks are recorded (with any LoRAs applied)."),
                io.Clip.Input("clip", tooltip="Encodes the prompts, as CLIP Text Encode does."),
                io.String.Input("prompts", multiline=True, default="a photo of a cat\na watercolor painting of a city",
                                tooltip="One prompt per line. Real datasets use thousands (sdxl-unbox used LAION-COCO "
                                        "captions); add more lines later and re-run: finished shards are kept."),
                io.String.Input("blocks", default="down.2.1",
                                tooltip="One block or several, comma separated, in any notation: down.2.1, "
                                        "up_blocks.0.attentions.1, input_blocks.8.1, mid.0."),
                io.Combo.Input("store", options=["diff", "output"], default="diff",
                               tooltip="diff: the block's update (output - input), what sdxl-unbox SAEs encode. "
                                       "output: the block's output, what SAeUron SAEs encode."),
                io.String.Input("dataset_name", default="my_dataset",
                                tooltip="Folder name of the dataset, under output/sae_datasets unless 'folder' is set. "
                                        "Re-running with the same name continues it."),
                io.Int.Input("steps", default=1, min=1, max=1000,
                             tooltip="Sampling steps; rows are stored for every step (SDXL Turbo: 1)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Guidance scale. At 1.0 only the positive pass runs (SDXL Turbo)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler, as in KSampler (SDXL Turbo: euler_ancestral)."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="normal",
                               tooltip="Scheduler, as in KSampler (SDXL Turbo: sgm_uniform)."),
                io.Int.Input("base_seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=False,
                             tooltip="Prompt i is sampled with base_seed + i (sdxl-unbox: seed = prompt index). "
                                     "Fixed, so a re-run continues the same dataset."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8,
                             tooltip="Image width; the block sees width/8 divided by its downsampling."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Image height."),
                io.Combo.Input("passes", options=list(STORE_PASSES), default="positive",
                               tooltip="Store the positive (conditional) pass only, as SAeUron, or both CFG passes."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp16",
                               tooltip="Storage precision; fp16 halves the disk space of fp32."),
                io.String.Input("prompts_file", default="", optional=True,
                                tooltip="A .txt file (one prompt per line) or .csv (a prompt/caption/text column); "
                                        "its prompts come after the ones typed above."),
                io.String.Input("negative", default="", optional=True, tooltip="Negative prompt (used when cfg > 1)."),
                io.String.Input("folder", default="", optional=True,
                                tooltip="Where to create the dataset folder instead of output/sae_datasets."),
                io.Int.Input("prompts_per_shard", default=8, min=1, max=100000, optional=True,
                             tooltip="Prompts per shard file: the unit of resuming and of the training shuffle."),
            ],
            outputs=[
                io.String.Output(display_name="dataset", tooltip="The dataset folder, for SAE Train."),
                io.String.Output(display_name="info", tooltip="What was collected."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, dataset_name: str = "", folder: str = "", **kwargs):
        """Run again when the dataset's finished shards on disk changed (e.g. the folder was deleted)."""
        try:
            root = dataset_dir(dataset_name, folder)
            shards = read_manifest(root)["shards"]
            return tuple(sorted(f for s in shards for f in s["files"].values() if (root / f).is_file()))
        except Exception:
            return None

    @classmethod
    def execute(cls, model, clip, prompts: str, blocks: str, store: str, dataset_name: str, steps: int, cfg: float,
                sampler_name: str, scheduler: str, base_seed: int, width: int, height: int, passes: str, dtype: str,
                prompts_file: str = "", negative: str = "", folder: str = "", prompts_per_shard: int = 8) -> io.NodeOutput:
        try:
            prompt_list = parse_prompts(prompts) + (read_prompt_file(prompts_file) if (prompts_file or "").strip() else [])
            layout = model_block_layout(model)
            chosen = []
            for text in (blocks or "").split(","):
                if text.strip():
                    block = layout.resolve(text)
                    if block not in chosen:
                        chosen.append(block)
            if not chosen:
                raise SAEInputError(f"no block given; valid blocks: {layout.valid_names()}")
            root = dataset_dir(dataset_name, folder)
            header = {
                "name": dataset_name.strip(),
                "model": {"fingerprint": model_fingerprint(model), "family": layout.family},
                "input_kind": store,
                "dtype": dtype,
                "settings": {"steps": steps, "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler, "seed": base_seed,
                             "width": width, "height": height, "passes": passes, "negative": negative or "",
                             "prompts_per_shard": prompts_per_shard},
                "blocks": {b.short: {"diffusers": b.diffusers, "comfy": b.comfy, "hookpoint": hookpoint_of(b.diffusers),
                                     "channels": b.channels} for b in chosen},
            }
            writer = ActivationDatasetWriter(root, header)
            seeds = [base_seed + i for i in range(len(prompt_list))]
            plans = writer.plan(prompt_list, seeds, prompts_per_shard)
            recorders = {b.short: ActivationRecorder(store, passes, dtype) for b in chosen}
        except SAEError as exc:
            raise node_error(NODE, exc) from None

        patched = model
        for block in chosen:
            patched = install_block_patch(patched, block, recorders[block.short], NODE)
        negative_cond = _encode(clip, negative or "")
        latent = comfy.sample.fix_empty_latent_channels(patched, torch.zeros(1, 4, height // 8, width // 8))

        def run_prompt(index: int) -> None:
            positive = _encode(clip, prompt_list[index])
            noise = comfy.sample.prepare_noise(latent, seeds[index])
            comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, positive, negative_cond, latent,
                                seed=seeds[index], disable_pbar=True)

        progress = comfy.utils.ProgressBar(len(prompt_list))
        try:
            result = collect(writer, plans, recorders, run_prompt, on_prompt_done=progress.update,
                             check_cancel=comfy.model_management.throw_exception_if_processing_interrupted)
        except SAEError as exc:
            raise node_error(NODE, exc) from None
        rows = ", ".join(f"{block}: {n} rows x {header['blocks'][block]['channels']}" for block, n in result.rows.items())
        info = (f"{root}: {len(prompt_list)} prompts in {len(plans)} shards ({len(result.written)} written now, "
                f"{len(result.skipped)} already done); {rows}")
        return io.NodeOutput(str(root), info, ui=ui.PreviewText(info))


NODES = [SAECollectActivations]
